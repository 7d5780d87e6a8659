"""The orders plugin as a process: `upf plugin orders` (or `python -m plugins.orders`).

It registers plugins/orders/manifest.yaml and serves upf.orders.v1.Orders; orders live in whichever
IStorage the registry resolves, idempotency keys in ICache when one is there, and changes go out on
IMessageBus when one is there. `upf run` embeds it
(cli/allinone.py) with the embedded storage-sqlite (:memory:) and cache-memory.

Its UI (plugins/orders/ui, built into ui/dist by `make orders-ui`) is served by this same process over
HTTP (plugins/sdk/ui.py) on --ui-port or $UPF_ORDERS_UI_PORT (default: any free port), and the manifest
it registers says where (ui.baseUrl), so the shell finds it through the gateway like any plugin's.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from upf.orders.v1 import orders_pb2_grpc

from plugins.orders.events import BusOrderEvents, OrderEvents
from plugins.orders.service import OrdersService
from plugins.sdk import Plugin, Timings, load_manifest_text, run_plugin
from plugins.sdk.credentials import Credential
from plugins.sdk.ui import UiServer

__all__ = ["MANIFEST", "UI_BUILD_HINT", "UI_DIST", "build", "main", "ui_port_from_env", "ui_server"]

MANIFEST = Path(__file__).with_name("manifest.yaml")
UI_DIST = Path(__file__).with_name("ui") / "dist"
UI_BUILD_HINT = "build it with `make orders-ui` (npm ci && npm run build in plugins/orders/ui)"


class OrdersPlugin(Plugin):
    """The SDK plugin, with the relay of order changes from the message bus running beside it."""

    def __init__(self, bus_events: BusOrderEvents | None, *args: Any, **options: Any) -> None:
        super().__init__(*args, **options)
        self.bus_events = bus_events

    async def run(self) -> None:
        relay = asyncio.create_task(self._relay()) if self.bus_events is not None else None
        try:
            await super().run()
        finally:
            if relay is not None:
                relay.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await relay

    async def _relay(self) -> None:
        assert self.bus_events is not None
        await self.started.wait()  # dependencies resolve once the plugin serves and registers
        await self.bus_events.relay_forever()


def ui_port_from_env() -> int:
    """$UPF_ORDERS_UI_PORT, or 0 (any free port)."""
    value = os.environ.get("UPF_ORDERS_UI_PORT", "").strip()
    if not value:
        return 0
    if not value.isdigit() or int(value) > 65535:
        raise ValueError(f"UPF_ORDERS_UI_PORT must be a port number (0: any free port), not {value!r}")
    return int(value)


def ui_server(host: str = "127.0.0.1", port: int | None = None, dist: Path = UI_DIST) -> UiServer:
    """The server of the UI files (not started); port None: $UPF_ORDERS_UI_PORT or any free port."""
    return UiServer(dist, host=host, port=ui_port_from_env() if port is None else port, build_hint=UI_BUILD_HINT)


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
    ui: UiServer | None = None,
) -> Plugin:
    """The plugin. Order changes go on IMessageBus (`order.created` / `order.updated`) and come back from
    it to WatchOrders on every replica (events.BusOrderEvents); `events` replaces that (tests). With
    `ui` (a started UiServer) the manifest it registers declares the UI served there."""

    def make(manifest: str | Path) -> Plugin:
        bus_events = BusOrderEvents(lambda: plugin.message_bus()) if events is None else None
        service = OrdersService(events or bus_events)  # type: ignore[arg-type]  # one of them is set
        plugin = OrdersPlugin(
            bus_events,
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

    if ui is None:
        return make(manifest)
    # Checked as written first, so that a mistake is reported at the file a person edits.
    load_manifest_text(manifest)
    with tempfile.TemporaryDirectory(prefix="orders-manifest-") as folder:
        return make(ui.manifest(Path(manifest), Path(folder)))


def main(
    *,
    registry: str = "127.0.0.1:50052",
    host: str = "127.0.0.1",
    port: int = 0,
    instance_id: str | None = None,
    manifest: str | Path = MANIFEST,
    drain_grace: float = 10.0,
    ui_port: int | None = None,
) -> int:
    """Run until SIGTERM/SIGINT; the exit status (0 after a graceful stop, 1 for an invalid manifest).
    The UI files are served on `ui_port` (None: $UPF_ORDERS_UI_PORT or any free port) meanwhile."""
    try:
        ui = ui_server(host, ui_port)
    except ValueError as exc:
        print(f"upf: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"upf: cannot serve the orders UI on {host}:{ui_port}: {exc.strerror}", file=sys.stderr)
        return 1
    with ui:
        return run_plugin(
            lambda: build(
                registry=registry,
                host=host,
                port=port,
                instance_id=instance_id,
                manifest=manifest,
                drain_grace=drain_grace,
                ui=ui,
            )
        )
