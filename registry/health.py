"""Active health checks: grpc.health.v1 Check on every instance, with hysteresis, plus lease expiry.

Each tick checks every registered instance at once (each with its own timeout), then writes a verdict
only when it changes, and removes instances whose lease ran out. The damping is Consul's:
`failuresBeforeUnhealthy` failed checks in a row turn a HEALTHY instance UNHEALTHY, and
`successesBeforeHealthy` passes in a row bring it back. The counters live in this process: with
several replicas each counts on its own and the store holds the last verdict.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from registry.core import PluginRegistry
from registry.model import Check, InstanceRecord
from registry.settings import HealthSettings

__all__ = ["Checker", "GrpcHealthChecker", "HealthMonitor"]

logger = logging.getLogger(__name__)

#: Checks one endpoint within `timeout` seconds: None when it is serving, else why not.
Checker = Callable[[str, float], Awaitable[str | None]]


class GrpcHealthChecker:
    """grpc.health.v1 Health/Check with service "" (the server as a whole), one channel per endpoint."""

    def __init__(self) -> None:
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._retired: list[grpc.aio.Channel] = []

    async def __call__(self, endpoint: str, timeout: float) -> str | None:
        channel = self._channels.get(endpoint)
        if channel is None:
            # A subchannel of its own: from grpc's shared pool, a new channel would reuse the old one's
            # connection attempt, reconnection backoff included (see `reconnect`).
            options = [("grpc.use_local_subchannel_pool", 1)]
            channel = self._channels[endpoint] = grpc.aio.insecure_channel(endpoint, options=options)
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            code = exc.code()
            if code is grpc.StatusCode.UNIMPLEMENTED:
                return "does not serve grpc.health.v1 (Health/Check is UNIMPLEMENTED)"
            if code is grpc.StatusCode.NOT_FOUND:
                return 'grpc.health.v1 has no status for the server (service ""); set it to SERVING'
            if code is grpc.StatusCode.DEADLINE_EXCEEDED:
                return f"health check timed out after {timeout:g} s"
            return f"health check failed: {code.name}: {exc.details()}"
        if reply.status != health_pb2.HealthCheckResponse.SERVING:
            return f"reports {health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)}"
        return None

    def reconnect(self, endpoint: str) -> None:
        """Check `endpoint` on a new connection next time. A channel whose checks failed while the
        instance was down waits out grpc's reconnection backoff (up to two minutes) and fails every
        check meanwhile, even once the instance is back. The old one is closed by the next `forget`,
        after the tick that may be using it."""
        channel = self._channels.pop(endpoint, None)
        if channel is not None:
            self._retired.append(channel)

    async def forget(self, keep: set[str]) -> None:
        """Close the channels of endpoints no longer registered, and those retired by `reconnect`."""
        retired, self._retired = self._retired, []
        for channel in retired:
            await channel.close(None)
        for endpoint in list(self._channels):
            if endpoint not in keep:
                await self._channels.pop(endpoint).close(None)

    async def close(self) -> None:
        await self.forget(set())


class HealthMonitor:
    def __init__(self, registry: PluginRegistry, checker: Checker, policy: HealthSettings) -> None:
        self.registry = registry
        self.checker = checker
        self.policy = policy
        self._streaks: dict[str, tuple[int, int]] = {}  # instance id -> (passes, failures) in a row
        self._wake = asyncio.Event()

    def wake(self) -> None:
        """Check now (a new instance should not wait a whole interval for its first check)."""
        self._wake.set()

    def registered(self, instance_id: str, endpoint: str) -> None:
        """A (re-)registered instance starts over: no streak, a fresh connection, checked now rather
        than an interval later (a crashed instance back on its address is routable again at once)."""
        self._streaks.pop(instance_id, None)
        if isinstance(self.checker, GrpcHealthChecker):
            self.checker.reconnect(endpoint)
        self.wake()

    async def tick(self) -> None:
        await self.registry.expire_leases()
        records = await self.registry.store.all()
        results = await asyncio.gather(*(self._check(r) for r in records))
        for record, problem in zip(records, results, strict=True):
            verdict = self._judge(record, problem)
            if verdict != record.check:
                if verdict.healthy != record.check.healthy:
                    logger.info(
                        "%s is %s%s",
                        record.instance_id,
                        "HEALTHY" if verdict.healthy else "UNHEALTHY",
                        f": {verdict.reason}" if verdict.reason else "",
                    )
                await self.registry.store.set_check(record.instance_id, verdict)
        known = {r.instance_id for r in records}
        for instance_id in set(self._streaks) - known:
            del self._streaks[instance_id]
        if isinstance(self.checker, GrpcHealthChecker):
            await self.checker.forget({r.endpoint for r in records})
        await self.registry.refresh()

    async def _check(self, record: InstanceRecord) -> str | None:
        try:
            return await asyncio.wait_for(self.checker(record.endpoint, self.policy.timeout), self.policy.timeout * 2)
        except TimeoutError:
            return f"health check timed out after {self.policy.timeout:g} s"

    def _judge(self, record: InstanceRecord, problem: str | None) -> Check:
        current = record.check
        passes, failures = self._streaks.get(record.instance_id, (0, 0))
        if problem is None:
            passes, failures = passes + 1, 0
        else:
            passes, failures = 0, failures + 1
        self._streaks[record.instance_id] = (passes, failures)
        if current.healthy:
            if problem is not None and failures >= self.policy.failures_before_unhealthy:
                return Check(False, f"{failures} health checks failed in a row; last: {problem}", True)
            return current
        if problem is None:
            if not current.ever_healthy or passes >= self.policy.successes_before_healthy:
                return Check(True, "", True)
            return Check(
                False,
                f"recovering: {passes} of {self.policy.successes_before_healthy} health checks passed",
                True,
            )
        if not current.ever_healthy:
            return Check(False, problem, False)
        if current.reason.startswith("recovering"):
            return Check(False, f"health check failed while recovering: {problem}", True)
        return current  # still down: keep the reason it went down with, so the state does not churn

    async def run(self) -> None:
        """Tick every interval (sooner after `wake`) until cancelled; a failing tick is logged, not fatal."""
        while True:
            # Cleared before the tick: a wake-up during it (a registration the tick may have read
            # too late) brings the next tick at once.
            self._wake.clear()
            try:
                await self.tick()
            except Exception:
                logger.exception("health tick failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.policy.interval)
