"""The registry as a real process, with real plugin processes, over gRPC."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from upf.registry.v1 import registry_pb2 as pb

from tests.support.processes import wait_until
from tests.support.redis_server import SHARED_URL, delete_prefix, new_prefix, shared_client
from tests.support.registry_process import plugin_process, run_registry

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


def test_plugin_is_routed_unhealthy_after_sigkill_and_routed_again_after_restart(work_dir: Path) -> None:
    with run_registry(FAST, work_dir) as registry, plugin_process(work_dir) as plugin:
        stub = registry.stub
        reply = stub.Register(pb.RegisterRequest(manifest=ECHO, instance_id="echo-1", endpoint=plugin.endpoint))
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
        stub.Register(pb.RegisterRequest(manifest=ECHO, instance_id="echo-1", endpoint=plugin.endpoint))
        wait_until(lambda: endpoints(stub, "upf.demo.v1.Echo") == [plugin.endpoint], what="routed again")


def test_stopping_and_unregister(work_dir: Path) -> None:
    with run_registry(FAST, work_dir) as registry, plugin_process(work_dir) as plugin:
        stub = registry.stub
        lease = stub.Register(pb.RegisterRequest(manifest=ECHO, endpoint=plugin.endpoint)).lease_id
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
        stub.Register(pb.RegisterRequest(manifest=orders, instance_id="orders-1", endpoint=plugin.endpoint))
        stub.Register(
            pb.RegisterRequest(
                manifest=manifest("old-storage", provides={"IStorage": "0.5.0"}), endpoint=plugin.endpoint
            )
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
            stub.Register(pb.RegisterRequest(manifest=text, endpoint=plugin.endpoint))
        [cycle] = stub.Explain(pb.ExplainRequest(plugin_id="a")).cycles
        assert list(cycle.path) == ["a", "b", "a"]
        assert cycle.description == "a -(IB)-> b -(IA)-> a"

        bad = json.loads(ECHO)
        bad["requires"] = [{"interface": "IStorage", "version": "^1.x.y"}]
        with pytest.raises(grpc.RpcError) as caught:
            stub.Register(pb.RegisterRequest(manifest=json.dumps(bad), endpoint=plugin.endpoint))
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
                    pb.RegisterRequest(manifest=ECHO, instance_id="echo-1", endpoint=plugin.endpoint)
                ).lease_id
                wait_until(lambda: endpoints(registry.stub, "echo-plugin"), what="routed")
                before = registry.stub.ListPlugins(pb.ListPluginsRequest()).revision
            with run_registry(config, work_dir) as restarted:
                stub = restarted.stub
                assert endpoints(stub, "echo-plugin") == [plugin.endpoint]
                assert stub.ListPlugins(pb.ListPluginsRequest()).revision >= before
                stub.RenewLease(pb.RenewLeaseRequest(lease_id=lease))  # the lease survived too
                stub.SetPhase(pb.SetPhaseRequest(lease_id=lease, phase=pb.PHASE_STOPPING))
                [change] = read(stub.WatchHealth(pb.WatchHealthRequest(since_revision=before)), 1)
                assert change.revision == before + 1
                assert change.instances[0].phase == pb.PHASE_STOPPING
    finally:
        delete_prefix(client, prefix)
        client.close()
