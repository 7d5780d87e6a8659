"""ICache through each cache plugin against the same backend driven directly from Python, in one run.

    python -m bench.cache [--seconds 2] [--concurrency 16] [--value-size 100] [--only redis,memcached,memory]

For each backend, `upf plugin cache-<backend>` runs as its own process, registered with a registry
whose identity token the bench client sends, as a plugin's calls do (it serves
while it retries registering), and this process drives it through the SDK's CacheClient over one
grpc.aio channel; then the same operations go straight to the backend: redis-py asyncio for Redis
(the shared server on 6379, under a key prefix of this run's own, deleted at the end), emcache for a
memcached this run starts on a free port, and the MemoryBackend object itself for memory. `concurrency`
tasks run each operation (Get of one of 1000 keys holding `value-size` bytes, Set of such a key,
Increment of one of 100 counters) for `seconds`, after a warm-up that is not counted. Latencies are
per call, as the caller sees them; `plugin CPU` is the plugin process's user + system time per call.

The `gRPC floor` line is `upf plugin demo`'s Echo.Say with the same payload, measured the same way:
what any Python gRPC plugin costs before it does anything, so that plugin / floor says how much the
cache itself adds.

Targets (issue 12, information only): every plugin >= 0.5x its direct driver's ops/s for single ops.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import os
import random
import shutil
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import emcache
import redis.asyncio
from upf.demo.v1 import demo_pb2, demo_pb2_grpc

from bench.harness import Server, cpu_seconds, free_port, log
from bench.registry import BenchRegistry, bench_registry
from common.rpc.channel import Channel
from plugins.cache.backends.memory import MemoryBackend
from plugins.sdk.cache import CacheClient
from plugins.sdk.identity import caller_token_hook

WARM_UP = 0.3  # seconds of each run not counted: connections opened, scripts cached
KEYS = 1000
COUNTERS = 100
REDIS_URL = "redis://127.0.0.1:6379/0"
ROOT = Path(__file__).resolve().parents[1]

Op = Callable[[int], Awaitable[Any]]


@dataclass(frozen=True)
class Run:
    backend: str
    op: str
    target: str  # plugin or direct
    calls: int
    rate: float  # calls per second
    p50_ms: float
    p99_ms: float
    plugin_cpu_us: float | None  # per call, plugin runs only


async def drive(op: Op, concurrency: int, seconds: float) -> tuple[int, float, list[float]]:
    """Calls made, wall seconds and latencies (s) of `concurrency` tasks calling `op` for `seconds`."""
    latencies: list[float] = []
    counting = False
    stop = False

    async def worker(seed: int) -> None:
        rng = random.Random(seed)
        while not stop:
            started = time.perf_counter()
            await op(rng.randrange(KEYS))
            if counting:
                latencies.append(time.perf_counter() - started)

    tasks = [asyncio.create_task(worker(n)) for n in range(concurrency)]
    await asyncio.sleep(WARM_UP)
    counting, began = True, time.perf_counter()
    await asyncio.sleep(seconds)
    counting, elapsed = False, time.perf_counter() - began
    stop = True
    await asyncio.gather(*tasks)
    return len(latencies), elapsed, latencies


def _ops(get: Op, set_: Op, incr: Op) -> dict[str, Op]:
    return {"Get": get, "Set": set_, "Increment": incr}


def plugin_ops(client: CacheClient, value: bytes) -> dict[str, Op]:
    return _ops(
        lambda i: client.get(f"k{i}"),
        lambda i: client.set(f"k{i}", value),
        lambda i: client.incr(f"c{i % COUNTERS}"),
    )


def redis_ops(client: redis.asyncio.Redis, prefix: str, value: bytes) -> dict[str, Op]:
    return _ops(
        lambda i: client.get(f"{prefix}:k{i}"),
        lambda i: client.set(f"{prefix}:k{i}", value),
        lambda i: client.incrby(f"{prefix}:c{i % COUNTERS}", 1),
    )


def memcached_ops(client: emcache.Client, prefix: str, value: bytes) -> dict[str, Op]:
    async def incr(i: int) -> Any:
        key = f"{prefix}:c{i % COUNTERS}".encode()
        try:
            return await client.increment(key, 1)
        except emcache.NotFoundCommandError:
            with contextlib.suppress(emcache.NotStoredStorageCommandError):
                await client.add(key, b"0")
            return await client.increment(key, 1)

    return _ops(
        lambda i: client.get(f"{prefix}:k{i}".encode()),
        lambda i: client.set(f"{prefix}:k{i}".encode(), value),
        incr,
    )


def memory_ops(backend: MemoryBackend, value: bytes) -> dict[str, Op]:
    def yielding(call: Op) -> Op:
        # The memory backend never waits, so without this a worker would never let the others (or the
        # timer that ends the run) have the event loop.
        async def op(i: int) -> Any:
            result = await call(i)
            await asyncio.sleep(0)
            return result

        return op

    return _ops(
        yielding(lambda i: backend.get("bench", f"k{i}")),
        yielding(lambda i: backend.set("bench", f"k{i}", value, 0, nx=False, xx=False)),
        yielding(lambda i: backend.increment("bench", f"c{i % COUNTERS}", 1)),
    )


def summarise(backend: str, op: str, target: str, measured: tuple[int, float, list[float]], cpu: float | None) -> Run:
    calls, elapsed, latencies = measured
    quantiles = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [0.0] * 99
    return Run(
        backend,
        op,
        target,
        calls,
        calls / elapsed,
        quantiles[49] * 1000,
        quantiles[98] * 1000,
        None if cpu is None else cpu / max(calls, 1) * 1e6,
    )


def start_plugin(
    backend: str, run_dir: Path, prefix: str, memcached: str, registry: BenchRegistry
) -> tuple[Server, str]:
    port = free_port()
    upf = str(Path(sys.executable).parent / "upf")
    argv = [upf, "plugin", f"cache-{backend}", "--port", str(port), "--registry", registry.target]
    argv += ["--key-prefix", prefix, "--redis-url", REDIS_URL, "--memcached", memcached, "--log-level", "error"]
    server = Server(f"cache-{backend}", argv, [port], run_dir / f"cache-{backend}.log")
    credential = registry.credential(f"cache-{backend}")
    server.start(ROOT, env={"UPF_CACHE_TIMEOUT": "5", "UPF_REGISTRATION_CREDENTIAL": credential})
    server.wait_ready()
    return server, f"127.0.0.1:{port}"


def start_memcached(run_dir: Path) -> tuple[Server, str]:
    binary = shutil.which("memcached")
    if binary is None:
        raise SystemExit("bench.cache: memcached is not installed (apt-get install memcached)")
    port = free_port()
    argv = [binary, "-l", "127.0.0.1", "-p", str(port), "-U", "0", "-I", "8m", "-m", "256"]
    if os.geteuid() == 0:
        argv += ["-u", getpass.getuser()]
    server = Server("memcached", argv, [port], run_dir / "memcached.log")
    server.start(ROOT)
    server.wait_ready()
    return server, f"127.0.0.1:{port}"


async def measure_backend(
    backend: str, args: argparse.Namespace, run_dir: Path, memcached: str, registry: BenchRegistry
) -> list[Run]:
    prefix = f"bench:cache:{uuid.uuid4().hex[:8]}"
    value = os.urandom(args.value_size)
    runs: list[Run] = []
    plugin, endpoint = start_plugin(backend, run_dir, prefix, memcached, registry)
    token = registry.client_token()
    direct_redis: redis.asyncio.Redis | None = None
    direct_mc: emcache.Client | None = None
    try:
        # As a plugin's dependency channel (plugins/sdk/resolve.py): every call carries the caller's identity token.
        async with Channel(endpoint, metadata_hooks=[caller_token_hook(lambda: token)]) as channel:
            client = CacheClient(channel)
            await client.mset({f"k{i}": value for i in range(KEYS)})
            for op, call in plugin_ops(client, value).items():
                before = cpu_seconds(plugin.pids())
                measured = await drive(call, args.concurrency, args.seconds)
                # The warm-up's calls are in the CPU too: scale to the counted share of the run.
                cpu = (cpu_seconds(plugin.pids()) - before) * args.seconds / (args.seconds + WARM_UP)
                runs.append(summarise(backend, op, "plugin", measured, cpu))
        if backend == "redis":
            direct_redis = redis.asyncio.Redis.from_url(REDIS_URL, max_connections=args.concurrency * 2)
            await direct_redis.mset({f"{prefix}:direct:k{i}": value for i in range(KEYS)})
            direct = redis_ops(direct_redis, f"{prefix}:direct", value)
        elif backend == "memcached":
            host, _, port = memcached.rpartition(":")
            direct_mc = await emcache.create_client(
                [emcache.MemcachedHostAddress(host, int(port))], timeout=5, max_connections=16
            )
            for i in range(KEYS):
                await direct_mc.set(f"{prefix}:direct:k{i}".encode(), value)
            direct = memcached_ops(direct_mc, f"{prefix}:direct", value)
        else:
            memory = MemoryBackend()
            await memory.mset("bench", {f"k{i}": value for i in range(KEYS)}, 0)
            direct = memory_ops(memory, value)
        for op, call in direct.items():
            runs.append(summarise(backend, op, "direct", await drive(call, args.concurrency, args.seconds), None))
    finally:
        plugin.stop()
        if direct_redis is not None:
            keys = [k async for k in direct_redis.scan_iter(match=f"{prefix}:*", count=1000)]
            if keys:
                await direct_redis.unlink(*keys)
            await direct_redis.aclose()
        if direct_mc is not None:
            await direct_mc.close()
    return runs


def table(runs: list[Run], args: argparse.Namespace) -> str:
    by = {(r.backend, r.op, r.target): r for r in runs}
    lines = [
        f"{args.concurrency} in flight, {args.seconds} s per run, {args.value_size} B values, one client process",
        "",
        "| backend | op | direct ops/s | plugin ops/s | plugin / direct | direct p50 / p99 ms | plugin p50 / p99 ms "
        "| plugin CPU us/call |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    floor = by.get(("gRPC floor", "Echo.Say", "plugin"))
    for backend in dict.fromkeys(r.backend for r in runs if r.backend != "gRPC floor"):
        for op in ("Get", "Set", "Increment"):
            d, p = by[(backend, op, "direct")], by[(backend, op, "plugin")]
            ratio = p.rate / d.rate
            verdict = "met" if ratio >= 0.5 else "MISSED"
            lines.append(
                f"| {backend} | {op} | {d.rate:,.0f} | {p.rate:,.0f} | {ratio:.2f} ({verdict}) "
                f"| {d.p50_ms:.2f} / {d.p99_ms:.2f} | {p.p50_ms:.2f} / {p.p99_ms:.2f} | {p.plugin_cpu_us or 0:.0f} |"
            )
    if floor is not None:
        lines.append(
            f"| gRPC floor | Echo.Say (demo) | | {floor.rate:,.0f} | | | {floor.p50_ms:.2f} / {floor.p99_ms:.2f} "
            f"| {floor.plugin_cpu_us or 0:.0f} |"
        )
    return "\n".join(lines)


async def measure_floor(args: argparse.Namespace, run_dir: Path) -> Run:
    port = free_port()
    upf = str(Path(sys.executable).parent / "upf")
    argv = [upf, "plugin", "demo", "--port", str(port), "--registry", f"127.0.0.1:{free_port()}"]
    server = Server("demo", [*argv, "--log-level", "error"], [port], run_dir / "demo.log")
    server.start(ROOT)
    server.wait_ready()
    try:
        async with Channel(f"127.0.0.1:{port}") as channel:
            stub, request = demo_pb2_grpc.EchoStub(channel), demo_pb2.SayRequest(text="x" * args.value_size)
            before = cpu_seconds(server.pids())
            measured = await drive(lambda i: stub.Say(request, timeout=10), args.concurrency, args.seconds)
            cpu = (cpu_seconds(server.pids()) - before) * args.seconds / (args.seconds + WARM_UP)
            return summarise("gRPC floor", "Echo.Say", "plugin", measured, cpu)
    finally:
        server.stop()


async def measure(args: argparse.Namespace, run_dir: Path) -> list[Run]:
    log("bench.cache: gRPC floor (upf plugin demo)")
    runs: list[Run] = [await measure_floor(args, run_dir)]
    memcached_server: Server | None = None
    memcached = "127.0.0.1:11211"
    try:
        if "memcached" in args.only:
            memcached_server, memcached = start_memcached(run_dir)
        with bench_registry(run_dir) as registry:
            for backend in args.only:
                log(f"bench.cache: {backend}")
                runs += await measure_backend(backend, args, run_dir, memcached, registry)
    finally:
        if memcached_server is not None:
            memcached_server.stop()
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="measured seconds per run (default 2)")
    parser.add_argument("--concurrency", type=int, default=16, help="calls in flight (default 16)")
    parser.add_argument("--value-size", type=int, default=100, help="bytes per value (default 100)")
    parser.add_argument(
        "--only", default="memory,redis,memcached", type=lambda s: [b for b in s.split(",") if b], help="backends"
    )
    args = parser.parse_args()
    unknown = set(args.only) - {"memory", "redis", "memcached"}
    if unknown:
        parser.error(f"unknown backend(s): {', '.join(sorted(unknown))}")
    run_dir = ROOT / "bench" / "results" / f"cache-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir.mkdir(parents=True, exist_ok=True)
    runs = asyncio.run(measure(args, run_dir))
    print(table(runs, args))


if __name__ == "__main__":
    main()
