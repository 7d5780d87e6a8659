"""`upf registry` and a tiny plugin as real processes on free ports, for registry tests."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc
from upf.registry.v1 import registry_pb2, registry_pb2_grpc

from registry.credentials import RegistrationCredentials
from tests.support.processes import Process, _died, free_port, wait_until

#: The registration secret test registries run with (each plugin id's credential derives from it).
REGISTRATION_SECRET = "test-registration-secret"


def credential_for(plugin_id: str) -> str:
    """The registration credential of a plugin id with any registry that run_registry starts."""
    return RegistrationCredentials(REGISTRATION_SECRET.encode()).for_plugin(plugin_id)


class RunningRegistry:
    def __init__(self, process: Process, port: int) -> None:
        self.process = process
        self.credentials = RegistrationCredentials(REGISTRATION_SECRET.encode())
        self.target = f"127.0.0.1:{port}"
        self.channel = grpc.insecure_channel(self.target)
        self.stub = registry_pb2_grpc.RegistryStub(self.channel)

    def credential(self, plugin_id: str) -> str:
        return self.credentials.for_plugin(plugin_id)

    def register_request(self, manifest: str, **fields: Any) -> registry_pb2.RegisterRequest:
        """A RegisterRequest with the credential of the manifest's plugin id (JSON or YAML text)."""
        plugin_id = yaml.safe_load(manifest).get("id", "")
        return registry_pb2.RegisterRequest(manifest=manifest, credential=self.credential(str(plugin_id)), **fields)

    def serving(self) -> bool:
        try:
            reply = health_pb2_grpc.HealthStub(self.channel).Check(health_pb2.HealthCheckRequest(), timeout=1)
        except grpc.RpcError:
            return False
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


@contextmanager
def run_registry(config: dict[str, Any], work_dir: Path, *, port: int | None = None) -> Iterator[RunningRegistry]:
    """`upf registry` with this configuration on a free port (or `port`); stopped with SIGTERM."""
    port = port or free_port()
    config_file = work_dir / f"registry-{port}-{os.getpid()}.yaml"
    config_file.write_text(yaml.safe_dump({"port": port, "registration": {"secret": REGISTRATION_SECRET}, **config}))
    upf = str(Path(sys.executable).parent / "upf")
    env = {key: value for key, value in os.environ.items() if not key.startswith("UPF_")}
    log = work_dir / f"registry-{port}-{free_port()}.log"
    process = Process([upf, "registry", "--config", str(config_file)], env=env, log=log)
    registry = RunningRegistry(process, port)
    try:
        wait_until(lambda: registry.serving() or (not process.alive() and _died(process)), what="the registry to serve")
        yield registry
    finally:
        registry.channel.close()
        process.stop()


class PluginProcess:
    """tests/support/plugin_server.py: upf.demo.v1.Echo and grpc.health.v1 on a fixed port."""

    def __init__(self, work_dir: Path, port: int | None = None) -> None:
        self.port = port or free_port()
        self.endpoint = f"127.0.0.1:{self.port}"
        self.work_dir = work_dir
        self.process: Process | None = None

    def start(self) -> None:
        args = [sys.executable, "-m", "tests.support.plugin_server", "--port", str(self.port)]
        process = Process(args, log=self.work_dir / f"plugin-{self.port}-{free_port()}.log")
        self.process = process
        wait_until(
            lambda: "PORT " in process.output() or (not process.alive() and _died(process)),
            what="the plugin to listen",
        )

    def stop(self, sig: int) -> None:
        if self.process is not None:
            self.process.stop(sig)
            self.process = None


@contextmanager
def plugin_process(work_dir: Path) -> Iterator[PluginProcess]:
    plugin = PluginProcess(work_dir)
    plugin.start()
    try:
        yield plugin
    finally:
        plugin.stop(15)
