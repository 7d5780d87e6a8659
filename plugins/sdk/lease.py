"""Keeping a plugin registered: register, renew the lease well inside its TTL, and come back by itself.

The registry forgets an instance whose lease runs out, and a registry on the memory store forgets
everyone when it restarts; either way it answers RenewLease with NOT_FOUND, and the keeper simply
registers again (same instance id, so the registry sees the same instance return). While the registry
cannot be reached the plugin keeps serving and the keeper retries with exponential backoff: plugins
must not die because the registry is being restarted.

Time is injected (`sleep`, and the jitter's `random`) so the schedule can be tested without waiting.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import grpc
from upf.registry.v1 import registry_pb2 as pb, registry_pb2_grpc

__all__ = ["Backoff", "LeaseKeeper", "RegistrationRejected"]

logger = logging.getLogger(__name__)

Sleep = Callable[[float], Awaitable[None]]

# The registry refuses these for good: retrying the same request cannot help, a person has to act.
_FATAL = (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.ALREADY_EXISTS, grpc.StatusCode.PERMISSION_DENIED)


class RegistrationRejected(Exception):
    """The registry refused the registration itself (bad manifest, instance id taken, ...)."""


@dataclass(slots=True)
class Backoff:
    """Exponential backoff with "equal jitter": each delay is in [d/2, d], d doubling up to `maximum`.

    The jitter spreads the retries of many plugins that lost the same registry at the same moment.
    """

    initial: float = 0.1
    maximum: float = 5.0
    factor: float = 2.0
    random: Callable[[], float] = random.random
    _next: float = 0.0

    def next(self) -> float:
        delay = min(self._next or self.initial, self.maximum)
        self._next = min(delay * self.factor, self.maximum)
        return delay / 2 + delay / 2 * self.random()

    def reset(self) -> None:
        self._next = 0.0


class LeaseKeeper:
    """Runs until cancelled: registers, renews every `ttl * renew_fraction`, re-registers when needed."""

    def __init__(
        self,
        registry: registry_pb2_grpc.RegistryAsyncStub,
        request: pb.RegisterRequest,
        *,
        backoff: Backoff | None = None,
        sleep: Sleep = asyncio.sleep,
        renew_fraction: float = 1 / 3,
        call_timeout: float = 5.0,
        credential: Callable[[], str] | None = None,
    ) -> None:
        if not 0 < renew_fraction < 1:
            raise ValueError("renew_fraction must be between 0 and 1: renewing at the TTL is too late")
        self._registry = registry
        self._request = request
        self._backoff = backoff or Backoff()
        self._sleep = sleep
        self._renew_fraction = renew_fraction
        self._timeout = call_timeout
        # Read at each registration (plugins/sdk/credentials.py): it may appear after start-up.
        self._credential = credential
        self.lease_id: str | None = None
        self.ttl: float | None = None
        # Who this instance is, signed by the registry: sent on calls to other plugins (see identity.py).
        # The last one received stays in use while the registry cannot be reached; it runs out by itself.
        self.identity_token = ""
        self.registrations = 0  # how many times Register succeeded (1 + re-registrations)
        self.registered = asyncio.Event()

    async def run(self) -> None:
        while True:
            try:
                if self.lease_id is None:
                    await self._register()
                else:
                    await self._renew()
            except grpc.aio.AioRpcError as exc:
                if exc.code() in _FATAL:
                    message = f"the registry refused to register this plugin: {exc.details()}"
                    raise RegistrationRejected(message) from None
                if exc.code() == grpc.StatusCode.NOT_FOUND and self.lease_id is not None:
                    # The lease ran out or the registry restarted without its store: register again now.
                    logger.warning("registry no longer knows lease %s; registering again", self.lease_id)
                    self._forget()
                    continue
                delay = self._backoff.next()
                if self.ttl is not None and self.lease_id is not None:
                    # Never let a backoff step outlast the lease we are still trying to keep.
                    delay = min(delay, self.ttl * self._renew_fraction)
                logger.warning("registry call failed (%s: %s); retry in %.2f s", exc.code().name, exc.details(), delay)
                await self._sleep(delay)
                continue
            self._backoff.reset()
            assert self.ttl is not None
            await self._sleep(self.ttl * self._renew_fraction)

    async def _register(self) -> None:
        request = self._request
        if self._credential is not None:
            request = pb.RegisterRequest()
            request.CopyFrom(self._request)
            request.credential = self._credential()
        reply = await self._registry.Register(request, timeout=self._timeout)
        self.lease_id, self.ttl = reply.lease_id, reply.ttl_seconds
        self.identity_token = reply.identity_token or self.identity_token
        self.registrations += 1
        self.registered.set()
        logger.info(
            "registered %s as %s at %s (lease %s, ttl %.1f s)",
            reply.status.plugin_id,
            reply.instance_id,
            self._request.endpoint,
            reply.lease_id,
            reply.ttl_seconds,
        )

    async def _renew(self) -> None:
        assert self.lease_id is not None
        reply = await self._registry.RenewLease(pb.RenewLeaseRequest(lease_id=self.lease_id), timeout=self._timeout)
        self.ttl = reply.ttl_seconds
        self.identity_token = reply.identity_token or self.identity_token

    def _forget(self) -> None:
        self.lease_id = None
        self.registered.clear()
