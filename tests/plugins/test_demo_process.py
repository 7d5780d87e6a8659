"""`upf plugin demo` as a real process against a real `upf registry`: register, serve, drain, come back."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from upf.demo.v1 import demo_pb2, demo_pb2_grpc
from upf.registry.v1 import registry_pb2 as pb

from plugins.sdk import Plugin
from registry.credentials import RegistrationCredentials
from tests.support.processes import Process, _died, free_port, wait_until
from tests.support.registry_process import REGISTRATION_SECRET, RunningRegistry, run_registry

UPF = str(Path(sys.executable).parent / "upf")
# Fast health checks, and a short lease so that renewals (every ttl / 3) notice a restarted registry soon.
FAST = {"leaseTtl": 1.5, "health": {"interval": 0.2, "timeout": 0.5, "successesBeforeHealthy": 1}}


def instances(registry: RunningRegistry) -> list[Any]:
    plugins = registry.stub.ListPlugins(pb.ListPluginsRequest(), timeout=2).plugins
    return [i for p in plugins if p.plugin_id == "demo-plugin" for i in p.instances]


def routed(registry: RunningRegistry, target: str) -> list[str]:
    try:
        reply = registry.stub.ResolveEndpoint(pb.ResolveEndpointRequest(target=target), timeout=2)
    except grpc.RpcError as exc:
        if exc.code() == grpc.StatusCode.NOT_FOUND:  # nothing registered (yet, or any more)
            return []
        raise
    return [e.endpoint for e in reply.endpoints]


@contextmanager
def demo_plugin(registry_target: str, work_dir: Path) -> Iterator[tuple[Process, str]]:
    """`upf plugin demo` on a free port, registering with the registry at `registry_target` (one of
    run_registry's, whose secret gives the credential)."""
    port = free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith("UPF_")}
    env["UPF_REGISTRATION_CREDENTIAL"] = RegistrationCredentials(REGISTRATION_SECRET.encode()).for_plugin("demo-plugin")
    args = [UPF, "plugin", "demo", "--registry", registry_target, "--port", str(port), "--drain-grace", "10"]
    process = Process(args, env=env, log=work_dir / f"demo-plugin-{port}.log")
    try:
        yield process, f"127.0.0.1:{port}"
    finally:
        process.stop()


def wait_routed(registry: RunningRegistry, process: Process, endpoint: str) -> None:
    wait_until(
        lambda: routed(registry, "upf.demo.v1.Echo") == [endpoint] or (not process.alive() and _died(process)),
        what="the demo plugin to be routed",
    )


def test_registers_serves_and_drains_an_in_flight_stream_on_sigterm(work_dir: Path) -> None:
    with run_registry(FAST, work_dir) as registry, demo_plugin(registry.target, work_dir) as (process, endpoint):
        wait_routed(registry, process, endpoint)
        [status] = instances(registry)
        assert (status.phase, status.health, status.endpoint) == (pb.PHASE_READY, pb.HEALTH_STATE_HEALTHY, endpoint)
        assert status.instance_id.startswith("demo-plugin-")
        assert routed(registry, "demo-plugin") == [endpoint]

        with grpc.insecure_channel(endpoint) as channel:
            echo = demo_pb2_grpc.EchoStub(channel)
            assert echo.Say(demo_pb2.SayRequest(text="hi"), timeout=5).text == "echo: hi"
            health = health_pb2_grpc.HealthStub(channel)
            for service in ("", "upf.demo.v1.Echo"):
                reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
                assert reply.status == health_pb2.HealthCheckResponse.SERVING
            assert "upf.demo.v1.Echo" in ProtoReflectionDescriptorDatabase(channel).get_services()

            stream: Any = echo.Count(demo_pb2.CountRequest(count=15, interval_ms=100), timeout=20)
            assert next(stream).n == 1
            process.popen.send_signal(signal.SIGTERM)
            stopping = [pb.PHASE_STOPPING]
            wait_until(lambda: [i.phase for i in instances(registry)] == stopping, what="the registry to see STOPPING")
            assert routed(registry, "upf.demo.v1.Echo") == []
            assert [message.n for message in stream] == list(range(2, 16))  # the in-flight call completed

        assert process.popen.wait(timeout=15) == 0, process.output()
        wait_until(lambda: instances(registry) == [], what="the plugin to unregister")
        assert "stopped" in process.output()


def test_registers_again_by_itself_after_the_registry_restarts(work_dir: Path) -> None:
    port = free_port()
    # The plugin starts before the registry: it serves at once and registers when the registry is up.
    with demo_plugin(f"127.0.0.1:{port}", work_dir) as (process, endpoint):
        with run_registry(FAST, work_dir, port=port) as registry:
            wait_routed(registry, process, endpoint)
        # The registry is down: the plugin keeps serving.
        with grpc.insecure_channel(endpoint) as channel:
            assert demo_pb2_grpc.EchoStub(channel).Say(demo_pb2.SayRequest(text="alone"), timeout=5).text
        with run_registry(FAST, work_dir, port=port) as restarted:
            # A fresh memory store: the plugin's renewal gets NOT_FOUND and it registers again.
            wait_routed(restarted, process, endpoint)
            assert "registering again" in process.output()
        assert process.alive()


def test_an_invalid_manifest_stops_the_plugin_with_the_file_and_line(work_dir: Path) -> None:
    manifest = work_dir / "bad-demo-manifest.yaml"
    good = (Path(__file__).parents[2] / "plugins/demo/manifest.yaml").read_text()
    lines = good.splitlines()
    [index] = [n for n, line in enumerate(lines) if line.startswith("version:")]
    lines[index] = "version: 1.0"  # a YAML number, not semver text
    manifest.write_text("\n".join(lines) + "\n")
    args = [UPF, "plugin", "demo", "--manifest", str(manifest), "--registry", f"127.0.0.1:{free_port()}"]
    result = subprocess.run(args, capture_output=True, text=True, timeout=20, check=False)
    assert result.returncode == 1
    assert f"{manifest}:{index + 1}:" in result.stderr
    assert "version" in result.stderr


async def test_in_process_plugin_resolves_its_dependencies_to_channels(work_dir: Path) -> None:
    # The SDK used as a library: a plugin that requires IEcho reaches the demo through `channel()`.
    with run_registry(FAST, work_dir) as registry, demo_plugin(registry.target, work_dir) as (process, endpoint):
        wait_routed(registry, process, endpoint)
        manifest = work_dir / "client-manifest.yaml"
        manifest.write_text(
            "id: echo-client\nversion: 1.0.0\nname: Echo client\ntype: business\n"
            "requires: [{interface: IEcho, version: ^1}]\n"
        )
        plugin = Plugin(manifest, [], registry=registry.target, handle_signals=False, credential=registry.credential)
        running = asyncio.create_task(plugin.run())
        try:
            await asyncio.wait_for(plugin.started.wait(), timeout=10)
            channel = await plugin.channel("IEcho")
            reply = await demo_pb2_grpc.EchoStub(channel).Say(demo_pb2.SayRequest(text="dep"), timeout=5)
            assert reply.text == "echo: dep"
            assert await plugin.channel_to("upf.demo.v1.Echo") is channel  # one channel per endpoint
            assert plugin.keeper is not None
            await asyncio.wait_for(plugin.keeper.registered.wait(), timeout=10)
        finally:
            await plugin.stop()
            await asyncio.wait_for(running, timeout=10)
        ids = [p.plugin_id for p in registry.stub.ListPlugins(pb.ListPluginsRequest(), timeout=2).plugins]
        assert "echo-client" not in ids  # unregistered on stop
