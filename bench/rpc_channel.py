"""`python -m bench.rpc_channel`: a plugin's client cost per unary call, grpc.aio's channel vs common.rpc.Channel.

Both channels call the same server, the demo plugin's Echo.Say (a no-op) on a grpc.aio server in
a process of its own, so the client process's CPU (time.process_time) is the channel's alone plus
the stub and protobuf work both share. 16 calls are kept in flight (16 tasks, each calling in a
loop), as a busy plugin would. Each round runs `--calls` calls per channel, channels alternating;
the table shows the best round of `--rounds` for each. On a shared machine the numbers move with
the load, the ratio between the two rows much less.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import subprocess
import sys
import time
from collections.abc import Callable

import grpc
from upf.demo.v1 import demo_pb2, demo_pb2_grpc

from common.rpc.channel import Channel

IN_FLIGHT = 16


async def _serve(port: int) -> None:
    from plugins.demo.service import serve

    server, _ = await serve(f"127.0.0.1:{port}")
    print("ready", flush=True)
    await server.wait_for_termination()


async def _round(channel: grpc.aio.Channel, calls: int) -> tuple[float, float]:
    stub = demo_pb2_grpc.EchoStub(channel)
    request = demo_pb2.SayRequest(text="x")
    per_task = calls // IN_FLIGHT

    async def caller() -> None:
        for _ in range(per_task):
            await stub.Say(request, timeout=10)

    wall, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(caller() for _ in range(IN_FLIGHT)))
    return time.perf_counter() - wall, time.process_time() - cpu


async def _bench(port: int, calls: int, rounds: int) -> None:
    target = f"127.0.0.1:{port}"
    channels: dict[str, Callable[[], grpc.aio.Channel]] = {
        "grpc.aio channel": lambda: grpc.aio.insecure_channel(target),
        "common.rpc.Channel": lambda: Channel(target),
    }
    best: dict[str, tuple[float, float]] = {}
    opened = {name: make() for name, make in channels.items()}
    try:
        for channel in opened.values():
            await _round(channel, 1000)  # warm up: connection, HPACK tables, code paths
        for _ in range(rounds):
            for name, channel in opened.items():
                wall, cpu = await _round(channel, calls)
                if name not in best or cpu < best[name][1]:
                    best[name] = (wall, cpu)
    finally:
        for channel in opened.values():
            await channel.close(None)
    done = calls // IN_FLIGHT * IN_FLIGHT
    print(f"{done} unary calls per round, {IN_FLIGHT} in flight, best of {rounds} rounds")
    print(f"{'channel':<20} {'calls/s':>9} {'client CPU us/call':>19}")
    for name, (wall, cpu) in best.items():
        print(f"{name:<20} {done / wall:>9,.0f} {cpu / done * 1e6:>19.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=8000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)  # the server process's own flag
    args = parser.parse_args()
    if args.serve is not None:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(_serve(args.serve))
        return
    from tests.support.processes import free_port

    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "bench.rpc_channel", "--serve", str(port)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout is not None
        if server.stdout.readline().strip() != "ready":
            raise SystemExit("the Echo server did not start")
        asyncio.run(_bench(port, args.calls, args.rounds))
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
