"""`upf run`: the gateway and the demo plugin in one process, on embedded defaults."""

from __future__ import annotations

import logging

from gateway.serve import serve_gateway
from gateway.settings import GatewaySettings
from plugins.demo.service import serve as serve_demo

__all__ = ["run_all"]

logger = logging.getLogger(__name__)

DEMO_SERVICE = "upf.demo.v1.Echo"


async def run_all(settings: GatewaySettings) -> None:
    demo, port = await serve_demo("127.0.0.1:0")
    logger.info("demo plugin %s listening on 127.0.0.1:%d", DEMO_SERVICE, port)
    upstreams = {DEMO_SERVICE: [f"127.0.0.1:{port}"], **settings.upstreams}
    try:
        await serve_gateway(settings.model_copy(update={"upstreams": upstreams, "workers": 1}))
    finally:
        await demo.stop(grace=2.0)
