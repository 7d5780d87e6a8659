"""The orders plugin as a process: `upf plugin orders` (or `python -m plugins.orders`).

It registers plugins/orders/manifest.yaml and serves upf.orders.v1.Orders; orders live in whichever
IStorage the registry resolves, idempotency keys in ICache when one is there. `upf run` embeds it
(gateway/allinone.py) with the embedded storage-sqlite (:memory:) and cache-memory.
"""

from __future__ import annotations

from pathlib import Path

from upf.orders.v1 import orders_pb2_grpc

from plugins.orders.events import InProcessOrderEvents, OrderEvents
from plugins.orders.service import OrdersService
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
    events: OrderEvents | None = None,
    timings: Timings | None = None,
) -> Plugin:
    """The plugin; `events` replaces the in-process change feed (a message bus, later)."""
    service = OrdersService(events or InProcessOrderEvents())
    plugin = Plugin(
        manifest,
        [(orders_pb2_grpc.add_OrdersServicer_to_server, service)],
        handle_signals=handle_signals,
        registry=registry,
        host=host,
        port=port,
        instance_id=instance_id,
        timings=timings or Timings(drain_grace=drain_grace),
        credential=credential,
    )
    service.bind(plugin)
    return plugin


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
