"""`python -m bench.rpc_server`: CPU per unary call in a plugin server process, grpc.aio vs common.rpc.Server.

A child process serves the demo plugin's Echo.Say (upf.demo.v1; next to no work: the text back) on one server or
the other, on the default asyncio loop as plugins do; this process calls it with a grpc.aio
client, `--inflight` calls at a time, for `--seconds`. The server's CPU is its utime + stime from
/proc around the timed run (after a warm-up), divided by the calls made.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time

import grpc
import grpc.aio
from upf.demo.v1 import demo_pb2, demo_pb2_grpc

from common.rpc.server import Server
from plugins.demo.service import EchoService

__all__ = ["main"]

_TICKS = os.sysconf("SC_CLK_TCK")


async def _serve(kind: str) -> None:
    server = grpc.aio.server() if kind == "grpc.aio" else Server()
    demo_pb2_grpc.add_EchoServicer_to_server(EchoService(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(port, flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until the parent closes stdin
    await server.stop(None)


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime


async def _load(port: int, inflight: int, seconds: float, pid: int) -> tuple[float, float]:
    """(calls per second, server CPU microseconds per call) over `seconds` after a warm-up."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = demo_pb2_grpc.EchoStub(channel)
        request = demo_pb2.SayRequest(text="hello")
        counting = False
        calls = 0
        stop_at = 0.0

        async def worker() -> None:
            nonlocal calls
            while time.monotonic() < stop_at:
                await stub.Say(request)
                if counting:
                    calls += 1

        stop_at = time.monotonic() + 1.0  # warm-up
        await asyncio.gather(*(worker() for _ in range(inflight)))
        counting = True
        cpu_before, started = _cpu_seconds(pid), time.monotonic()
        stop_at = started + seconds
        await asyncio.gather(*(worker() for _ in range(inflight)))
        elapsed, cpu = time.monotonic() - started, _cpu_seconds(pid) - cpu_before
    return calls / elapsed, cpu / calls * 1e6


def _measure(kind: str, inflight: int, seconds: float) -> tuple[float, float]:
    child = subprocess.Popen(
        [sys.executable, "-m", "bench.rpc_server", "--serve", kind],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        port = int(child.stdout.readline())
        return asyncio.run(_load(port, inflight, seconds, child.pid))
    finally:
        assert child.stdin is not None
        child.stdin.close()
        child.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--serve", choices=("grpc.aio", "common.rpc"), help=argparse.SUPPRESS)
    parser.add_argument("--inflight", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--repeat", type=int, default=3, help="runs per server; the best is shown")
    args = parser.parse_args()
    if args.serve:
        asyncio.run(_serve(args.serve))
        return
    print(f"unary Echo.Say, {args.inflight} in flight, {args.seconds:g} s per run, best of {args.repeat}")
    print(f"{'server':<12} {'calls/s':>9} {'server CPU us/call':>19}")
    for kind in ("grpc.aio", "common.rpc"):
        runs = [_measure(kind, args.inflight, args.seconds) for _ in range(args.repeat)]
        rate, cpu = min(runs, key=lambda run: run[1])
        print(f"{kind:<12} {rate:>9.0f} {cpu:>19.1f}")


if __name__ == "__main__":
    main()
