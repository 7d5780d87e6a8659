"""`python -m bench.slowloris`: legitimate calls while slow clients try to hold every connection.

Starts a gateway (`upf gateway`, 127.0.0.1 only, default `edge` limits unless told otherwise) and
measures keep-alive `GET /healthz` calls from --clients concurrent clients for --duration seconds:
first alone (the baseline), then while an attacker process holds --slow connections that each send
a request line and then one header byte every --drip seconds (slowloris), reconnecting as soon as the
gateway closes one. The attacker spreads its connections over --addresses loopback source addresses
(127.0.0.0/8 is all loopback on Linux), so the per-client cap alone does not stop it: the head
timeout has to. Prints p50 / p99 / failures per phase and how the gateway treated the slow sockets.
Target (issue 18): p99 under attack <= 2 x the baseline's, no failed call.

    python -m bench.slowloris [--slow 1000] [--addresses 8] [--duration 20] [--clients 4]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from bench.harness import HOST, Server, free_port, log

ROOT = Path(__file__).resolve().parents[1]
REQUEST = b"GET /healthz HTTP/1.1\r\nHost: bench\r\n\r\n"


def raise_fd_limit(wanted: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < wanted:
        if hard != resource.RLIM_INFINITY and hard < wanted:
            raise SystemExit(f"the open-file limit is {hard}; {wanted} are needed")
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


# The attacker (a process of its own, so its work does not slow the measuring client) --------------


async def attack(port: int, slow: int, addresses: int, drip: float, seconds: float) -> dict[str, Any]:
    stats = {"opened": 0, "closed_by_gateway": 0, "refused": 0, "held_at_end": 0}
    answers: dict[str, int] = {}
    held = 0
    stop = time.monotonic() + seconds

    async def one(index: int) -> None:
        nonlocal held
        source = f"127.0.{index % addresses // 250}.{index % addresses % 250 + 10}"
        while time.monotonic() < stop:
            try:
                reader, writer = await asyncio.open_connection(HOST, port, local_addr=(source, 0))
            except OSError:
                stats["refused"] += 1
                await asyncio.sleep(drip)
                continue
            stats["opened"] += 1
            held += 1
            try:
                writer.write(b"GET /healthz HTTP/1.1\r\nHost: bench\r\nX-Slow: ")
                while time.monotonic() < stop:
                    await writer.drain()
                    with contextlib.suppress(TimeoutError):
                        data = await asyncio.wait_for(reader.read(4096), drip)
                        status = data.split(b" ", 2)[1].decode() if data.startswith(b"HTTP/") else "closed"
                        answers[status] = answers.get(status, 0) + 1
                        stats["closed_by_gateway"] += 1
                        break
                    writer.write(b"a")
            except OSError:
                stats["closed_by_gateway"] += 1
            finally:
                held -= 1
                writer.close()

    async def count_held() -> None:
        await asyncio.sleep(max(seconds - 0.5, 0))
        stats["held_at_end"] = held

    await asyncio.gather(*(one(i) for i in range(slow)), count_held())
    return {**stats, "answers": answers}


# The measuring client ----------------------------------------------------------------------------


async def measure(port: int, clients: int, seconds: float) -> dict[str, Any]:
    latencies: list[float] = []
    failures = 0
    stop = time.monotonic() + seconds

    async def client() -> None:
        nonlocal failures
        reader = writer = None
        while time.monotonic() < stop:
            started = time.perf_counter()
            try:
                if writer is None:
                    reader, writer = await asyncio.open_connection(HOST, port)
                assert reader is not None
                writer.write(REQUEST)
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
                lines = head.lower().split(b"\r\n")
                length = next(int(line.split(b":")[1]) for line in lines if line.startswith(b"content-length"))
                await reader.readexactly(length)
                if not head.startswith(b"HTTP/1.1 200"):
                    raise OSError(head.split(b"\r\n", 1)[0].decode())
                latencies.append(time.perf_counter() - started)
            except (OSError, asyncio.IncompleteReadError, TimeoutError, StopIteration):
                failures += 1
                if writer is not None:
                    writer.close()
                reader = writer = None
        if writer is not None:
            writer.close()

    await asyncio.gather(*(client() for _ in range(clients)))
    latencies.sort()

    def pct(q: float) -> float:
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000 if latencies else float("nan")

    return {"calls": len(latencies), "failures": failures, "p50_ms": pct(0.50), "p99_ms": pct(0.99)}


# The run -----------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    raise_fd_limit(args.slow + 1024)
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="upf-slowloris-") as tmp:
        work = Path(tmp)
        config = {
            "httpPort": port,
            "grpcPort": 0,
            "logLevel": "error",
            "accessLog": False,
            "shell": {"enabled": False},
            "edge": json.loads(args.edge),
        }
        (work / "gateway.yaml").write_text(yaml.safe_dump(config))
        upf = str(Path(sys.executable).parent / "upf")
        gateway = Server(
            "gateway",
            [upf, "gateway", "--config", str(work / "gateway.yaml")],
            [port],
            work / "gateway.log",
            ready_url=f"http://{HOST}:{port}/readyz",
        )
        attacker: subprocess.Popen[bytes] | None = None
        try:
            gateway.start(ROOT)
            gateway.wait_ready(60)
            asyncio.run(measure(port, args.clients, 2))  # warm-up
            baseline = asyncio.run(measure(port, args.clients, args.duration))
            log("baseline:", baseline)
            attack_seconds = args.duration + args.ramp
            attacker = subprocess.Popen(
                [sys.executable, "-m", "bench.slowloris", "--attacker", str(port), "--slow", str(args.slow),
                 "--addresses", str(args.addresses), "--drip", str(args.drip), "--duration", str(attack_seconds)],
                cwd=ROOT, stdout=subprocess.PIPE,
            )  # fmt: skip
            time.sleep(args.ramp)  # let the slow connections pile up before measuring
            attacked = asyncio.run(measure(port, args.clients, args.duration))
            log("under attack:", attacked)
            out, _ = attacker.communicate(timeout=attack_seconds + 60)
            attack_stats = json.loads(out)
        finally:
            if attacker is not None and attacker.poll() is None:
                attacker.kill()
                attacker.wait()
            gateway.stop()
    ratio = attacked["p99_ms"] / baseline["p99_ms"]
    print("| phase | calls | failed | p50 ms | p99 ms |\n| --- | ---: | ---: | ---: | ---: |")
    for name, phase in (("baseline", baseline), (f"{args.slow} slow connections", attacked)):
        print(f"| {name} | {phase['calls']} | {phase['failures']} | {phase['p50_ms']:.2f} | {phase['p99_ms']:.2f} |")
    print(f"\np99 under attack / baseline: {ratio:.2f} (target <= 2); attacker: {json.dumps(attack_stats)}")
    return 0 if ratio <= 2 and attacked["failures"] == 0 else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slow", type=int, default=1000, help="slow connections the attacker keeps open")
    parser.add_argument("--addresses", type=int, default=8, help="loopback source addresses they come from")
    parser.add_argument("--drip", type=float, default=2.0, help="seconds between a slow connection's header bytes")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds each phase is measured")
    parser.add_argument("--ramp", type=float, default=5.0, help="seconds the attack runs before it is measured")
    parser.add_argument("--clients", type=int, default=4, help="concurrent legitimate clients (keep-alive)")
    parser.add_argument("--edge", default="{}", help="edge settings for the gateway, as JSON: '{\"headerTimeout\": 5}'")
    parser.add_argument("--attacker", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.attacker is not None:
        raise_fd_limit(args.slow + 256)
        print(json.dumps(asyncio.run(attack(args.attacker, args.slow, args.addresses, args.drip, args.duration))))
        return
    raise SystemExit(run(args))


if __name__ == "__main__":
    main()
