"""The plugin SDK's lease keeping, backoff and dependency resolution, with a fake registry and clock."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import grpc
import pytest
from upf.registry.v1 import registry_pb2 as pb

from plugins.sdk import Backoff, DependencyUnavailable, LeaseKeeper, RegistrationRejected, Resolver


class _Done(Exception):
    """Ends a keeper's endless loop once the test has seen enough."""


def error(code: grpc.StatusCode, details: str = "") -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details, "")


class FakeRegistry:
    """Answers each method from a script: a reply, or an exception to raise; records what was called."""

    def __init__(self, **scripts: list[Any]) -> None:
        self.scripts = scripts
        self.calls: list[tuple[str, Any]] = []

    def __getattr__(self, method: str) -> Callable[..., Any]:
        async def call(request: Any, timeout: float | None = None) -> Any:
            self.calls.append((method, request))
            answer = self.scripts[method].pop(0)
            if isinstance(answer, Exception):
                raise answer
            return answer

        return call

    def names(self) -> list[str]:
        return [name for name, _ in self.calls]


class FakeSleep:
    """Records each delay instead of waiting; stops the keeper after `limit` sleeps."""

    def __init__(self, limit: int) -> None:
        self.delays: list[float] = []
        self.limit = limit

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)
        if len(self.delays) >= self.limit:
            raise _Done


def registered(lease: str, ttl: float = 3.0) -> pb.RegisterResponse:
    return pb.RegisterResponse(instance_id="demo-1", lease_id=lease, ttl_seconds=ttl)


REQUEST = pb.RegisterRequest(manifest="id: demo", instance_id="demo-1", endpoint="127.0.0.1:1")


def keeper(registry: FakeRegistry, sleep: FakeSleep, **kwargs: Any) -> LeaseKeeper:
    backoff = Backoff(initial=0.1, maximum=0.5, random=lambda: 1.0)  # no jitter: exact delays
    return LeaseKeeper(registry, REQUEST, backoff=backoff, sleep=sleep, **kwargs)  # type: ignore[arg-type]


async def test_renews_at_a_third_of_the_ttl_and_registers_again_when_the_lease_is_gone() -> None:
    registry = FakeRegistry(
        Register=[registered("lease-1"), registered("lease-2")],
        RenewLease=[pb.RenewLeaseResponse(ttl_seconds=3.0), error(grpc.StatusCode.NOT_FOUND, "register again")],
    )
    sleep = FakeSleep(limit=3)
    lease = keeper(registry, sleep)
    with pytest.raises(_Done):
        await lease.run()
    # Register, wait, renew, wait, renew -> NOT_FOUND, register again at once (no wait), wait.
    assert registry.names() == ["Register", "RenewLease", "RenewLease", "Register"]
    assert sleep.delays == [1.0, 1.0, 1.0]
    assert [r.lease_id for n, r in registry.calls if n == "RenewLease"] == ["lease-1", "lease-1"]
    assert (lease.lease_id, lease.registrations, lease.registered.is_set()) == ("lease-2", 2, True)
    assert registry.calls[-1][1] == REQUEST  # the same instance id comes back


async def test_backs_off_exponentially_while_the_registry_is_unreachable_and_resets_after() -> None:
    down = [error(grpc.StatusCode.UNAVAILABLE, "connection refused") for _ in range(5)]
    registry = FakeRegistry(Register=[*down, registered("lease-1", ttl=0.9)], RenewLease=down[:2])
    sleep = FakeSleep(limit=8)
    with pytest.raises(_Done):
        await keeper(registry, sleep).run()
    # 0.1, 0.2, 0.4, then capped at 0.5; registered -> renew after 0.3; renewal fails -> backoff from
    # the start again, never longer than the renewal interval while a lease is held.
    assert sleep.delays == pytest.approx([0.1, 0.2, 0.4, 0.5, 0.5, 0.3, 0.1, 0.2])


async def test_unreachable_while_holding_a_lease_retries_no_slower_than_the_renewal_interval() -> None:
    down = [error(grpc.StatusCode.UNAVAILABLE) for _ in range(4)]
    registry = FakeRegistry(Register=[registered("lease-1", ttl=0.6)], RenewLease=down)
    sleep = FakeSleep(limit=5)
    with pytest.raises(_Done):
        await keeper(registry, sleep).run()
    assert sleep.delays == pytest.approx([0.2, 0.1, 0.2, 0.2, 0.2])


@pytest.mark.parametrize("code", [grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.ALREADY_EXISTS])
async def test_a_refused_registration_is_fatal(code: grpc.StatusCode) -> None:
    registry = FakeRegistry(Register=[error(code, "manifest: provides[0].version: not semver")])
    with pytest.raises(RegistrationRejected, match=r"refused to register this plugin: manifest: provides\[0\]"):
        await keeper(registry, FakeSleep(limit=1)).run()


def test_backoff_jitter_stays_within_half_and_full_delay() -> None:
    draws = iter([0.0, 1.0, 0.5, 0.0, 1.0])
    backoff = Backoff(initial=1.0, maximum=4.0, random=lambda: next(draws))
    assert [backoff.next() for _ in range(5)] == [0.5, 2.0, 3.0, 2.0, 4.0]
    assert Backoff(initial=1.0, random=lambda: 1.0).next() == 1.0


def test_backoff_reset_starts_again_from_the_initial_delay() -> None:
    backoff = Backoff(initial=0.25, maximum=4.0, random=lambda: 1.0)  # no jitter: exact delays
    assert [backoff.next() for _ in range(6)] == [0.25, 0.5, 1.0, 2.0, 4.0, 4.0]
    backoff.reset()
    # Back to the first delay and doubling from there, not on from the cap.
    assert [backoff.next() for _ in range(3)] == [0.25, 0.5, 1.0]


def instance(endpoint: str, *, phase: int = pb.PHASE_READY, health: int = pb.HEALTH_STATE_HEALTHY) -> pb.InstanceStatus:
    return pb.InstanceStatus(endpoint=endpoint, phase=phase, health=health)  # type: ignore[arg-type]


def providers(*groups: tuple[str, str, list[pb.InstanceStatus]]) -> pb.GetProvidersResponse:
    return pb.GetProvidersResponse(
        providers=[pb.Provider(plugin_id=p, interface_version=v, instances=i) for p, v, i in groups]
    )


async def test_resolver_uses_the_best_routable_provider_caches_briefly_and_round_robins() -> None:
    stopping = instance("10.0.0.1:1", phase=pb.PHASE_STOPPING)
    sick = instance("10.0.0.2:1", health=pb.HEALTH_STATE_UNHEALTHY)
    first = providers(
        ("orders-v2", "2.1.0", [stopping, sick]),
        ("orders", "2.0.0", [instance("10.0.0.3:1"), instance("10.0.0.4:1", health=pb.HEALTH_STATE_DEGRADED)]),
    )
    later = providers(("orders", "2.0.0", [instance("10.0.0.4:1")]))
    registry = FakeRegistry(GetProviders=[first, later])
    now = [100.0]
    connected: list[str] = []

    def connect(endpoint: str) -> Any:
        connected.append(endpoint)
        return f"channel to {endpoint}"

    # Any: the fake channels are the endpoints' names, which makes the picks easy to read.
    resolver: Any = Resolver(
        registry,  # type: ignore[arg-type]
        {"IOrders": "^2"},
        cache_ttl=2.0,
        clock=lambda: now[0],
        connect=connect,
    )
    picks = [await resolver.channel("IOrders") for _ in range(3)]
    assert picks == ["channel to 10.0.0.3:1", "channel to 10.0.0.4:1", "channel to 10.0.0.3:1"]
    [(_, request)] = registry.calls
    assert (request.interface, request.range) == ("IOrders", "^2")

    now[0] += 2.0  # the cached answer expired: ask again; the provider at 10.0.0.3 went away
    assert await resolver.channel("IOrders") == "channel to 10.0.0.4:1"
    assert len(registry.calls) == 2
    assert connected == ["10.0.0.3:1", "10.0.0.4:1"]  # channels are reused per endpoint


async def test_resolver_says_why_nothing_is_available_and_invalidate_asks_again() -> None:
    unhealthy = providers(("storage", "1.0.0", [instance("10.0.0.1:1", health=pb.HEALTH_STATE_UNHEALTHY)]))
    registry = FakeRegistry(
        GetProviders=[unhealthy, providers()],
        ResolveEndpoint=[
            pb.ResolveEndpointResponse(reason="1 instance, UNHEALTHY"),
            pb.ResolveEndpointResponse(endpoints=[instance("10.0.0.9:1")]),
        ],
    )
    resolver: Any = Resolver(registry, {"IStorage": ">=1.0.0"}, connect=lambda e: cast(Any, e))  # type: ignore[arg-type]
    with pytest.raises(DependencyUnavailable, match=r"IStorage >=1.0.0 \(registered, not routable: storage 1.0.0\)"):
        await resolver.channel("IStorage")
    with pytest.raises(DependencyUnavailable, match=r"no healthy provider of IStorage >=1\.0\.0 is registered"):
        await resolver.channel("IStorage")
    with pytest.raises(DependencyUnavailable, match="1 instance, UNHEALTHY"):
        await resolver.channel_to("storage")
    assert await resolver.channel_to("storage") == "10.0.0.9:1"
    resolver.invalidate("storage")
    registry.scripts["ResolveEndpoint"].append(pb.ResolveEndpointResponse(endpoints=[instance("10.0.0.8:1")]))
    assert await resolver.channel_to("storage") == "10.0.0.8:1"
