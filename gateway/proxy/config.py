"""ProxyConfig: what every entry point's calls need, built once by gateway/app.py."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from gateway.auth.authenticator import Authenticator
from gateway.ratelimit.calls import CallLimiter
from gateway.ratelimit.keys import Identify
from gateway.telemetry import CallTelemetry
from gateway.upstream.policies import MethodPolicies
from gateway.upstream.pool import UpstreamPool
from gateway.upstream.retry import Retries

__all__ = ["ProxyConfig"]


@dataclass(frozen=True, slots=True)
class ProxyConfig:
    """The collaborators and limits of the one call path (gateway/proxy/__init__.py).

    `authenticator`, `limiter` and `retries` are None when their feature is off; the limiter only
    applies with an `identify` function (the rate-limit key of a call).
    """

    pool: UpstreamPool
    max_message_bytes: int
    max_timeout: float | None = None  # seconds; caps every call's deadline (maxTimeout)
    forward_cookies: bool = False
    forward_authorization: bool = True  # False: a client's token stays at the gateway
    policies: MethodPolicies | None = None  # per-method permission, limit, timeout, idempotency
    authenticator: Authenticator | None = None
    limiter: CallLimiter | None = None
    identify: Identify | None = None
    exempt_paths: frozenset[str] = frozenset()  # never rate-limited (rateLimiting.exemptPaths)
    retries: Retries | None = None
    clock: Callable[[], float] = field(default=time.monotonic)  # for deadlines across attempts
    telemetry: CallTelemetry = field(default_factory=CallTelemetry)  # spans, access lines, latency
