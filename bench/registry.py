"""A registry for benchmarks of infrastructure plugins, which verify every caller's identity token.

The plugins run as in production: they register with their credential and check the caller's
token on each call. The benchmark's client holds the token of a registered "bench-client" plugin
(registered with an endpoint nobody serves: the registry issues the token at Register all the same).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
from upf.registry.v1 import registry_pb2 as pb, registry_pb2_grpc

from bench.harness import Server, free_port
from registry.credentials import RegistrationCredentials

__all__ = ["BenchRegistry", "bench_registry"]

ROOT = Path(__file__).resolve().parents[1]
_SECRET = "bench-registration-secret"
_CLIENT = {"id": "bench-client", "version": "1.0.0", "name": "Benchmark client", "type": "business"}


class BenchRegistry:
    def __init__(self, target: str) -> None:
        self.target = target
        self._credentials = RegistrationCredentials(_SECRET.encode())

    def credential(self, plugin_id: str) -> str:
        return self._credentials.for_plugin(plugin_id)

    def client_token(self) -> str:
        """An identity token for the benchmark's client (valid for an hour)."""
        with grpc.insecure_channel(self.target) as channel:
            reply = registry_pb2_grpc.RegistryStub(channel).Register(
                pb.RegisterRequest(
                    manifest=json.dumps(_CLIENT), endpoint="127.0.0.1:1", credential=self.credential(_CLIENT["id"])
                ),
                timeout=10,
            )
        return str(reply.identity_token)


@contextmanager
def bench_registry(run_dir: Path) -> Iterator[BenchRegistry]:
    port = free_port()
    upf = str(Path(sys.executable).parent / "upf")
    argv = [upf, "registry", "--port", str(port), "--log-level", "error"]
    server = Server("registry", argv, [port], run_dir / "registry.log")
    server.start(ROOT, env={"UPF_REGISTRATION__SECRET": _SECRET, "UPF_IDENTITY_TOKEN_TTL": "3600"})
    try:
        server.wait_ready()
        yield BenchRegistry(f"127.0.0.1:{port}")
    finally:
        server.stop()
