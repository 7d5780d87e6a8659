"""admit(): the one admission sequence of a gRPC call, whatever codec it arrived in.

authenticate -> identity -> rate limit -> method policy -> deadline cap -> route. The order is the
security-relevant part, so it is written here once: a call is authenticated before its rate-limit
key is read (`token` keys are the verified subject), and no replica is picked for a call that was
refused. The route comes last so that an unauthenticated client learns nothing about which
services exist (UNAUTHENTICATED before UNIMPLEMENTED), and an internal service is refused
(PERMISSION_DENIED) the same way on every entry point.

admit_local() is the same sequence for a call the gateway answers itself (server reflection on the
native port): authenticate -> identity -> rate limit, with no method policy and no route.

Admission also begins the call's record (gateway/telemetry/): its span, a child span per step, and
the latency and access line when the call ends (a refusal here ends it at once).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, MutableMapping
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import grpc

from gateway.auth.identity import IDENTITY_SCOPE_KEY, Identity
from gateway.errors import GatewayError, RateLimited
from gateway.proxy.config import ProxyConfig
from gateway.telemetry import CallRecord
from gateway.upstream.policies import cap_timeout
from gateway.upstream.pool import Route

__all__ = ["Admitted", "admit", "admit_local"]

Headers = list[tuple[bytes, bytes]]


class Admitted:
    """A call the gateway will place: where, for whom, and under which limits."""

    __slots__ = ("idempotent", "identity", "policy_timeout", "quota", "record", "route", "timeout_cap")

    def __init__(
        self,
        route: Route,
        identity: Identity | None,
        idempotent: bool,
        timeout_cap: float | None,
        policy_timeout: float | None,
        quota: Headers,
        record: CallRecord,
    ) -> None:
        self.route = route
        self.identity = identity  # None: anonymous (auth off, or a public method without a token)
        self.idempotent = idempotent  # the manifest says so: a refused attempt may be sent again
        self.timeout_cap = timeout_cap
        self.policy_timeout = policy_timeout
        # RateLimit-Policy and RateLimit for an allowed call, for codecs that show response headers.
        self.quota = quota
        self.record = record  # ended by run_attempts(), or by the codec if it fails before

    @property
    def identity_metadata(self) -> bytes:
        """The verified caller as x-upf-user-* metadata (HPACK), for the upstream request."""
        return self.identity.metadata if self.identity is not None else b""

    def deadline(self, requested: float | None) -> float | None:
        """The call's timeout: what the client asked for, held to maxTimeout and the method's `timeout`."""
        return cap_timeout(requested, self.timeout_cap, self.policy_timeout)


async def admit(
    config: ProxyConfig,
    *,
    protocol: str,
    path: str,
    service: str,
    method: str,
    credentials: Iterable[tuple[bytes, bytes]],
    scope: MutableMapping[str, Any],
    identity: Identity | None = None,
) -> Admitted:
    """Admit one call to `service`/`method`, or raise the GatewayError its client gets.

    `path` is the call's path as the client sent it (`/api/` prefix and all: public paths and
    exemptions are written that way); `credentials` the headers that may carry its token;
    `scope` what the rate-limit key is read from (peer, headers), which gets the identity.
    `identity`: a caller already authenticated for this very call (a WebSocket upgrade to it).
    `protocol`: the codec's name, for the access line (grpc-web, connect, grpc, grpc-websockets, upf-mux).

    Raises Unauthenticated, PermissionDenied, RateLimited, RateLimiterUnavailable, UnknownService.
    """
    record = config.telemetry.begin(protocol, service, method, credentials, scope)
    try:
        identity, quota = await _caller(config, path, credentials, scope, identity, record)
        policy = config.policies.get(service, method) if config.policies is not None else None
        route = config.pool.route(service)
    except GatewayError as exc:
        record.end(exc.code)
        raise
    except asyncio.CancelledError:
        record.end(grpc.StatusCode.CANCELLED)
        raise
    except Exception:
        record.end(grpc.StatusCode.INTERNAL)  # the codec logs it and answers INTERNAL
        raise
    record.admitted = True
    if policy is None:
        return Admitted(route, identity, False, config.max_timeout, None, quota, record)
    return Admitted(route, identity, policy.idempotent, config.max_timeout, policy.timeout, quota, record)


async def admit_local(
    config: ProxyConfig, *, path: str, credentials: Iterable[tuple[bytes, bytes]], scope: MutableMapping[str, Any]
) -> Identity | None:
    """Admit a call the gateway answers itself (server reflection): authenticated and rate-limited
    as admit() does it for a plugin's method, with no route to pick. Raises what admit() raises."""
    identity, _ = await _caller(config, path, credentials, scope, None, None)
    return identity


async def _caller(
    config: ProxyConfig,
    path: str,
    credentials: Iterable[tuple[bytes, bytes]],
    scope: MutableMapping[str, Any],
    identity: Identity | None,
    record: CallRecord | None,
) -> tuple[Identity | None, Headers]:
    """Authenticate, then rate-limit: the caller's identity, and the quota headers of an allowed call.
    Each step is a span of `record`'s call when there is one."""
    authenticator = config.authenticator
    if identity is None and authenticator is not None:
        with _step(record, "auth"):
            identity = await authenticator.authenticate(path, credentials)
    if identity is not None:
        scope[IDENTITY_SCOPE_KEY] = identity  # before the limiter: `token` keys read it
    quota: Headers = []
    limiter, identify = config.limiter, config.identify
    if limiter is not None and identify is not None and path not in config.exempt_paths:
        with _step(record, "rate limit"):
            verdict = await limiter.check(identify(scope), path)
        if verdict is not None:  # None: no limit applies, or the store failed in failure mode open
            limit, decision = verdict
            if not decision.allowed:
                wait = limit.retry_after(decision)
                raise RateLimited(f"rate limit exceeded; retry in {wait} s", headers=limit.headers(decision))
            quota = [
                (b"ratelimit-policy", limit.policy_field.encode("latin-1")),
                (b"ratelimit", limit.quota_field(decision).encode("latin-1")),
            ]
    return identity, quota


def _step(record: CallRecord | None, name: str) -> AbstractContextManager[object]:
    return record.step(name) if record is not None else nullcontext()
