"""`python -m bench.ws_idle --sockets 1000`: memory per idle grpc-websockets socket in the gateway.

Starts a gateway (`upf gateway`, 127.0.0.1 only, no upstream: an idle socket is one that has
upgraded with the grpc-websockets subprotocol and sent nothing, so it never reaches an upstream),
opens N sockets from this one asyncio process with the `websockets` client, and reads the gateway's
RSS (VmRSS in /proc/PID/status) before and after. Then it holds them for --hold seconds with the
gateway's pings on (every 2 s, so several rounds happen) and checks that every socket is still
open, closes them, and stops the gateway by its PID. Target (issue 6): < 50 KiB per idle socket.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import sys
import tempfile
import time
from pathlib import Path

import yaml
from websockets.asyncio.client import ClientConnection, connect
from websockets.protocol import State
from websockets.typing import Subprotocol

from bench.harness import HOST, Server, free_port, log

ROOT = Path(__file__).resolve().parents[1]
PATH = "/accept.v1.Probe/Bidi"  # any gRPC-shaped path: idle sockets never pick an upstream
BATCH = 100  # connections opened at a time, well inside uvicorn's listen backlog
TARGET_KIB = 50


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for PID {pid}")


def raise_fd_limit(sockets: int) -> None:
    # This process holds N client sockets and the gateway (which inherits the limit) N server ones.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = sockets + 256
    if soft < wanted:
        if hard != resource.RLIM_INFINITY and hard < wanted:
            raise SystemExit(f"the open-file limit is {hard}; {wanted} are needed for {sockets} sockets")
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


async def open_sockets(url: str, count: int) -> list[ClientConnection]:
    opened: list[ClientConnection] = []
    for start in range(0, count, BATCH):
        batch = [
            # Compression offered, as browsers do (the gateway declines it). Client pings off: the
            # gateway's pings are what keeps an idle socket alive; the client library answers them.
            connect(url, subprotocols=[Subprotocol("grpc-websockets")], proxy=None, ping_interval=None, open_timeout=30)
            for _ in range(min(BATCH, count - start))
        ]
        opened += await asyncio.gather(*batch)
    return opened


async def close_all(sockets: list[ClientConnection]) -> None:
    await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)


async def measure(server: Server, port: int, count: int, hold: float) -> int:
    url = f"ws://{HOST}:{port}{PATH}"
    # Warm-up: the first sockets import and allocate what every later one reuses.
    await close_all(await open_sockets(url, 20))
    await asyncio.sleep(1.0)
    before = rss_kib(server.pid)
    started = time.monotonic()
    sockets = await open_sockets(url, count)
    opened_in = time.monotonic() - started
    await asyncio.sleep(1.0)
    after = rss_kib(server.pid)
    await asyncio.sleep(hold)
    held = rss_kib(server.pid)
    still_open = sum(ws.state is State.OPEN for ws in sockets)
    await close_all(sockets)
    per_socket = (after - before) / count
    per_socket_held = (held - before) / count
    print(f"sockets:                {count} (opened in {opened_in:.2f} s)")
    print(f"gateway RSS before:     {before / 1024:.1f} MiB")
    print(f"gateway RSS with them:  {after / 1024:.1f} MiB; after {hold:.0f} s held: {held / 1024:.1f} MiB")
    print(f"per idle socket:        {per_socket:.1f} KiB ({per_socket_held:.1f} KiB after the hold)")
    print(f"still open after hold:  {still_open}/{count} (gateway pings every 2 s)")
    ok = still_open == count and max(per_socket, per_socket_held) < TARGET_KIB
    print(f"target < {TARGET_KIB} KiB per socket, all held: {'met' if ok else 'NOT met'}")
    return 0 if ok else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--sockets", type=int, default=1000)
    parser.add_argument("--hold", type=float, default=10.0, help="seconds to hold the sockets open")
    args = parser.parse_args()
    raise_fd_limit(args.sockets)
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="upf-ws-idle-") as tmp:
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
                    "websocket": {"pingInterval": 2, "pingTimeout": 5, "drainGrace": 1},
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
            # Bounded: opening, the hold and closing; a stuck run ends here, not never.
            return asyncio.run(asyncio.wait_for(measure(server, port, args.sockets, args.hold), args.hold + 120))
        finally:
            server.stop()
            log(f"gateway stopped (exit {server.popen.returncode if server.popen else None})")


if __name__ == "__main__":
    sys.exit(main())
