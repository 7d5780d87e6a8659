"""Gateway CPU per rate-limit decision: the in-memory bucket, redis-py, the pipelined RESP client, leases.

    python -m bench.ratelimit_cost [--concurrency 64] [--seconds 3] [--keys 1000] [--lease 16]
                                   [--url redis://127.0.0.1:6379/0]

For each store, `concurrency` tasks on one uvloop event loop take from `keys` buckets for `seconds`
(after a short warm-up that is not counted); CPU is this process's user + system time from
resource.getrusage, divided by the decisions made (errors are not decisions: they are counted
apart, and their CPU is in the total). Redis's own CPU is not counted: the target
(issue 5) is the gateway's. The buckets live under a key prefix of this run's own, deleted at the end.

The `resp lease N` row is the RESP client with rateLimiting.leaseTokens N (gateway/ratelimit/lease.py):
a round trip takes up to N tokens beyond the waiting calls' and later decisions on that key spend
them locally; `round trips` says how many decisions went to Redis. It needs keys that come back
within leaseSeconds (0.2 s): with the default 1000 keys visited in turn, each does.

The `ping floor` row is the least a round trip to Redis can cost this process: one bare
asyncio.Protocol sending PING and waiting for PONG, `concurrency` at a time, nothing else. On
loopback most of it is system time: send() runs Redis's side of TCP in our process too.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import resource
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import redis
import uvloop

from gateway.ratelimit import (
    MemoryTokenBucket,
    RedisTokenBucket,
    RespClient,
    RespTokenBucket,
    StoreError,
    TokenBucket,
)
from gateway.ratelimit.lease import LEASE_SCRIPT, LeasedTokenBucket, LeaseTable
from gateway.ratelimit.redis import redis_client
from gateway.ratelimit.resp import RespScript

WARM_UP = 0.3  # seconds: connections opened, scripts cached, before anything is counted


@dataclass(frozen=True)
class Result:
    store: str
    decisions: int
    errors: int  # StoreErrors (redis-py's pool of 64 times out when far more are in flight)
    cpu_us: float  # per decision
    rate: float  # decisions per second of wall time
    round_trips: int | None = None  # decisions that went to Redis, where leases make it differ


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def drive(
    bucket: TokenBucket, concurrency: int, seconds: float, keys: list[str], trips: Callable[[], int] = lambda: 0
) -> tuple[int, int, float, float, int]:
    """Decisions made, errors, CPU seconds, wall seconds and round trips (as `trips` counts them) of
    `concurrency` tasks taking for `seconds`."""
    done = errors = 0
    stop = False

    async def worker(offset: int) -> None:
        nonlocal done, errors
        i = offset
        while not stop:
            try:
                await bucket.take(keys[i % len(keys)])
            except StoreError:
                errors += 1
            i += concurrency
            done += 1
            if not done % 100:
                # The memory bucket never suspends: without this its workers would never let the
                # timer (or each other) run. Once per 100 decisions costs them next to nothing.
                await asyncio.sleep(0)

    tasks = [asyncio.create_task(worker(n)) for n in range(concurrency)]
    await asyncio.sleep(WARM_UP)
    counted_from, errors_from, trips_from, cpu0, wall0 = done, errors, trips(), cpu_seconds(), time.perf_counter()
    await asyncio.sleep(seconds)
    decisions, cpu, wall = done - counted_from, cpu_seconds() - cpu0, time.perf_counter() - wall0
    failed, made = errors - errors_from, trips() - trips_from
    stop = True
    await asyncio.gather(*tasks)
    return decisions, failed, cpu, wall, made


class _Pinger(asyncio.Protocol):
    def __init__(self) -> None:
        self.waiting: list[asyncio.Future[None]] = []
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        for _ in range(data.count(b"\r\n")):  # one "+PONG\r\n" per PING
            self.waiting.pop(0).set_result(None)


async def ping_floor(url: str, concurrency: int, seconds: float) -> tuple[int, int, float, float]:
    """Round trips (PING) made, 0 errors, CPU and wall seconds: the floor under any Redis decision."""
    parts = url.removeprefix("redis://").split("/")[0].rpartition(":")
    loop = asyncio.get_running_loop()
    transport, pinger = await loop.create_connection(_Pinger, parts[0] or "127.0.0.1", int(parts[2] or 6379))
    done = 0
    stop = False

    async def worker() -> None:
        nonlocal done
        while not stop:
            future = loop.create_future()
            pinger.waiting.append(future)
            transport.write(b"*1\r\n$4\r\nPING\r\n")
            await future
            done += 1

    tasks = [asyncio.create_task(worker()) for _ in range(concurrency)]
    await asyncio.sleep(WARM_UP)
    counted_from, cpu0, wall0 = done, cpu_seconds(), time.perf_counter()
    await asyncio.sleep(seconds)
    made, cpu, wall = done - counted_from, cpu_seconds() - cpu0, time.perf_counter() - wall0
    stop = True
    await asyncio.gather(*tasks)
    transport.close()
    return made, 0, cpu, wall


async def measure(args: argparse.Namespace, prefix: str) -> list[Result]:
    keys = [f"ip:198.51.100.{n % 250}.{n}" for n in range(args.keys)]
    # A bucket that refills fast enough never to refuse: refusals are cheaper (no write), not the case to size for.
    rate, burst = 1_000_000.0, 1_000_000
    results = []

    async def run(name: str, make: Callable[[], TokenBucket], trips: Callable[[], int] | None = None) -> None:
        decisions, errors, cpu, wall, made = await drive(make(), args.concurrency, args.seconds, keys, trips or int)
        result = Result(name, decisions, errors, cpu / decisions * 1e6, decisions / wall)
        results.append(result if trips is None else dataclasses.replace(result, round_trips=made))

    await run("memory", lambda: MemoryTokenBucket(rate=rate, burst=burst))
    decisions, errors, cpu, wall = await ping_floor(args.url, args.concurrency, args.seconds)
    results.append(Result("ping floor", decisions, errors, cpu / decisions * 1e6, decisions / wall))
    client = redis_client(args.url, timeout=1.0)  # as the gateway builds it: a waiting pool of 64
    try:
        await run("redis-py", lambda: RedisTokenBucket(client, rate=rate, burst=burst, prefix=prefix))
    finally:
        await client.aclose()
    resp = RespClient(args.url, timeout=1.0)
    try:
        await run("resp", lambda: RespTokenBucket(resp, rate=rate, burst=burst, prefix=prefix))
        if args.lease:
            table = LeaseTable(RespScript(resp, LEASE_SCRIPT), lease_seconds=args.lease_seconds)
            leased = LeasedTokenBucket(table, rate=rate, burst=burst, policy="lease", prefix=prefix, extra=args.lease)
            await run(f"resp lease {args.lease}", lambda: leased, lambda: table.round_trips)
    finally:
        await resp.aclose()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--keys", type=int, default=1000)
    parser.add_argument("--lease", type=int, default=16, help="leaseTokens of the `resp lease` row (0: no such row)")
    parser.add_argument("--lease-seconds", type=float, default=1.0, help="leaseSeconds of the `resp lease` row")
    args = parser.parse_args()
    prefix = f"upf:bench:{uuid.uuid4().hex[:12]}"
    try:
        results = uvloop.run(measure(args, prefix))
    finally:
        sync = redis.Redis.from_url(args.url)
        for key in sync.scan_iter(match=f"{prefix}:*", count=1000):
            sync.delete(key)
        sync.close()
    print(f"{args.concurrency} concurrent decisions on {args.keys} keys, {args.seconds} s per store, uvloop")
    print(f"{'store':<14} {'decisions':>10} {'errors':>7} {'CPU us/decision':>16} {'decisions/s':>12}  round trips")
    for r in results:
        trips = "" if r.round_trips is None else f"  {r.round_trips}"
        print(f"{r.store:<14} {r.decisions:>10} {r.errors:>7} {r.cpu_us:>16.1f} {r.rate:>12.0f}{trips}")


if __name__ == "__main__":
    main()
