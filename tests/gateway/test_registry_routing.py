"""Registry-driven routing with real processes: `upf registry`, plugin processes, and `upf gateway`
with registryUrl. Plugins are registered by the test on their behalf (as the SDK would)."""

from __future__ import annotations

import json
import signal
import sys
import threading
import time
import uuid
from collections import Counter
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from upf.demo.v1 import demo_pb2
from upf.registry.v1 import registry_pb2 as pb

from tests.support.grpcweb import frame, parse_response
from tests.support.processes import Process, _died, free_port, run_gateway, wait_until
from tests.support.registry_process import RunningRegistry, run_registry

INTERVAL = 0.2
FAST = {"health": {"interval": INTERVAL, "timeout": 0.5, "failuresBeforeUnhealthy": 2, "successesBeforeHealthy": 1}}
OK, UNAVAILABLE = 0, 14
# What a client hears of a registered service with no instance that can take calls (not UNIMPLEMENTED:
# clients treat that as final).
NO_INSTANCE = (
    UNAVAILABLE,
    "upf.demo.v1.Echo is unavailable: no instance of it can take calls now (down, draining or unhealthy)",
)
UI = {
    "remoteEntry": "/static/echo/remoteEntry.js",
    "exposedModules": [{"name": "./EchoPage"}],
    "navigation": [{"path": "/echo", "title": "Echo", "icon": "chat"}],
}


def manifest(plugin_id: str, service: str, *, ui: dict[str, Any] | None = None) -> str:
    body: dict[str, Any] = {
        "id": plugin_id,
        "version": "1.0.0",
        "name": plugin_id.title(),
        "description": f"{plugin_id} for gateway tests",
        "type": "business",
        "provides": [{"name": "IEcho", "version": "1.0.0", "protoFile": "demo.proto", "grpcServices": [service]}],
    }
    if ui is not None:
        body["ui"] = ui
    return json.dumps(body)


ECHO = manifest("echo-plugin", "upf.demo.v1.Echo", ui=UI)
HIDDEN = manifest("hidden-plugin", "t.hidden.v1.S")


class Plugin:
    """tests/support/plugin_server.py --tag on a fixed port (kept across restarts)."""

    def __init__(self, work_dir: Path, *options: str) -> None:
        self.options = options  # more plugin_server flags (--refuse)
        self.port = free_port()
        self.endpoint = f"127.0.0.1:{self.port}"
        self.work_dir = work_dir
        self.process: Process | None = None

    def start(self) -> None:
        args = [sys.executable, "-m", "tests.support.plugin_server", "--port", str(self.port), "--tag", *self.options]
        process = Process(args, log=self.work_dir / f"tagged-{self.port}-{free_port()}.log")
        self.process = process
        wait_until(lambda: "PORT " in process.output() or (not process.alive() and _died(process)), what="plugin")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is not None:
            self.process.stop(sig)
            self.process = None


def register(registry: RunningRegistry, plugin: Plugin, instance_id: str, text: str = ECHO) -> str:
    reply = registry.stub.Register(registry.register_request(text, instance_id=instance_id, endpoint=plugin.endpoint))
    return str(reply.lease_id)


def say(client: httpx.Client, url: str, text: str = "hi", headers: dict[str, str] | None = None) -> tuple[int, str]:
    body = frame(demo_pb2.SayRequest(text=text).SerializeToString())
    sent = {"content-type": "application/grpc-web+proto", **(headers or {})}
    r = client.post(f"{url}/upf.demo.v1.Echo/Say", content=body, headers=sent)
    response = parse_response(r.status_code, dict(r.headers), r.content)
    if response.status != OK:
        return response.status, response.message
    return OK, demo_pb2.SayResponse.FromString(response.messages[0]).text


def gateway_config(registry: RunningRegistry, **extra: Any) -> dict[str, Any]:
    return {"registryUrl": registry.target, "routeRefreshInterval": 1, **extra}


def test_routed_dropped_after_sigkill_routed_again_manifests_and_registry_restart(work_dir: Path) -> None:
    registry_port = free_port()
    plugin = Plugin(work_dir)
    with ExitStack() as stack, httpx.Client(timeout=5) as client:
        registry = stack.enter_context(run_registry(FAST, work_dir, port=registry_port))
        plugin.start()
        stack.callback(plugin.stop)
        register(registry, plugin, "echo-1")
        register(registry, plugin, "hidden-1", HIDDEN)
        gateway = stack.enter_context(run_gateway(gateway_config(registry), work_dir))
        url = gateway.url
        wait_until(lambda: say(client, url) == (OK, f"hi @{plugin.port}"), what="the plugin to be routed")

        # /api/manifests: the seed's shape plus status, UI plugins only, ETag and 304.
        r = client.get(f"{url}/api/manifests")
        assert r.status_code == 200
        assert r.headers["content-type"] == "application/json"
        body = r.json()
        assert body["stale"] is False
        [entry] = body["plugins"]
        assert (entry["id"], entry["version"], entry["name"]) == ("echo-plugin", "1.0.0", "Echo-Plugin")
        assert entry["ui"]["remoteEntry"] == UI["remoteEntry"]
        assert entry["ui"]["exposedModules"] == ["./EchoPage"]  # the seed's shape: module names
        assert entry["ui"]["modules"][0]["name"] == "./EchoPage"
        assert entry["ui"]["navigation"] == UI["navigation"]
        assert entry["status"] == {"health": "HEALTHY", "phase": "READY", "instances": 1, "ready": 1}
        etag = r.headers["etag"]
        again = client.get(f"{url}/api/manifests", headers={"if-none-match": etag})
        assert (again.status_code, again.content, again.headers["etag"]) == (304, b"", etag)
        assert client.get(f"{url}/api/manifests", headers={"if-none-match": '"other"'}).status_code == 200

        # SIGKILL: once the registry marks it UNHEALTHY the gateway routes nothing to it.
        plugin.stop(signal.SIGKILL)
        killed = time.monotonic()
        wait_until(lambda: say(client, url) == NO_INSTANCE, timeout=5, what="the dead plugin to leave the table")
        assert time.monotonic() - killed < 3.0  # 2 failed checks at 0.2 s, plus slack for a busy machine
        assert say(client, url) == NO_INSTANCE
        status = client.get(f"{url}/api/manifests").json()["plugins"][0]["status"]
        assert (status["health"], status["ready"]) == ("UNHEALTHY", 0)

        plugin.start()
        register(registry, plugin, "echo-1")
        wait_until(lambda: say(client, url) == (OK, f"hi @{plugin.port}"), what="routed again")

        # The registry goes away: the last known routes keep serving, /readyz stays 200 and says
        # so, /api/manifests answers the last known list, marked stale.
        registry.process.stop()
        ready = wait_until(
            lambda: (r := client.get(f"{url}/readyz")).json()["registry"]["reachable"] is False and r,
            what="the gateway to notice",
        )
        assert (ready.status_code, ready.json()["status"]) == (200, "ready")
        old_epoch = ready.json()["registry"]["epoch"]
        assert old_epoch
        assert say(client, url) == (OK, f"hi @{plugin.port}")
        stale = client.get(f"{url}/api/manifests", headers={"if-none-match": etag})
        assert stale.status_code == 200
        assert stale.json()["stale"] is True
        assert [p["id"] for p in stale.json()["plugins"]] == ["echo-plugin"]

        # A new registry (memory store: empty) on the same address; the plugin registers again.
        restarted = stack.enter_context(run_registry(FAST, work_dir, port=registry_port))
        lease = register(restarted, plugin, "echo-1")
        wait_until(lambda: client.get(f"{url}/api/manifests").json()["stale"] is False, what="the watch to resume")
        # A new history: the gateway's table is now at a revision of the new registry's epoch.
        new_epoch = restarted.stub.ListPlugins(pb.ListPluginsRequest(), timeout=5).epoch
        assert new_epoch != old_epoch
        assert client.get(f"{url}/readyz").json()["registry"]["epoch"] == new_epoch
        wait_until(lambda: say(client, url) == (OK, f"hi @{plugin.port}"), what="routed by the new registry")
        # The watch is live again: a phase change reaches the gateway.
        restarted.stub.SetPhase(pb.SetPhaseRequest(lease_id=lease, phase=pb.PHASE_STOPPING))
        wait_until(lambda: say(client, url) == NO_INSTANCE, what="STOPPING to leave the table")


class Load:
    """Threads calling Say through the gateway without pause, recording every answer."""

    def __init__(self, url: str, threads: int = 4) -> None:
        self.url = url
        self.results: list[tuple[int, str]] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run) for _ in range(threads)]

    def _run(self) -> None:
        with httpx.Client(timeout=5) as client:
            while not self._stop.is_set():
                result = say(client, self.url)
                with self._lock:
                    self.results.append(result)

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()

    def since(self, start: int) -> Counter[str]:
        with self._lock:
            return Counter(text for _status, text in self.results[start:])

    def mark(self) -> int:
        with self._lock:
            return len(self.results)


@pytest.mark.parametrize("balancing", ["p2c", "round_robin"])
def test_two_replicas_share_the_load_and_a_rolling_restart_loses_no_call(work_dir: Path, balancing: str) -> None:
    one, two = Plugin(work_dir), Plugin(work_dir)
    with ExitStack() as stack:
        registry = stack.enter_context(run_registry(FAST, work_dir))
        for plugin in (one, two):
            plugin.start()
            stack.callback(plugin.stop)
        lease = register(registry, one, "echo-1")
        register(registry, two, "echo-2")
        gateway = stack.enter_context(run_gateway(gateway_config(registry, loadBalancing=balancing), work_dir))
        tag_one, tag_two = f"hi @{one.port}", f"hi @{two.port}"
        with httpx.Client(timeout=5) as client:
            wait_until(
                lambda: {say(client, gateway.url)[1] for _ in range(6)} == {tag_one, tag_two}, what="both replicas"
            )
        load = stack.enter_context(Load(gateway.url))
        time.sleep(1.0)
        shares = load.since(0)
        assert set(shares) == {tag_one, tag_two}, shares
        assert min(shares.values()) > 0.3 * sum(shares.values()), shares

        # Rolling restart of replica one: Stopping (no new calls), drain, restart, register again.
        stopping = load.mark()
        registry.stub.SetPhase(pb.SetPhaseRequest(lease_id=lease, phase=pb.PHASE_STOPPING))
        # The gateway hears of it within milliseconds; the calls already on `one` (one per thread at
        # most) finish. Then every call goes to `two`: three in a row per thread show it.
        wait_until(
            lambda: (end := load.mark()) >= stopping + 12 and set(load.since(end - 12)) == {tag_two},
            what="calls to go to replica two only",
        )
        mark = load.mark()
        time.sleep(0.5)
        assert set(load.since(mark)) == {tag_two}
        one.stop(signal.SIGTERM)
        one.start()
        register(registry, one, "echo-1")
        mark = load.mark()
        wait_until(lambda: tag_one in load.since(mark), what="replica one to be routed again")
        time.sleep(0.3)
        load.__exit__()
        statuses = Counter(status for status, _text in load.results)
        assert statuses == {OK: len(load.results)}, [r for r in load.results if r[0] != OK][:5]
        assert len(load.results) > 100


def test_redis_store_registry_restart_keeps_registrations_and_the_gateways_routes(work_dir: Path) -> None:
    registry_port = free_port()
    prefix = f"upf:test:routing:{uuid.uuid4().hex}"
    # Nobody renews the lease: it must outlast the gateway's start on a loaded machine.
    config = {**FAST, "store": "redis", "keyPrefix": prefix, "leaseTtl": 300}
    plugin = Plugin(work_dir)
    try:
        with ExitStack() as stack, httpx.Client(timeout=5) as client:
            plugin.start()
            stack.callback(plugin.stop)
            registry = stack.enter_context(run_registry(config, work_dir, port=registry_port))
            register(registry, plugin, "echo-redis")
            gateway = stack.enter_context(run_gateway(gateway_config(registry), work_dir))
            wait_until(lambda: say(client, gateway.url) == (OK, f"hi @{plugin.port}"), what="the plugin to be routed")
            epoch = client.get(f"{gateway.url}/readyz").json()["registry"]["epoch"]
            registry.process.stop(signal.SIGTERM)
            # The gateway keeps its last table while the registry is away.
            assert say(client, gateway.url) == (OK, f"hi @{plugin.port}")
            # A new registry process on the same Redis keys: the registration is still there, nobody
            # registers again, and the gateway's watch finds its way back.
            restarted = stack.enter_context(run_registry(config, work_dir, port=registry_port))
            listed = restarted.stub.ListPlugins(pb.ListPluginsRequest(), timeout=5)
            assert [instance.instance_id for p in listed.plugins for instance in p.instances] == ["echo-redis"]
            assert listed.epoch == epoch  # the history is in Redis, not in the registry process

            def reachable() -> bool:
                ready = client.get(f"{gateway.url}/readyz").json()
                return bool(ready["registry"]["reachable"])

            wait_until(reachable, timeout=15, what="the gateway to watch the restarted registry")
            assert client.get(f"{gateway.url}/readyz").json()["registry"]["epoch"] == epoch
            assert all(say(client, gateway.url) == (OK, f"hi @{plugin.port}") for _ in range(10))
    finally:
        redis_client = redis.Redis.from_url("redis://127.0.0.1:6379/0")
        keys = list(redis_client.scan_iter(f"{prefix}*"))
        if keys:
            redis_client.delete(*keys)
        redis_client.close()
