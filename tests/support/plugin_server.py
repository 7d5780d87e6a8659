"""A tiny plugin for registry tests: upf.demo.v1.Echo plus grpc.health.v1 (SERVING), on a given port.

python -m tests.support.plugin_server --port 0     prints "PORT <n>" once it listens
"""

from __future__ import annotations

import argparse
import asyncio

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from upf.demo.v1 import demo_pb2_grpc

from plugins.demo.service import EchoService


async def main(port: int) -> None:
    server = grpc.aio.server()
    demo_pb2_grpc.add_EchoServicer_to_server(EchoService(), server)
    health = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await health.set("", health_pb2.HealthCheckResponse.SERVING)
    print(f"PORT {bound}", flush=True)
    await server.wait_for_termination()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    asyncio.run(main(parser.parse_args().port))
