"""The benchmark's upstream: a grpcio aio server for bench.v1.Echo (the same kind of backend as the anchors).

    python -m bench.backend --address 127.0.0.1:PORT --gen-dir DIR [--max-message-bytes N]

DIR holds bench_pb2.py / bench_pb2_grpc.py, generated from bench/bench.proto at run time (see
bench.protogen). grpc.aio runs on the stock asyncio loop (it does not support uvloop).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import AsyncIterator
from typing import Any

import grpc

DEFAULT_MAX_MESSAGE_BYTES = 8 * 1024 * 1024


def build_server(gen_dir: str, address: str, max_message_bytes: int) -> tuple[grpc.aio.Server, int]:
    sys.path.insert(0, gen_dir)
    import bench_pb2  # type: ignore[import-not-found]
    import bench_pb2_grpc  # type: ignore[import-not-found]

    replies: dict[int, Any] = {}

    def sized(size: int) -> Any:
        msg = replies.get(size)
        if msg is None:
            msg = replies[size] = bench_pb2.Msg(payload=b"x" * size)
        return msg

    class Echo(bench_pb2_grpc.EchoServicer):  # type: ignore[misc]
        async def Unary(self, request: Any, context: Any) -> Any:
            return sized(request.reply_size) if request.reply_size > 0 else request

        async def ServerStream(self, request: Any, context: Any) -> AsyncIterator[Any]:
            msg = sized(request.size)
            for _ in range(request.count):
                yield msg

        async def Bidi(self, requests: AsyncIterator[Any], context: Any) -> AsyncIterator[Any]:
            async for request in requests:
                yield request

    options = [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
    ]
    server = grpc.aio.server(options=options)
    bench_pb2_grpc.add_EchoServicer_to_server(Echo(), server)
    # Reflection, as every SDK plugin serves it: the gateway's JSON (Connect) calls read the schema from it.
    from grpc_reflection.v1alpha import reflection

    reflection.enable_server_reflection(["bench.v1.Echo", reflection.SERVICE_NAME], server)
    port = server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"cannot listen on {address}")
    return server, port


async def serve(gen_dir: str, address: str, max_message_bytes: int) -> None:
    server, port = build_server(gen_dir, address, max_message_bytes)
    await server.start()
    print(f"bench backend listening on {address} (port {port})", flush=True)
    await server.wait_for_termination()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.backend", description="grpcio aio server for bench.v1.Echo")
    parser.add_argument("--address", default="127.0.0.1:50061", help="host:port to listen on")
    parser.add_argument("--gen-dir", required=True, help="directory with the generated bench_pb2*.py")
    parser.add_argument("--max-message-bytes", type=int, default=DEFAULT_MAX_MESSAGE_BYTES)
    args = parser.parse_args()
    asyncio.run(serve(args.gen_dir, args.address, args.max_message_bytes))


if __name__ == "__main__":
    main()
