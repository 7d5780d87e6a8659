"""A tiny plugin for registry and routing tests: upf.demo.v1.Echo plus grpc.health.v1 (SERVING).

python -m tests.support.plugin_server --port 0 [--tag]     prints "PORT <n>" once it listens

With --tag, Say replies "<text> @<port>": routing tests count which replica answered.
With --refuse, Say and Count answer UNAVAILABLE: a replica that is reached but refuses the call.
With --reflect, it serves grpc.reflection too (as every SDK plugin does), so the gateway can describe it.
With --grace N, SIGTERM stops the server gracefully (grpc's server.stop(N): GOAWAY, running calls
finish, new ones are refused), as a plugin shutting down cleanly does.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections.abc import AsyncIterator
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection
from upf.demo.v1 import demo_pb2, demo_pb2_grpc

from plugins.demo.service import EchoService


class TaggedEcho(EchoService):
    def __init__(self, port: int) -> None:
        self.port = port

    async def Say(
        self, request: demo_pb2.SayRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> demo_pb2.SayResponse:
        return demo_pb2.SayResponse(text=f"{request.text} @{self.port}")


class RefusingEcho(EchoService):
    async def Say(
        self, request: demo_pb2.SayRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> demo_pb2.SayResponse:
        await context.abort(grpc.StatusCode.UNAVAILABLE, "this replica refuses every call")

    async def Count(
        self, request: demo_pb2.CountRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[demo_pb2.CountResponse]:
        await context.abort(grpc.StatusCode.UNAVAILABLE, "this replica refuses every call")
        yield demo_pb2.CountResponse()  # never reached: makes this an async generator, as Count is


async def main(port: int, tag: bool, refuse: bool, reflect: bool, grace: float | None) -> None:
    server = grpc.aio.server()
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    servicer = RefusingEcho() if refuse else TaggedEcho(bound) if tag else EchoService()
    demo_pb2_grpc.add_EchoServicer_to_server(servicer, server)
    health = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    if reflect:
        names = (demo_pb2.DESCRIPTOR.services_by_name["Echo"].full_name, reflection.SERVICE_NAME)
        reflection.enable_server_reflection(names, server)
    await server.start()
    await health.set("", health_pb2.HealthCheckResponse.SERVING)
    if grace is not None:
        stopping = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stopping.set)
    print(f"PORT {bound}", flush=True)
    if grace is not None:
        await stopping.wait()
        await server.stop(grace)
    await server.wait_for_termination()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--tag", action="store_true", help='Say replies "<text> @<port>"')
    parser.add_argument("--refuse", action="store_true", help="Say and Count answer UNAVAILABLE")
    parser.add_argument("--reflect", action="store_true", help="serve grpc.reflection")
    parser.add_argument("--grace", type=float, default=None, help="on SIGTERM, stop gracefully within this many s")
    args = parser.parse_args()
    asyncio.run(main(args.port, args.tag, args.refuse, args.reflect, args.grace))
