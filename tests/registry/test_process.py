"""The registry as a real process, with real plugin processes, over gRPC."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis
from upf.registry.v1 import registry_pb2 as pb

from tests.support.processes import wait_until
from tests.support.redis_server import SHARED_URL, delete_prefix, new_prefix, redis_server, shared_client
from tests.support.registry_process import RunningRegistry, plugin_process, run_registry

INTERVAL = 0.2
FAST = {"health": {"interval": INTERVAL, "timeout": 0.5, "failuresBeforeUnhealthy": 2, "successesBeforeHealthy": 1}}


def manifest(plugin_id: str, *, provides: dict[str, str] | None = None, requires: list[Any] | None = None) -> str:
    return json.dumps(
        {
            "id": plugin_id,
            "version": "1.0.0",
            "name": plugin_id,
            "type": "business",
            "provides": [
                {"name": name, "version": version, "protoFile": "x.proto", "grpcServices": [service]}
                for name, (version, service) in {
                    n: (v, "upf.demo.v1.Echo" if n == "IEcho" else f"t.{n}.v1.S") for n, v in (provides or {}).items()
                }.items()
            ],
            "requires": requires or [],
        }
    )


ECHO = manifest("echo-plugin", provides={"IEcho": "1.0.0"})


def endpoints(stub: Any, target: str) -> list[str]:
    return [e.endpoint for e in stub.ResolveEndpoint(pb.ResolveEndpointRequest(target=target), timeout=2).endpoints]


def read(stream: Any, count: int) -> list[Any]:
    got = [next(stream) for _ in range(count)]
    stream.cancel()
    return got


def resume(stub: Any, seen: Any) -> Any:
    """The first answer to a watcher resuming from `seen` (a WatchHealth event), with its epoch."""
    request = pb.WatchHealthRequest(since_revision=seen.revision, since_epoch=seen.epoch)
    return read(stub.WatchHealth(request, timeout=10), 1)[0]


def register_past(registry: RunningRegistry, revision: int, endpoint: str) -> Any:
    """Register instances until the registry's revision is past `revision`, so that the number exists
    in its history too; returns the ListPlugins reply that is past it."""
    registrations = revision + 1  # every registration adds at least one revision
    stub = registry.stub
    for n in range(registrations + 1):  # a look before each registration and one after the last
        listed = stub.ListPlugins(pb.ListPluginsRequest(), timeout=2)
        if listed.revision > revision:
            return listed
        if n < registrations:
            stub.Register(registry.register_request(ECHO, instance_id=f"echo-{n + 1}", endpoint=endpoint))
    raise AssertionError(f"revision {revision} not passed after {registrations} registrations")


def instance_ids(event: Any) -> list[str]:
    return sorted(status.instance_id for status in event.instances)


def test_plugin_is_routed_unhealthy_after_sigkill_and_routed_again_after_restart(work_dir: Path) -> None:
    with run_registry(FAST, work_dir) as registry, plugin_process(work_dir) as plugin:
        stub = registry.stub
        reply = stub.Register(registry.register_request(ECHO, instance_id="echo-1", endpoint=plugin.endpoint))
        assert reply.ttl_seconds == 15
        wait_until(lambda: endpoints(stub, "upf.demo.v1.Echo") == [plugin.endpoint], what="the plugin to be routed")
        assert endpoints(stub, "echo-plugin") == [plugin.endpoint]
        [listed] = stub.ListPlugins(pb.ListPluginsRequest()).plugins
        assert (listed.plugin_id, json.loads(listed.manifest_json)["id"]) == ("echo-plugin", "echo-plugin")
        assert listed.instances[0].phase == pb.PHASE_READY

        snapshot = read(stub.WatchHealth(pb.WatchHealthRequest()), 1)[0]
        assert snapshot.kind == pb.WatchHealthResponse.KIND_SNAPSHOT
        assert [i.health for i in snapshot.instances] == [pb.HEALTH_STATE_HEALTHY]

        plugin.stop(signal.SIGKILL)
        killed = time.monotonic()
        wait_until(lambda: endpoints(stub, "upf.demo.v1.Echo") == [], timeout=3 * INTERVAL + 0.5, what="UNHEALTHY")
        assert time.monotonic() - killed < 3 * INTERVAL + 0.5
        [status] = stub.ListPlugins(pb.ListPluginsRequest()).plugins[0].instances
        assert status.health == pb.HEALTH_STATE_UNHEALTHY
        assert "health checks failed in a row" in status.reason
        resolved = stub.ResolveEndpoint(pb.ResolveEndpointRequest(target="upf.demo.v1.Echo"))
        assert "UNHEALTHY" in resolved.reason

        # The changes since the snapshot: HEALTHY -> UNHEALTHY, with a later revision.
        changes = read(stub.WatchHealth(pb.WatchHealthRequest(since_revision=snapshot.revision)), 1)
        assert changes[0].kind == pb.WatchHealthResponse.KIND_UPDATED
        assert changes[0].revision > snapshot.revision
        assert changes[0].instances[0].health == pb.HEALTH_STATE_UNHEALTHY

        plugin.start()
        stub.Register(registry.register_request(ECHO, instance_id="echo-1", endpoint=plugin.endpoint))
        wait_until(lambda: endpoints(stub, "upf.demo.v1.Echo") == [plugin.endpoint], what="routed again")


def test_stopping_and_unregister(work_dir: Path) -> None:
    with run_registry(FAST, work_dir) as registry, plugin_process(work_dir) as plugin:
        stub = registry.stub
        lease = stub.Register(registry.register_request(ECHO, endpoint=plugin.endpoint)).lease_id
        wait_until(lambda: endpoints(stub, "echo-plugin"), what="routed")
        status = stub.SetPhase(pb.SetPhaseRequest(lease_id=lease, phase=pb.PHASE_STOPPING)).status
        assert status.phase == pb.PHASE_STOPPING
        assert endpoints(stub, "echo-plugin") == []
        stub.Unregister(pb.UnregisterRequest(lease_id=lease))
        with pytest.raises(grpc.RpcError) as caught:
            stub.RenewLease(pb.RenewLeaseRequest(lease_id=lease))
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        assert "register again" in (caught.value.details() or "")


def test_dependencies_explain_cycles_and_invalid_manifests(work_dir: Path) -> None:
    with run_registry(FAST, work_dir) as registry, plugin_process(work_dir) as plugin:
        stub = registry.stub
        orders = manifest("orders", requires=[{"interface": "IStorage", "version": ">=1.0.0"}])
        stub.Register(registry.register_request(orders, instance_id="orders-1", endpoint=plugin.endpoint))
        stub.Register(
            registry.register_request(manifest("old-storage", provides={"IStorage": "0.5.0"}), endpoint=plugin.endpoint)
        )

        def connecting() -> Any:
            [status] = stub.Explain(pb.ExplainRequest(plugin_id="orders")).instances
            return status if status.phase == pb.PHASE_CONNECTING else None

        status = wait_until(connecting, what="orders to be checked")
        assert status.health == pb.HEALTH_STATE_UNHEALTHY
        assert list(status.caused_by) == ["IStorage"]
        assert endpoints(stub, "orders") == []
        [requirement] = stub.Explain(pb.ExplainRequest(plugin_id="orders")).requirements
        assert not requirement.satisfied
        assert "no provider in range (registered: old-storage 0.5.0)" in requirement.summary
        assert requirement.candidates[0].reason == "version 0.5.0 does not satisfy >=1.0.0"

        a = manifest("a", provides={"IA": "1.0.0"}, requires=[{"interface": "IB", "version": "^1"}])
        b = manifest("b", provides={"IB": "1.0.0"}, requires=[{"interface": "IA", "version": "^1"}])
        for text in (a, b):
            stub.Register(registry.register_request(text, endpoint=plugin.endpoint))
        [cycle] = stub.Explain(pb.ExplainRequest(plugin_id="a")).cycles
        assert list(cycle.path) == ["a", "b", "a"]
        assert cycle.description == "a -(IB)-> b -(IA)-> a"

        bad = json.loads(ECHO)
        bad["requires"] = [{"interface": "IStorage", "version": "^1.x.y"}]
        with pytest.raises(grpc.RpcError) as caught:
            stub.Register(registry.register_request(json.dumps(bad), endpoint=plugin.endpoint))
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "requires[0].version" in (caught.value.details() or "")
        with pytest.raises(grpc.RpcError) as caught:
            stub.Explain(pb.ExplainRequest(plugin_id="nobody"))
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND


def test_redis_store_keeps_registrations_and_revisions_across_a_restart(work_dir: Path) -> None:
    client = shared_client()
    prefix = new_prefix()
    config = {**FAST, "store": "redis", "redisUrl": SHARED_URL, "keyPrefix": prefix}
    try:
        with plugin_process(work_dir) as plugin:
            with run_registry(config, work_dir) as registry:
                lease = registry.stub.Register(
                    registry.register_request(ECHO, instance_id="echo-1", endpoint=plugin.endpoint)
                ).lease_id
                wait_until(lambda: endpoints(registry.stub, "echo-plugin"), what="routed")
                before = registry.stub.ListPlugins(pb.ListPluginsRequest())
            with run_registry(config, work_dir) as restarted:
                stub = restarted.stub
                assert endpoints(stub, "echo-plugin") == [plugin.endpoint]
                listed = stub.ListPlugins(pb.ListPluginsRequest())
                # The same history: the epoch is the one stored in Redis, the revisions go on from it.
                assert listed.epoch == before.epoch
                assert listed.revision >= before.revision
                stub.RenewLease(pb.RenewLeaseRequest(lease_id=lease))  # the lease survived too
                stub.SetPhase(pb.SetPhaseRequest(lease_id=lease, phase=pb.PHASE_STOPPING))
                change = resume(stub, before)
                assert (change.kind, change.epoch, change.revision) == (
                    pb.WatchHealthResponse.KIND_UPDATED,
                    before.epoch,
                    before.revision + 1,
                )
                assert change.instances[0].phase == pb.PHASE_STOPPING
    finally:
        delete_prefix(client, prefix)
        client.close()


def test_a_restarted_memory_registry_answers_a_revision_of_its_previous_life_with_a_snapshot(work_dir: Path) -> None:
    with plugin_process(work_dir) as plugin:
        with run_registry(FAST, work_dir) as registry:
            registry.stub.Register(registry.register_request(ECHO, instance_id="echo-0", endpoint=plugin.endpoint))
            wait_until(lambda: endpoints(registry.stub, "echo-plugin"), what="routed")
            seen = read(registry.stub.WatchHealth(pb.WatchHealthRequest()), 1)[0]  # a watcher's last event
            assert seen.epoch
        with run_registry(FAST, work_dir) as restarted:
            stub = restarted.stub
            # The new registry counts from 1 again, past the watcher's revision: that number now
            # names another state, and the changes after it are changes of another history.
            listed = register_past(restarted, seen.revision, plugin.endpoint)
            assert listed.epoch != seen.epoch
            assert_snapshot_of_the_new_history(resume(stub, seen), listed)
            # A watcher that predates epochs still gets what it always got: the changes after the
            # number, of whichever history the registry has now (why watchers must send the epoch).
            legacy = read(stub.WatchHealth(pb.WatchHealthRequest(since_revision=seen.revision), timeout=10), 1)[0]
            assert (legacy.kind, legacy.revision) == (pb.WatchHealthResponse.KIND_UPDATED, seen.revision + 1)


def assert_snapshot_of_the_new_history(answer: Any, listed: Any) -> None:
    """A resume from the old history: a full snapshot of the new one (its epoch, its instances only)."""
    assert (answer.kind, answer.reset, answer.epoch) == (pb.WatchHealthResponse.KIND_SNAPSHOT, True, listed.epoch)
    assert instance_ids(answer) == sorted(i.instance_id for p in listed.plugins for i in p.instances)
    assert "echo-0" not in instance_ids(answer)


def test_a_flushed_redis_store_starts_a_new_epoch_and_watchers_get_a_snapshot(work_dir: Path) -> None:
    with redis_server(work_dir) as server, plugin_process(work_dir) as plugin:
        config = {**FAST, "store": "redis", "redisUrl": server.url, "keyPrefix": "upf:registry"}
        with run_registry(config, work_dir) as registry:
            stub = registry.stub
            stub.Register(registry.register_request(ECHO, instance_id="echo-0", endpoint=plugin.endpoint))
            wait_until(lambda: endpoints(stub, "echo-plugin"), what="routed")
            stream: Any = stub.WatchHealth(pb.WatchHealthRequest(), timeout=10)  # read event by event
            seen = next(stream)
            client = redis.Redis.from_url(server.url, socket_timeout=5)
            try:
                client.flushall()
            finally:
                client.close()
            # The stream open across the flush goes on with a snapshot of the new (empty) history,
            # although no revision has passed the watcher's yet.
            live = next(stream)
            stream.cancel()
            assert (live.kind, live.reset, instance_ids(live)) == (pb.WatchHealthResponse.KIND_SNAPSHOT, True, [])
            assert live.epoch not in ("", seen.epoch)
            # The registry runs on; plugins register again (their leases went with the data), and
            # the new history's revisions pass the watcher's.
            listed = register_past(registry, seen.revision, plugin.endpoint)
            assert listed.epoch == live.epoch
            # A watcher resuming from before the flush gets a snapshot of the new history.
            assert_snapshot_of_the_new_history(resume(stub, seen), listed)
