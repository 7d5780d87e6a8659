"""accept.v1.Probe (tests/support/probe.py) accepting requests up to 16 MiB, for the Traefik test's 8 MiB call.

python -m tests.ops.big_probe --port 0 --gen-dir DIR  (prints `PORT <n>` once it listens)
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

import grpc

from tests.support.probe import build_servicer, generate, load, serve_on

LIMIT = 16 * 1024 * 1024


async def serve(port: int, gen_dir: Path) -> None:
    pb2, pb2_grpc = load(gen_dir)
    server = grpc.aio.server(
        options=[("grpc.max_receive_message_length", LIMIT), ("grpc.max_send_message_length", LIMIT)]
    )
    pb2_grpc.add_ProbeServicer_to_server(build_servicer(pb2, pb2_grpc), server)
    await serve_on(server, port)


def main() -> None:
    parser = argparse.ArgumentParser(description="Serve accept.v1.Probe with a 16 MiB message limit.")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--gen-dir", type=Path, required=True)
    args = parser.parse_args()
    generate(args.gen_dir)
    asyncio.run(serve(args.port, args.gen_dir))


if __name__ == "__main__":
    main()
