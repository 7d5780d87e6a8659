"""`python -m bench.ws_bidi`: bidi messages/s through the gateway's WebSocket bridges against direct gRPC.

Starts, on 127.0.0.1 only, the bench backend (grpcio aio, bench.v1.Echo whose Bidi echoes every
message) and the gateway (`upf gateway`) in front of it, then runs, for each route in turn:

  direct  bidi calls straight to the backend (over the gateway's HTTP/2 client: see run_direct)
  grpcws  the gateway's grpc-websockets bridge: one WebSocket per call
  mux     the gateway's upf-mux.v1: all of a client process's calls on one WebSocket

Each route runs `--streams` concurrent bidi calls spread over `--clients` client processes; each
call is a ping-pong (a message of `--size` payload bytes, then wait for its echo) for `--seconds`
after a warm-up. It prints replies per second, each route against direct gRPC, and the gateway's
and backend's CPU per message (from /proc, over the measured seconds). Everything shares this
machine's cores with the load generators, so the ratios and the CPU per message are the numbers
to compare, not the absolute rates. Every process started is stopped by its PID.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import struct
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import uvloop

from bench import harness, wire
from bench.harness import HOST, Server, log
from gateway.upstream.client import UpstreamClient

ROOT = Path(__file__).resolve().parents[1]
BIDI = f"/{wire.SERVICE}/Bidi"
ROUTES = ("direct", "grpcws", "mux")
GRPCWS_HEADERS = b"content-type: application/grpc-web+proto\r\nx-grpc-web: 1\r\n"
MUX_HEADER = struct.Struct(">BBII")
MUX_OPEN, MUX_DATA, MUX_WINDOW_UPDATE, MUX_TRAILERS, MUX_SETTINGS = 0x02, 0x03, 0x08, 0x07, 0x01
BIG_WINDOW = 1 << 30


# --- one client process: `python -m bench.ws_bidi --client ROUTE ...` prints one JSON line ----------


class Meter:
    """Replies counted only between the end of the warm-up and the end of the run."""

    def __init__(self, warmup: float, seconds: float, pids: list[int]) -> None:
        self.start = time.monotonic() + warmup
        self.end = self.start + seconds
        self.pids = pids
        self.count = 0
        self.cpu: tuple[float, float] | None = None

    def running(self) -> bool:
        return time.monotonic() < self.end

    def reply(self) -> None:
        if self.start <= time.monotonic() < self.end:
            self.count += 1

    async def sample_cpu(self) -> None:
        await asyncio.sleep(max(0.0, self.start - time.monotonic()))
        before = [harness.cpu_seconds([pid]) for pid in self.pids]
        await asyncio.sleep(max(0.0, self.end - time.monotonic()))
        after = [harness.cpu_seconds([pid]) for pid in self.pids]
        self.cpu = (after[0] - before[0], after[1] - before[1])


async def run_direct(address: str, streams: int, message: bytes, meter: Meter) -> None:
    # The gateway's own HTTP/2 gRPC client (raw frames, no (de)serialisation): a load generator as
    # cheap per message as the WebSocket clients below. grpc.aio's client costs ~250 us a message
    # and would measure itself rather than the backend.
    client = UpstreamClient(address, max_message_bytes=1 << 20)
    data = wire.frame(message)

    async def one() -> None:
        stream = await client.open(BIDI, b"", None)
        while meter.running():
            await stream.send(data, end_stream=False)
            await stream.read()
            meter.reply()
        await stream.send(b"", end_stream=True)
        while await stream.read() is not None:
            pass

    try:
        await asyncio.gather(*(one() for _ in range(streams)))
    finally:
        client.close()


async def run_grpcws(url: str, streams: int, message: bytes, meter: Meter) -> None:
    from websockets.asyncio.client import connect
    from websockets.typing import Subprotocol

    data = b"\x00" + wire.frame(message)

    async def one() -> None:
        async with connect(
            url + BIDI, subprotocols=[Subprotocol("grpc-websockets")], compression=None, max_size=None, proxy=None
        ) as ws:
            await ws.send(GRPCWS_HEADERS)
            headers_seen = False
            while meter.running():
                await ws.send(data)
                while True:
                    received = await ws.recv()
                    assert isinstance(received, bytes)
                    frames = wire.parse_frames(received)
                    if not headers_seen and frames[0][0] == wire.TRAILER_FLAG:
                        headers_seen = True
                        frames = frames[1:]
                    if frames:
                        break
                meter.reply()
            await ws.send(b"\x01")
            with contextlib.suppress(Exception):
                while True:
                    await ws.recv()

    await asyncio.gather(*(one() for _ in range(streams)))


async def run_mux(url: str, streams: int, message: bytes, meter: Meter) -> None:
    from websockets.asyncio.client import connect
    from websockets.typing import Subprotocol

    body = wire.frame(message)
    path = BIDI.encode()
    replies: dict[int, asyncio.Queue[None]] = defaultdict(asyncio.Queue)
    credit: dict[int, int] = {}  # request bytes each stream (0: the socket) may send
    opened = asyncio.Event()
    credited = asyncio.Event()

    async with connect(
        url + "/api/mux", subprotocols=[Subprotocol("upf-mux.v1")], compression=None, max_size=None, proxy=None
    ) as ws:

        async def read() -> None:
            async for data in ws:
                assert isinstance(data, bytes)
                offset = 0
                while offset < len(data):
                    kind, _flags, stream, length = MUX_HEADER.unpack_from(data, offset)
                    offset += MUX_HEADER.size
                    if kind == MUX_DATA:
                        replies[stream].put_nowait(None)  # whole messages: the window never cuts one
                    elif kind == MUX_SETTINGS:
                        _version, _streams, _max, window, connection, _frame = struct.unpack_from(
                            ">HIIIII", data, offset
                        )
                        credit[-1], credit[0] = window, connection  # -1: each new stream's window
                        opened.set()
                    elif kind == MUX_WINDOW_UPDATE:
                        credit[stream] = credit.get(stream, 0) + struct.unpack_from(">I", data, offset)[0]
                        credited.set()
                    elif kind == MUX_TRAILERS:
                        replies[stream].put_nowait(None)
                    offset += length

        reader = asyncio.ensure_future(read())
        await opened.wait()

        async def one(stream: int) -> None:
            credit[stream] = credit[-1]
            header = struct.pack(">IIH", BIG_WINDOW, 0, len(path)) + path
            await ws.send(MUX_HEADER.pack(MUX_OPEN, 0, stream, len(header)) + header)
            data = MUX_HEADER.pack(MUX_DATA, 0, stream, len(body)) + body
            while meter.running():
                while min(credit[stream], credit[0]) < len(body):
                    credited.clear()
                    await credited.wait()
                credit[stream] -= len(body)
                credit[0] -= len(body)
                await ws.send(data)
                await replies[stream].get()
                meter.reply()
            await ws.send(MUX_HEADER.pack(0x04, 0, stream, 0))  # HALF_CLOSE
            await replies[stream].get()  # its TRAILERS

        await asyncio.gather(*(one(2 * n + 1) for n in range(streams)))
        reader.cancel()


async def client_main(args: argparse.Namespace) -> None:
    meter = Meter(args.warmup, args.seconds, [args.gateway_pid, args.backend_pid])
    cpu = asyncio.ensure_future(meter.sample_cpu())
    message = bytes.fromhex(args.message)
    if args.client == "direct":
        await run_direct(args.target, args.streams, message, meter)
    elif args.client == "grpcws":
        await run_grpcws(args.target, args.streams, message, meter)
    else:
        await run_mux(args.target, args.streams, message, meter)
    await cpu
    print(json.dumps({"replies": meter.count, "seconds": args.seconds, "cpu": meter.cpu}), flush=True)


# --- the run -------------------------------------------------------------------------------------


def run_route(
    route: str, args: argparse.Namespace, targets: dict[str, str], servers: dict[str, Server], message: bytes
) -> dict[str, float]:
    per_client = [args.streams // args.clients + (n < args.streams % args.clients) for n in range(args.clients)]
    pids = [str(servers["gateway"].pid), str(servers["backend"].pid)]
    argv = [sys.executable, "-m", "bench.ws_bidi", "--client", route, "--target", targets[route]]
    argv += ["--seconds", str(args.seconds), "--warmup", str(args.warmup), "--message", message.hex()]
    argv += ["--gateway-pid", pids[0], "--backend-pid", pids[1]]
    children = [
        subprocess.Popen([*argv, "--streams", str(streams)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
        for streams in per_client
        if streams
    ]
    results = []
    for child in children:
        try:
            out, _ = child.communicate(timeout=args.warmup + args.seconds + 60)
        except subprocess.TimeoutExpired:
            child.kill()
            raise RuntimeError(f"the {route} client did not finish") from None
        if child.returncode:
            raise RuntimeError(f"the {route} client failed (exit {child.returncode})")
        results.append(json.loads(out.strip().splitlines()[-1]))
    replies = sum(r["replies"] for r in results)
    # Every client samples the servers' CPU over the same window: take the first one's.
    gateway_cpu, backend_cpu = results[0]["cpu"]
    return {
        "rate": replies / args.seconds,
        "replies": replies,
        "gateway_us": gateway_cpu / replies * 1e6 if replies else float("nan"),
        "backend_us": backend_cpu / replies * 1e6 if replies else float("nan"),
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.ws_bidi", description=__doc__.splitlines()[0] if __doc__ else None
    )
    parser.add_argument("--streams", type=int, default=32, help="concurrent bidi calls, all clients together (32)")
    parser.add_argument("--clients", type=int, default=2, help="client processes sharing the calls (2)")
    parser.add_argument("--size", type=int, default=100, help="payload bytes per message (100)")
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per route (5)")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds before measuring (1)")
    parser.add_argument("--rounds", type=int, default=2, help="times every route is run (2)")
    parser.add_argument("--client", choices=ROUTES, help=argparse.SUPPRESS)
    for hidden in ("--target", "--message"):
        parser.add_argument(hidden, help=argparse.SUPPRESS)
    parser.add_argument("--gateway-pid", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--backend-pid", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        uvloop.run(client_main(args))
        return 0
    with tempfile.TemporaryDirectory(prefix="upf-ws-bidi-") as tmp:
        run_dir = Path(tmp)
        gen_dir = run_dir / "gen"
        pb2 = wire.generate(gen_dir)
        message = bytes(pb2.Msg(payload=b"x" * args.size).SerializeToString())
        backend_port, http_port = harness.free_port(), harness.free_port()
        config = run_dir / "gateway.yaml"
        config.write_text(
            f"host: {HOST}\nhttpPort: {http_port}\ngrpcPort: 0\nlogLevel: warning\naccessLog: false\n"
            f'upstreams:\n  {wire.SERVICE}: ["{HOST}:{backend_port}"]\n'
        )
        servers = {
            "backend": Server(
                "backend",
                [
                    sys.executable,
                    "-m",
                    "bench.backend",
                    "--address",
                    f"{HOST}:{backend_port}",
                    "--gen-dir",
                    f"{gen_dir}",
                ],
                [backend_port],
                run_dir / "backend.log",
            ),
            "gateway": Server(
                "gateway",
                [str(Path(sys.executable).parent / "upf"), "gateway", "--config", str(config)],
                [http_port],
                run_dir / "gateway.log",
                ready_url=f"http://{HOST}:{http_port}/readyz",
            ),
        }
        targets = {
            "direct": f"{HOST}:{backend_port}",
            "grpcws": f"ws://{HOST}:{http_port}",
            "mux": f"ws://{HOST}:{http_port}",
        }
        try:
            for server in servers.values():
                server.start(ROOT)
                server.wait_ready()
            rows: dict[str, list[dict[str, float]]] = {route: [] for route in ROUTES}
            for round_ in range(args.rounds):
                for route in ROUTES:
                    log(f"round {round_ + 1}/{args.rounds}: {route}")
                    rows[route].append(run_route(route, args, targets, servers, message))
        finally:
            for server in servers.values():
                server.stop()
    print_table(args, rows)
    return 0


LABELS = {
    "direct": "direct gRPC (HTTP/2 client, no gateway)",
    "grpcws": "gateway grpc-websockets (a socket per call)",
    "mux": "gateway upf-mux.v1 (one socket per client process)",
}


def print_table(args: argparse.Namespace, rows: dict[str, list[dict[str, Any]]]) -> None:
    print(
        f"\nbidi ping-pong, {args.streams} calls over {args.clients} client processes, {args.size} B payload, "
        f"{args.seconds:g} s measured per run, {args.rounds} round(s)\n"
    )
    print("| route | messages/s per round | vs direct | gateway CPU / message | backend CPU / message |")
    print("|---|---|---|---|---|")
    for route in ROUTES:
        runs = rows[route]
        rates = ", ".join(f"{run['rate']:,.0f}" for run in runs)
        ratios = ", ".join(f"{run['rate'] / base['rate']:.2f}x" for run, base in zip(runs, rows["direct"], strict=True))
        gateway = "-" if route == "direct" else ", ".join(f"{run['gateway_us']:.0f} us" for run in runs)
        backend = ", ".join(f"{run['backend_us']:.0f} us" for run in runs)
        print(f"| {LABELS[route]} | {rates} | {ratios} | {gateway} | {backend} |")


if __name__ == "__main__":
    sys.exit(main())
