"""The orders plugin inside `upf run` (cli/allinone.py), beside the infrastructure plugins the
platform started (cli/infrastructure.py): it registers like any plugin and finds IStorage and
ICache through its manifest's `requires`. With the embedded storage (SQLite in memory) orders are
gone when `upf run` stops; a deployment file names real storage.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from plugins.orders.plugin import build as build_orders, ui_server
from plugins.sdk import Plugin
from plugins.sdk.credentials import Credential
from plugins.sdk.tracing import Traced, untraced

__all__ = ["embedded_orders"]


@contextlib.asynccontextmanager
async def embedded_orders(registry: str, credential: Credential, traced: Traced = untraced) -> AsyncIterator[Plugin]:
    """Run orders-plugin, and serve its UI files, for the block; stopped (and drained) before the block's
    caller stops the infrastructure, so that its last calls still find storage. `traced`: as for the
    infrastructure plugins (plugins/sdk/tracing.py)."""
    ui = ui_server()  # $UPF_ORDERS_UI_PORT or any free port
    ui.start()
    try:
        orders = traced(build_orders(registry=registry, handle_signals=False, credential=credential, ui=ui))
        task = asyncio.create_task(orders.run())
        try:
            yield orders
        finally:
            await orders.stop()
            with contextlib.suppress(Exception):
                await task
    finally:
        # shutdown() waits for the server's poll loop: off the event loop.
        await asyncio.to_thread(ui.close)
