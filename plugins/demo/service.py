"""The demo plugin: `upf.demo.v1.Echo`, embedded by `upf run` and run on its own by `upf plugin demo` (plugin.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, TypeAlias

import grpc
from upf.demo.v1 import demo_pb2, demo_pb2_grpc

__all__ = ["EchoService", "serve"]

MAX_COUNT = 1000

_Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"


class EchoService(demo_pb2_grpc.EchoServicer):
    async def Say(self, request: demo_pb2.SayRequest, context: _Context) -> demo_pb2.SayResponse:
        return demo_pb2.SayResponse(text=f"echo: {request.text}")

    async def Count(self, request: demo_pb2.CountRequest, context: _Context) -> AsyncIterator[demo_pb2.CountResponse]:
        if request.count > MAX_COUNT:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"count must be at most {MAX_COUNT}")
        for n in range(1, request.count + 1):
            if n > 1 and request.interval_ms:
                await asyncio.sleep(request.interval_ms / 1000)
            yield demo_pb2.CountResponse(n=n)


async def serve(address: str) -> tuple[grpc.aio.Server, int]:
    """Start the demo plugin on `address` (port 0 picks a free one); returns the server and its port."""
    server = grpc.aio.server()
    demo_pb2_grpc.add_EchoServicer_to_server(EchoService(), server)
    port = server.add_insecure_port(address)
    await server.start()
    return server, port
