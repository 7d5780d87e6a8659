"""The orders plugin with the embedded infrastructure it needs, for `upf run` (gateway/allinone.py).

storage-sqlite on `:memory:` and cache-memory, each registered with the registry like any plugin, then
the orders plugin, which finds them through its manifest's `requires`. Orders are gone when `upf run`
stops: the embedded default is for trying the platform, a deployment names real storage.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence

from plugins.cache.plugin import CacheSettings, build as build_cache
from plugins.orders.plugin import build as build_orders
from plugins.sdk import Plugin
from plugins.sdk.credentials import Credential
from plugins.storage.plugin import build as build_storage

__all__ = ["embedded_infrastructure", "embedded_orders"]


def embedded_infrastructure(registry: str, credential: Credential) -> list[Plugin]:
    """storage-sqlite on :memory: and cache-memory, registering with `registry`."""
    return [
        build_storage("storage-sqlite", ":memory:", registry=registry, handle_signals=False, credential=credential),
        build_cache(CacheSettings(backend="memory"), registry=registry, handle_signals=False, credential=credential),
    ]


@contextlib.asynccontextmanager
async def embedded_orders(
    registry: str, credential: Credential, infrastructure: Sequence[Plugin] | None = None
) -> AsyncIterator[list[Plugin]]:
    """Run the infrastructure plugins (default: `embedded_infrastructure`; a deployment file's choice
    otherwise, built with handle_signals=False) and orders-plugin for the block; stopped in reverse."""
    infrastructure = (
        list(infrastructure) if infrastructure is not None else embedded_infrastructure(registry, credential)
    )
    orders = build_orders(registry=registry, handle_signals=False, credential=credential)
    tasks = [asyncio.create_task(plugin.run()) for plugin in infrastructure]
    orders_task = asyncio.create_task(orders.run())
    try:
        yield [*infrastructure, orders]
    finally:
        # Orders first, so that its last calls still find storage; then the infrastructure together.
        await _stop([orders], [orders_task])
        await _stop(infrastructure, tasks)


async def _stop(plugins: list[Plugin], tasks: list[asyncio.Task[None]]) -> None:
    for plugin in plugins:
        await plugin.stop()
    for task in tasks:
        with contextlib.suppress(Exception):
            await task
