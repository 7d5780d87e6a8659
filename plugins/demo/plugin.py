"""The demo plugin as a stand-alone process on the plugin SDK: `upf plugin demo` (or `python -m plugins.demo`).

It registers plugins/demo/manifest.yaml with the registry and serves `upf.demo.v1.Echo`; `upf run`
keeps embedding the same servicer without a registry (service.serve).
"""

from __future__ import annotations

from pathlib import Path

from upf.demo.v1 import demo_pb2_grpc

from plugins.demo.service import EchoService
from plugins.sdk import Plugin, Timings, run_plugin
from plugins.sdk.credentials import Credential

__all__ = ["MANIFEST", "build", "main"]

MANIFEST = Path(__file__).with_name("manifest.yaml")


def build(
    *,
    registry: str = "127.0.0.1:50052",
    host: str = "127.0.0.1",
    port: int = 0,
    instance_id: str | None = None,
    manifest: str | Path = MANIFEST,
    drain_grace: float = 10.0,
    handle_signals: bool = True,
    credential: Credential | None = None,
) -> Plugin:
    return Plugin(
        manifest,
        [(demo_pb2_grpc.add_EchoServicer_to_server, EchoService())],
        handle_signals=handle_signals,
        registry=registry,
        host=host,
        port=port,
        instance_id=instance_id,
        timings=Timings(drain_grace=drain_grace),
        credential=credential,
    )


def main(
    *,
    registry: str = "127.0.0.1:50052",
    host: str = "127.0.0.1",
    port: int = 0,
    instance_id: str | None = None,
    manifest: str | Path = MANIFEST,
    drain_grace: float = 10.0,
) -> int:
    """Run until SIGTERM/SIGINT; the exit status (0 after a graceful stop, 1 for an invalid manifest)."""
    return run_plugin(
        lambda: build(
            registry=registry,
            host=host,
            port=port,
            instance_id=instance_id,
            manifest=manifest,
            drain_grace=drain_grace,
        )
    )
