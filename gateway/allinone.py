"""`upf run`: the whole platform in one process, on embedded defaults.

The registry (memory store) on registryUrl (default 127.0.0.1:50052), the demo plugin on the plugin
SDK registering with it, and the gateway routing by it: the same parts and the same protocols as
the Procfile's separate processes, so what works here works there. Nothing else needs to run.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from gateway.serve import serve_gateway
from gateway.settings import GatewaySettings
from plugins.demo.plugin import build as build_demo
from registry.server import serve as serve_registry
from registry.settings import RegistrySettings

__all__ = ["DEFAULT_REGISTRY", "run_all"]

logger = logging.getLogger(__name__)

DEFAULT_REGISTRY = "127.0.0.1:50052"


async def run_all(settings: GatewaySettings) -> None:
    registry_url = settings.registry_url or DEFAULT_REGISTRY
    host, _, port = registry_url.rpartition(":")
    registry_stopped = asyncio.Event()
    registry = asyncio.create_task(
        serve_registry(RegistrySettings(host=host, port=int(port), log_level=settings.log_level), stop=registry_stopped)
    )
    # The plugin's signals are the gateway's: it stops when the gateway has stopped.
    demo = build_demo(registry=registry_url, handle_signals=False)
    demo_task = asyncio.create_task(demo.run())
    try:
        await serve_gateway(settings.model_copy(update={"registry_url": registry_url, "workers": 1}))
    finally:
        await demo.stop()
        with contextlib.suppress(Exception):
            await demo_task
        registry_stopped.set()
        with contextlib.suppress(Exception):
            await registry
