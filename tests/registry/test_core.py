"""The registry's logic with an injected clock and checker: health, hysteresis, leases, resolution."""

from __future__ import annotations

import json
from typing import Any

import pytest

from registry.core import PluginRegistry
from registry.errors import InvalidRequest, UnknownLease, UnknownPlugin
from registry.health import HealthMonitor
from registry.model import Health, Phase
from registry.settings import HealthSettings
from registry.store.memory import MemoryPluginStore
from tests.support.clock import ManualClock


class FakeChecker:
    """Endpoints in `down` fail their check with `problem`."""

    def __init__(self) -> None:
        self.down: set[str] = set()

    async def __call__(self, endpoint: str, timeout: float) -> str | None:
        return "health check failed: UNAVAILABLE: connection refused" if endpoint in self.down else None


def manifest(
    plugin_id: str, *, provides: dict[str, str] | None = None, requires: list[Any] | None = None, tag: str = ""
) -> str:
    """`tag` goes into the service names: a gRPC service has one owning plugin id, so alternative
    providers of one interface, registered side by side, serve it under names of their own."""
    return json.dumps(
        {
            "id": plugin_id,
            "version": "1.0.0",
            "name": plugin_id,
            "type": "business",
            "provides": [
                {"name": name, "version": version, "protoFile": "x.proto", "grpcServices": [f"t.{name}{tag}.v1.S"]}
                for name, version in (provides or {}).items()
            ],
            "requires": requires or [],
        }
    )


class World:
    def __init__(self) -> None:
        self.clock = ManualClock()
        self.checker = FakeChecker()
        self.registry = PluginRegistry(MemoryPluginStore(), self.clock, lease_ttl=10)
        policy = HealthSettings(interval=1, timeout=1, failures_before_unhealthy=3, successes_before_healthy=2)
        self.monitor = HealthMonitor(self.registry, self.checker, policy)
        self.ports = iter(range(40000, 41000))

    async def add(self, text: str, instance_id: str = "") -> tuple[str, str]:
        endpoint = f"127.0.0.1:{next(self.ports)}"
        record, _ = await self.registry.register(text, instance_id, endpoint)
        return record.instance_id, record.lease_id

    async def view(self, instance_id: str) -> Any:
        views = (await self.registry.store.snapshot()).views
        return next(v for v in views if v.instance_id == instance_id)


@pytest.fixture
def world() -> World:
    return World()


async def test_new_instance_is_registered_until_its_first_check_then_ready(world: World) -> None:
    instance, _ = await world.add(manifest("a"))
    first = await world.view(instance)
    assert (first.phase, first.health) == (Phase.REGISTERED, Health.UNHEALTHY)
    await world.monitor.tick()
    ready = await world.view(instance)
    assert (ready.phase, ready.health, ready.reason) == (Phase.READY, Health.HEALTHY, "")


async def test_hysteresis_failures_before_unhealthy_and_successes_before_healthy(world: World) -> None:
    instance, _ = await world.add(manifest("a"))
    await world.monitor.tick()
    endpoint = (await world.view(instance)).endpoint
    world.checker.down.add(endpoint)
    for _ in range(2):
        await world.monitor.tick()
        assert (await world.view(instance)).health is Health.HEALTHY  # 1 and 2 failures: damped
    await world.monitor.tick()
    down = await world.view(instance)
    assert down.health is Health.UNHEALTHY
    assert "3 health checks failed in a row" in down.reason
    assert not down.routable
    world.checker.down.clear()
    await world.monitor.tick()
    assert (await world.view(instance)).health is Health.UNHEALTHY  # 1 of 2 passes
    await world.monitor.tick()
    assert (await world.view(instance)).health is Health.HEALTHY


async def test_lease_expiry_removes_the_instance_and_renewal_keeps_it(world: World) -> None:
    kept, kept_lease = await world.add(manifest("a"), "a-1")
    gone, _ = await world.add(manifest("a"), "a-2")
    world.clock.now += 8
    await world.registry.renew(kept_lease)
    world.clock.now += 5  # a-2's lease (10 s) is over, a-1's was renewed 5 s ago
    await world.monitor.tick()
    epoch, _, views = await world.registry.store.snapshot()
    assert [v.instance_id for v in views] == [kept]
    changes = await world.registry.store.changes_since(epoch, 0)
    assert changes is not None
    assert [c.view.instance_id for c in changes if c.kind == "removed"] == [gone]
    with pytest.raises(UnknownLease, match="register again"):
        await world.registry.renew("no-such-lease")


async def test_stopping_phase_takes_an_instance_out_of_routing(world: World) -> None:
    instance, lease = await world.add(manifest("a", provides={"IA": "1.0.0"}))
    await world.monitor.tick()
    assert [v.instance_id for v in (await world.registry.resolve("t.IA.v1.S"))[0]] == [instance]
    view = await world.registry.set_phase(lease, Phase.STOPPING)
    assert view.phase is Phase.STOPPING
    endpoints, reason = await world.registry.resolve("a")
    assert endpoints == []
    assert "STOPPING" in reason
    with pytest.raises(InvalidRequest, match="decided by the registry"):
        await world.registry.set_phase(lease, Phase.DEGRADED)


async def test_missing_required_interface_keeps_plugin_from_ready(world: World) -> None:
    instance, _ = await world.add(manifest("orders", requires=[{"interface": "IStorage", "version": ">=1.0.0"}]))
    await world.monitor.tick()
    view = await world.view(instance)
    assert (view.phase, view.health, view.caused_by) == (Phase.CONNECTING, Health.UNHEALTHY, ("IStorage",))
    assert "no plugin provides IStorage" in view.reason
    explanation = await world.registry.explain("orders")
    assert not explanation.requirements[0].satisfied
    assert "not Ready" in explanation.requirements[0].summary

    await world.add(manifest("storage", provides={"IStorage": "1.2.0"}))
    await world.monitor.tick()
    assert (await world.view(instance)).phase is Phase.READY


async def test_optional_interface_missing_is_degraded_and_routable(world: World) -> None:
    instance, _ = await world.add(
        manifest("orders", requires=[{"interface": "ICache", "version": "^1", "optional": True}])
    )
    await world.monitor.tick()
    view = await world.view(instance)
    assert (view.phase, view.health, view.caused_by) == (Phase.DEGRADED, Health.DEGRADED, ("ICache",))
    assert view.routable


async def test_explain_says_why_each_candidate_was_chosen_or_rejected(world: World) -> None:
    await world.add(manifest("orders", requires=[{"interface": "IStorage", "version": "^1.0.0"}]))
    await world.add(manifest("old", provides={"IStorage": "0.9.0"}, tag="Old"))
    await world.add(manifest("new", provides={"IStorage": "2.0.0"}, tag="New"))
    good, _ = await world.add(manifest("good", provides={"IStorage": "1.4.0"}, tag="Good"))
    sick, _ = await world.add(manifest("sick", provides={"IStorage": "1.5.0"}, tag="Sick"))
    world.checker.down.add((await world.view(sick)).endpoint)
    await world.monitor.tick()
    explanation = await world.registry.explain("orders")
    [requirement] = explanation.requirements
    reasons = {c.plugin_id: (c.chosen, c.reason) for c in requirement.candidates}
    assert reasons["good"] == (True, "chosen: the highest version in range that is healthy and Ready")
    assert reasons["new"][1] == "version 2.0.0 does not satisfy ^1.0.0"
    assert reasons["old"][1] == "version 0.9.0 does not satisfy ^1.0.0"
    assert reasons["sick"][1].startswith("UNHEALTHY: health check failed")
    assert requirement.summary == "resolved to good 1.4.0 (1 instance(s))"
    assert good in {c.instance_id for c in requirement.candidates if c.chosen}


async def test_cycle_is_reported_with_its_path_and_blocks_ready(world: World) -> None:
    a, _ = await world.add(manifest("a", provides={"IA": "1.0.0"}, requires=[{"interface": "IB", "version": "^1"}]))
    await world.add(manifest("b", provides={"IB": "1.0.0"}, requires=[{"interface": "IA", "version": "^1"}]))
    await world.monitor.tick()
    view = await world.view(a)
    assert view.phase is Phase.CONNECTING
    assert "dependency cycle a -(IB)-> b -(IA)-> a" in view.reason
    explanation = await world.registry.explain("a")
    assert [list(c.path) for c in explanation.cycles] == [["a", "b", "a"]]


async def test_errors_name_what_to_fix(world: World) -> None:
    bad = json.loads(manifest("a"))
    bad["version"] = "one"
    with pytest.raises(InvalidRequest, match=r"version.*one"):
        await world.registry.register(json.dumps(bad), "", "127.0.0.1:1")
    with pytest.raises(InvalidRequest, match="endpoint"):
        await world.registry.register(manifest("a"), "", "nowhere")
    with pytest.raises(UnknownPlugin):
        await world.registry.explain("nobody")
    with pytest.raises(InvalidRequest, match="range"):
        await world.registry.providers("IA", "^^1")


async def test_watch_resumes_from_a_revision(world: World) -> None:
    await world.add(manifest("a"), "a-1")
    stream = world.registry.watch(0)
    snapshot = await anext(stream)
    assert snapshot.kind == "snapshot"
    assert not snapshot.reset
    await world.monitor.tick()
    change = await anext(stream)
    assert change.kind == "updated"
    assert change.revision > snapshot.revision
    assert change.epoch == snapshot.epoch
    await stream.aclose()
    await world.add(manifest("b"), "b-1")
    resumed = world.registry.watch(change.revision, change.epoch)
    missed = await anext(resumed)
    assert (missed.kind, missed.views[0].instance_id) == ("updated", "b-1")
    assert (missed.epoch, missed.revision) == (change.epoch, change.revision + 1)
    await resumed.aclose()
    lost = world.registry.watch(10_000, change.epoch)
    fresh = await anext(lost)
    assert (fresh.kind, fresh.reset) == ("snapshot", True)
    await lost.aclose()
    # A revision this registry has, but of another history: a snapshot, not the changes after it.
    other = world.registry.watch(1, "another-epoch")
    fresh = await anext(other)
    assert (fresh.kind, fresh.reset, fresh.epoch) == ("snapshot", True, snapshot.epoch)
    assert [v.instance_id for v in fresh.views] == ["a-1", "b-1"]
    await other.aclose()
    # A watcher that sends no epoch: as before epochs, the revision is taken to be of this history.
    legacy = world.registry.watch(change.revision)
    assert (await anext(legacy)).kind == "updated"
    await legacy.aclose()
