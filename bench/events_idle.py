"""`python -m bench.events_idle --sockets 1000 --bus nats`: memory per idle /api/events socket.

Starts a gateway (`upf gateway`, 127.0.0.1 only, events on, the chosen bus), opens N sockets on
/api/events from this one asyncio process, each subscribed to a topic of its own (`bench.<n>`, so
each has its own bus subscription: with NATS, a JetStream consumer per socket), and reads the
gateway's RSS (VmRSS) before and after, then again after holding them for --hold seconds with
heartbeats every 2 s. One event is then published to every socket's topic to check they all still
deliver. With `--bus nats`, a stream of its own on the NATS at --nats-url, deleted afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import nats
import yaml
from websockets.asyncio.client import ClientConnection, connect

from bench.harness import HOST, Server, free_port, log
from bench.ws_idle import BATCH, close_all, raise_fd_limit, rss_kib

ROOT = Path(__file__).resolve().parents[1]


async def open_sockets(port: int, count: int) -> list[ClientConnection]:
    opened: list[ClientConnection] = []
    for start in range(0, count, BATCH):
        batch = [
            connect(f"ws://{HOST}:{port}/api/events?topics=bench.{n}", proxy=None, ping_interval=None, open_timeout=60)
            for n in range(start, min(start + BATCH, count))
        ]
        opened += await asyncio.gather(*batch)
    # Each socket's first message: its subscription is in place.
    replies = await asyncio.gather(*(ws.recv() for ws in opened))
    assert all(json.loads(reply)["type"] == "subscribed" for reply in replies), replies[:3]
    return opened


async def first_event(ws: ClientConnection) -> bool:
    while True:
        message = json.loads(await ws.recv())
        if message["type"] == "event":
            return True


async def measure(server: Server, port: int, count: int, hold: float) -> int:
    await close_all(await open_sockets(port, 20))  # warm-up
    await asyncio.sleep(1.0)
    before = rss_kib(server.pid)
    started = time.monotonic()
    sockets = await open_sockets(port, count)
    opened_in = time.monotonic() - started
    await asyncio.sleep(1.0)
    after = rss_kib(server.pid)
    await asyncio.sleep(hold)
    held = rss_kib(server.pid)
    async with httpx.AsyncClient(timeout=30) as http:
        for n in range(count):
            assert (await http.post(f"http://{HOST}:{port}/api/events/bench.{n}", content=b"x")).status_code == 200
    delivered = sum(await asyncio.wait_for(asyncio.gather(*(first_event(ws) for ws in sockets)), 60))
    await close_all(sockets)
    print(f"sockets:                {count}, one subscription each (opened and subscribed in {opened_in:.2f} s)")
    print(f"gateway RSS before:     {before / 1024:.1f} MiB")
    print(f"gateway RSS with them:  {after / 1024:.1f} MiB; after {hold:.0f} s held: {held / 1024:.1f} MiB")
    print(
        f"per idle socket:        {(after - before) / count:.1f} KiB ({(held - before) / count:.1f} KiB after the hold)"
    )
    print(f"delivered after hold:   {delivered}/{count}")
    return 0 if delivered == count else 1


async def delete_stream(url: str, name: str) -> None:
    nc = await nats.connect(url, connect_timeout=2, max_reconnect_attempts=1)
    try:
        await nc.jetstream().delete_stream(name)
    finally:
        await nc.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--sockets", type=int, default=1000)
    parser.add_argument("--hold", type=float, default=10.0, help="seconds to hold the sockets open")
    parser.add_argument("--bus", choices=["memory", "nats"], default="memory")
    parser.add_argument("--nats-url", default="nats://127.0.0.1:4222")
    args = parser.parse_args()
    raise_fd_limit(args.sockets)
    port = free_port()
    tag = uuid.uuid4().hex[:10]
    stream = f"UPF_BENCH_{tag}"
    events = {"enabled": True, "bus": args.bus, "heartbeatInterval": 2, "publish": True}
    if args.bus == "nats":
        events |= {"natsUrl": args.nats_url, "stream": stream, "subjectPrefix": f"upfbench.{tag}", "storage": "memory"}
    with tempfile.TemporaryDirectory(prefix="upf-events-idle-") as tmp:
        config = Path(tmp) / "gateway.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "host": HOST,
                    "httpPort": port,
                    "grpcPort": 0,
                    "accessLog": False,
                    "logLevel": "warning",
                    # Every socket comes from this one address: per-client caps would stop it at 64.
                    "edge": {"unlimitedClients": ["127.0.0.1/32"]},
                    "websocket": {"pingInterval": 20, "drainGrace": 1},
                    "events": events,
                }
            )
        )
        upf = str(Path(sys.executable).parent / "upf")
        server = Server(
            "gateway",
            [upf, "gateway", "--config", str(config)],
            [port],
            Path(tmp) / "gateway.log",
            ready_url=f"http://{HOST}:{port}/readyz",
        )
        try:
            server.start(ROOT)
            server.wait_ready()
            return asyncio.run(asyncio.wait_for(measure(server, port, args.sockets, args.hold), args.hold + 300))
        finally:
            server.stop()
            log(f"gateway stopped (exit {server.popen.returncode if server.popen else None})")
            if args.bus == "nats":
                asyncio.run(delete_stream(args.nats_url, stream))


if __name__ == "__main__":
    sys.exit(main())
