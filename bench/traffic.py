"""`python -m bench.traffic`: the whole gateway with traffic control off and on, against direct gRPC.

One backend (bench.backend) and five gateways in front of it, all started at once (an idle server
costs no measurable CPU), on 127.0.0.1 only:

    off      circuitBreaker.enabled false, no rate limiting, retries off: the bare proxy
    breakers circuit breakers (per replica) and retries on, no rate limiting
    memory   breakers + rateLimiting on the in-process store
    redis    breakers + rateLimiting on the local Redis (127.0.0.1:6379, a key prefix of the run's own,
             deleted at the end), through the pipelined RESP client
    lease    the same with rateLimiting.leaseTokens 16: a round trip per 17 calls of a client

The limits are set far above the offered load (nothing is refused): the rows measure what deciding
costs, not refusals. Each round runs, for the 100 B unary echo: direct gRPC (h2load -c32 -m1, the
baseline), then for each gateway its gRPC-Web port (wrk -c32, the bench's G row) and its native
gRPC port (h2load -c32 -m1, N2). Ratios are to the direct row of the same round. Gateway CPU is
utime+stime of the gateway process over the measured run, per call. Every process is stopped by PID.

    .venv/bin/python -m bench.traffic                  # 3 rounds x 3 s (+1 s warm-up): about 2.5 minutes
    .venv/bin/python -m bench.traffic --quick          # 1 round x 3 s: about 1 minute
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import redis

from bench import harness, wire
from bench.harness import HOST, Server, log

ROOT = Path(__file__).resolve().parents[1]
LUA = ROOT / "bench" / "grpcweb.lua"
REDIS_URL = "redis://127.0.0.1:6379/0"
HUGE = {"requestsPerSecond": 1e9, "burstSize": 1_000_000_000}
GATEWAYS: dict[str, str] = {
    "off": "circuitBreaker: {enabled: false}\nretries: {enabled: false}\n",
    "breakers": "",
    "memory": "rateLimiting: {enabled: true, store: memory, requestsPerSecond: %(rps)g, burstSize: %(burst)d}\n",
    "redis": (
        "rateLimiting: {enabled: true, store: redis, redisUrl: '%(url)s', keyPrefix: '%(prefix)s',"
        " requestsPerSecond: %(rps)g, burstSize: %(burst)d}\n"
    ),
    "lease": (
        "rateLimiting: {enabled: true, store: redis, redisUrl: '%(url)s', keyPrefix: '%(prefix)s:lease',"
        " requestsPerSecond: %(rps)g, burstSize: %(burst)d, leaseTokens: 16}\n"
    ),
}
LABELS = {
    "off": "breakers off, limits off",
    "breakers": "breakers + retries on, limits off",
    "memory": "breakers on, limits on (memory)",
    "redis": "breakers on, limits on (Redis)",
    "lease": "breakers on, limits on (Redis, leaseTokens 16)",
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.traffic", description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=3.0, help="measured seconds per run (3)")
    parser.add_argument("--warmup", type=float, default=1.0, help="discarded warm-up seconds before each run (1)")
    parser.add_argument("--rounds", type=int, default=3, help="times every row is run (3)")
    parser.add_argument("--quick", action="store_true", help="1 round of 3 s runs")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.duration = 1, 3.0
    return args


def gateway_config(name: str, backend: str, http_port: int, grpc_port: int, prefix: str) -> str:
    extra = GATEWAYS[name] % {
        "url": REDIS_URL,
        "prefix": prefix,
        "rps": HUGE["requestsPerSecond"],
        "burst": HUGE["burstSize"],
    }
    return (
        f"host: {HOST}\nhttpPort: {http_port}\ngrpcPort: {grpc_port}\nlogLevel: warning\naccessLog: false\n"
        f'upstreams:\n  {wire.SERVICE}: ["{backend}"]\n{extra}'
    )


def decisions(url: str) -> float:
    """Rate-limit decisions the gateway counted (from its /metrics): proof that the limiter ran."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=5) as response:
        text = response.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith("upf_ratelimit_decisions_total{")
    )


def run_row(
    tool: str, url: str, body: Path, servers: list[Server], args: argparse.Namespace, log_file: Path
) -> dict[str, Any]:
    if tool == "wrk":
        # The warm-up checks every answer: one data frame of the echoed message, grpc-status 0.
        _, warm = harness.wrk(url, body, conns=32, seconds=args.warmup, script=LUA, expect=(1, args.reply_len))
        if warm.bad:
            raise RuntimeError(f"{url}: {warm.bad} bad answers in the warm-up, first: {warm.first_bad}")
    else:
        harness.h2load(url, body, conns=32, streams=1, seconds=args.warmup, log_file=None)
    pids = {server.name: server.pids() for server in servers}
    before = {name: harness.cpu_seconds(p) for name, p in pids.items()}
    machine_before, wall_before = harness.machine_busy_seconds(), time.monotonic()
    if tool == "wrk":
        run, stats = harness.wrk(url, body, conns=32, seconds=args.duration, script=LUA)
    else:
        run, maybe = harness.h2load(url, body, conns=32, streams=1, seconds=args.duration, log_file=log_file)
        assert maybe is not None
        stats = maybe
    calls = max(stats.requests, 1)
    used = {name: harness.cpu_seconds(p) - before[name] for name, p in pids.items()}
    cpu = {name: seconds / calls * 1e6 for name, seconds in used.items()}
    machine = harness.machine_busy_seconds() - machine_before
    wall = time.monotonic() - wall_before
    return {
        # CPU used meanwhile by everything else on the machine, in cores: a disturbed run shows here.
        "other_cores": max(0.0, machine - sum(used.values()) - run.cpu_s) / wall,
        "calls_per_s": stats.requests / stats.seconds,
        "p50": stats.p50_ms,
        "p99": stats.p99_ms,
        "errors": stats.errors,
        "cpu": cpu,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for tool in ("wrk", "h2load"):
        if shutil.which(tool) is None:
            sys.exit(f"bench.traffic: {tool} not found on PATH")
    run_dir = ROOT / "bench" / "results" / f"traffic-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir.mkdir(parents=True, exist_ok=True)
    prefix = f"upf:bench:{uuid.uuid4().hex[:10]}"
    store = redis.Redis.from_url(REDIS_URL, socket_timeout=2)
    store.ping()
    gen_dir = Path(tempfile.mkdtemp(prefix="upf-bench-gen-"))
    servers: dict[str, Server] = {}
    rows: list[tuple[int, str, str, dict[str, Any]]] = []
    try:
        pb2 = wire.generate(gen_dir)
        body = run_dir / "body-unary-100.bin"
        message = pb2.Msg(payload=b"x" * 100).SerializeToString()
        body.write_bytes(wire.frame(message))
        args.reply_len = len(message)
        backend_port = harness.free_port()
        backend = f"{HOST}:{backend_port}"
        servers["backend"] = Server(
            "backend",
            [sys.executable, "-m", "bench.backend", "--address", backend, "--gen-dir", str(gen_dir)],
            [backend_port],
            run_dir / "server-backend.log",
        )
        upf = str(Path(sys.executable).parent / "upf")
        urls: dict[str, tuple[str, str]] = {}
        for name in GATEWAYS:
            http_port, grpc_port = harness.free_port(), harness.free_port()
            config = run_dir / f"gateway-{name}.yaml"
            config.write_text(gateway_config(name, backend, http_port, grpc_port, prefix))
            servers[name] = Server(
                name,
                [upf, "gateway", "--config", str(config)],
                [http_port, grpc_port],
                run_dir / f"server-{name}.log",
                ready_url=f"http://{HOST}:{http_port}/readyz",
            )
            urls[name] = (f"http://{HOST}:{http_port}", f"http://{HOST}:{grpc_port}")
        for server in servers.values():
            server.start(ROOT)
        for server in servers.values():
            server.wait_ready()
        before, started = harness.machine_busy_seconds(), time.monotonic()
        time.sleep(2.0)
        args.idle_load = (harness.machine_busy_seconds() - before) / (time.monotonic() - started)
        log(f"== {len(GATEWAYS)} gateways and the backend up (idle); machine load {args.idle_load:.2f} cores")
        for rnd in range(1, args.rounds + 1):
            direct = run_row(
                "h2load", f"http://{backend}{wire.UNARY}", body, [servers["backend"]], args, run_dir / "a.log"
            )
            rows.append((rnd, "direct", "A2 h2load", direct))
            log(f"  r{rnd} direct: {direct['calls_per_s']:,.0f} calls/s")
            # Every other round in reverse, so that a drift of the machine's load does not favour one gateway.
            for name in list(GATEWAYS) if rnd % 2 else list(reversed(GATEWAYS)):
                web, native = urls[name]
                for kind, tool, url in (("G wrk gRPC-Web", "wrk", web), ("N2 h2load native", "h2load", native)):
                    row = run_row(
                        tool, url + wire.UNARY, body, [servers[name], servers["backend"]], args, run_dir / "n.log"
                    )
                    rows.append((rnd, name, kind, row))
                    log(
                        f"  r{rnd} {name:<8} {kind:<17} {row['calls_per_s']:>8,.0f} calls/s  "
                        f"gateway {row['cpu'][name]:.0f} us/call  errors {row['errors']}"
                    )
        counted = {name: decisions(urls[name][0]) for name in ("memory", "redis", "lease")}
    finally:
        for server in servers.values():
            server.stop()
        shutil.rmtree(gen_dir, ignore_errors=True)
        with contextlib.suppress(redis.RedisError):
            keys = list(store.scan_iter(match=f"{prefix}:*", count=1000))
            if keys:
                store.delete(*keys)
        store.close()
    print(render(rows, args, counted))
    return 0


def render(
    rows: list[tuple[int, str, str, dict[str, Any]]], args: argparse.Namespace, counted: dict[str, float]
) -> str:
    direct = {rnd: row["calls_per_s"] for rnd, name, _, row in rows if name == "direct"}
    lines = [
        f"bench.traffic: {args.rounds} round(s) x {args.duration:g} s (+{args.warmup:g} s warm-up), 100 B unary, "
        f"32 in flight; {os.cpu_count()} cores shared by every process",
        "",
        f"Machine load with every server idle, before the runs: {args.idle_load:.2f} cores.",
        "",
        "| gateway | row | calls/s (rounds) | vs direct (median) | p50 ms | p99 ms | gateway CPU us/call (median) "
        "| errors | other load, cores |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    order = ["direct", *GATEWAYS]
    kinds = sorted({kind for _, _, kind, _ in rows})
    for name in order:
        for kind in kinds:
            mine = [(rnd, row) for rnd, n, k, row in rows if n == name and k == kind]
            if not mine:
                continue
            rates = " / ".join(f"{row['calls_per_s']:,.0f}" for _, row in mine)
            ratios = ""
            if name != "direct":
                each = [row["calls_per_s"] / direct[rnd] for rnd, row in mine]
                ratios = " / ".join(f"{r:.2f}" for r in each) + f" ({statistics.median(each):.2f})"
            p50 = statistics.median(row["p50"] for _, row in mine)
            p99 = statistics.median(row["p99"] for _, row in mine)
            cpu = statistics.median(row["cpu"]["backend" if name == "direct" else name] for _, row in mine)
            other = " / ".join(f"{row['other_cores']:.2f}" for _, row in mine)
            errors = sum(row["errors"] for _, row in mine)
            label = LABELS.get(name, "direct gRPC to the backend")
            lines.append(
                f"| {label} | {kind} | {rates} | {ratios} | {p50:.2f} | {p99:.2f} | "
                f"{cpu:.0f}{'' if name != 'direct' else ' (backend only)'} | {errors} | {other} |"
            )
    lines.append("")
    lines.append(
        "Limiter decisions counted by the gateways (/metrics): "
        + ", ".join(f"{name} {value:,.0f}" for name, value in counted.items())
    )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
