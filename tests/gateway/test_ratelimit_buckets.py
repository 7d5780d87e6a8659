"""The token bucket contract, run over every implementation, then what is particular to each.

Contract (gateway/ratelimit/bucket.py), for MemoryTokenBucket, RedisTokenBucket (redis-py),
RespTokenBucket (the pipelined RESP2 client) and LeasedTokenBucket (rateLimiting.leaseTokens 16: the
buckets here are small enough that it leases nothing, so it must keep the contract exactly; its own
behaviour is in test_ratelimit_lease.py) alike:
- a fresh bucket is full: `burst` takes are allowed, counting `remaining` down, then refused;
- a refusal says how long until the request would pass (`retry_after`) and until the bucket is
  full (`reset_after`), and takes nothing;
- tokens come back at `rate` a second, never beyond `burst`;
- keys are independent; `cost` takes several tokens; a cost larger than the bucket is an error;
- concurrent takes never oversell.

The memory bucket runs on a hand-advanced clock (exact arithmetic, no sleeping). The Redis buckets
run on Redis server time, so their "advance" sleeps, briefly, and their checks leave room for it.

RespClient besides: NOSCRIPT after SCRIPT FLUSH, AUTH and SELECT from the URL, a killed Redis
failing every pending decision at once and a restarted one used again, and a Redis that accepts
but never answers failing the pending decisions after the timeout.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis.asyncio

from gateway.ratelimit import (
    Decision,
    MemoryTokenBucket,
    RedisTokenBucket,
    RespClient,
    RespTokenBucket,
    StoreError,
    TokenBucket,
)
from gateway.ratelimit.lease import LEASE_SCRIPT, LeasedTokenBucket, LeaseTable
from gateway.ratelimit.redis import decision_of, decisions_of, redis_client
from gateway.ratelimit.resp import RespScript
from tests.support.clock import ManualClock
from tests.support.processes import free_port
from tests.support.redis_server import SHARED_URL, delete_prefix, new_prefix, redis_server, shared_client


@dataclass
class Buckets:
    make: Callable[[float, int], TokenBucket]
    advance: Callable[[float], Awaitable[None]]
    exact: bool  # time moves only when told (memory), or also while the test runs (Redis)


@pytest.fixture(params=["memory", "redis", "resp", "lease"])
async def buckets(request: pytest.FixtureRequest) -> AsyncIterator[Buckets]:
    if request.param == "memory":
        clock = ManualClock()

        async def advance_clock(seconds: float) -> None:
            clock.advance(seconds)

        yield Buckets(lambda rate, burst: MemoryTokenBucket(rate=rate, burst=burst, clock=clock), advance_clock, True)
        return
    sync = shared_client()  # fails the test when Redis is not there
    prefix = new_prefix()
    if request.param in ("resp", "lease"):
        resp = RespClient(SHARED_URL, timeout=5)
        table = LeaseTable(RespScript(resp, LEASE_SCRIPT), lease_seconds=1.0)

        def make(rate: float, burst: int) -> TokenBucket:
            if request.param == "lease":
                return LeasedTokenBucket(table, rate=rate, burst=burst, policy="default", prefix=prefix, extra=16)
            return RespTokenBucket(resp, rate=rate, burst=burst, prefix=prefix)

        try:
            yield Buckets(make, asyncio.sleep, False)
        finally:
            await resp.aclose()
            delete_prefix(sync, prefix)
            sync.close()
        return
    client = redis_client(SHARED_URL, timeout=5)  # as the gateway builds it: a waiting pool (common/redis_pool.py)
    try:
        yield Buckets(
            lambda rate, burst: RedisTokenBucket(client, rate=rate, burst=burst, prefix=prefix), asyncio.sleep, False
        )
    finally:
        await client.aclose()
        delete_prefix(sync, prefix)
        sync.close()


async def takes(bucket: TokenBucket, key: str, n: int) -> list[bool]:
    return [(await bucket.take(key)).allowed for _ in range(n)]


# The contract ---------------------------------------------------------------------------------------


async def test_fresh_bucket_allows_the_burst_then_refuses(buckets: Buckets) -> None:
    bucket = buckets.make(0.001, 5)
    decisions = [await bucket.take("a") for _ in range(6)]
    assert [d.allowed for d in decisions] == [True] * 5 + [False]
    assert [d.remaining for d in decisions] == [4, 3, 2, 1, 0, 0]
    assert {d.limit for d in decisions} == {5}
    assert [d.retry_after for d in decisions[:5]] == [0.0] * 5


async def test_refusal_says_when_to_retry_and_takes_nothing(buckets: Buckets) -> None:
    bucket = buckets.make(1.0, 2)
    assert await takes(bucket, "a", 2) == [True, True]
    refused = await bucket.take("a")
    assert not refused.allowed
    # One token missing at one token a second; the whole bucket (two) missing at most two seconds.
    assert 0.9 < refused.retry_after <= 1.0
    assert 1.9 < refused.reset_after <= 2.0
    again = await bucket.take("a")
    assert not again.allowed
    assert again.retry_after <= refused.retry_after  # the refusal took nothing: time only helps
    await buckets.advance(1.0)
    assert (await bucket.take("a")).allowed


async def test_tokens_come_back_at_the_rate_and_never_beyond_the_burst(buckets: Buckets) -> None:
    bucket = buckets.make(10.0, 3)
    assert await takes(bucket, "a", 4) == [True, True, True, False]
    # One token; the next is 0.1 s away, room for a real-time sleep (the Redis variants) running late.
    await buckets.advance(0.1)
    assert await takes(bucket, "a", 2) == [True, False]
    await buckets.advance(0.5)  # ten tokens' worth, but the bucket holds three
    assert await takes(bucket, "a", 4) == [True, True, True, False]


async def test_keys_are_independent(buckets: Buckets) -> None:
    bucket = buckets.make(0.001, 2)
    assert await takes(bucket, "a", 3) == [True, True, False]
    assert await takes(bucket, "b", 3) == [True, True, False]


async def test_cost_takes_several_tokens(buckets: Buckets) -> None:
    bucket = buckets.make(0.001, 5)
    first = await bucket.take("a", cost=3)
    assert (first.allowed, first.remaining) == (True, 2)
    refused = await bucket.take("a", cost=3)
    assert (refused.allowed, refused.remaining) == (False, 2)
    assert (await bucket.take("a", cost=2)).allowed
    peek = await bucket.take("a", cost=0)  # a cost of 0 only looks
    assert (peek.allowed, peek.remaining) == (True, 0)
    with pytest.raises(ValueError, match="outside"):
        await bucket.take("a", cost=6)
    with pytest.raises(ValueError, match="outside"):
        await bucket.take("a", cost=-1)


async def test_concurrent_takes_never_oversell(buckets: Buckets) -> None:
    bucket = buckets.make(0.001, 50)
    decisions = await asyncio.gather(*(bucket.take("hot") for _ in range(200)))
    assert sum(d.allowed for d in decisions) == 50


# Memory: exact, on a hand-advanced clock --------------------------------------------------------------


async def test_memory_refill_is_exact_on_the_injected_clock() -> None:
    clock = ManualClock()
    bucket = MemoryTokenBucket(rate=2.0, burst=4, clock=clock)
    assert await takes(bucket, "a", 4) == [True] * 4
    clock.advance(0.25)  # half a token
    refused = await bucket.take("a")
    assert (refused.allowed, refused.retry_after, refused.reset_after) == (False, 0.25, 1.75)
    clock.advance(0.25)
    allowed = await bucket.take("a")
    assert (allowed.allowed, allowed.remaining, allowed.reset_after) == (True, 0, 2.0)


async def test_memory_drops_buckets_idle_long_enough_to_be_full() -> None:
    clock = ManualClock()
    bucket = MemoryTokenBucket(rate=1.0, burst=5, clock=clock)
    for key in ("a", "b", "c"):
        await bucket.take(key)
    assert len(bucket) == 3
    clock.advance(4.9)
    await bucket.take("d")
    assert len(bucket) == 4  # not full yet: kept
    clock.advance(0.1)
    await bucket.take("d")
    assert len(bucket) == 1  # a, b, c were full again: dropping them changes nothing
    assert (await bucket.take("a")).remaining == 4


async def test_memory_bucket_count_is_bounded() -> None:
    bucket = MemoryTokenBucket(rate=0.001, burst=5, clock=ManualClock(), max_keys=3)
    for key in "abcde":
        await bucket.take(key)
    assert len(bucket) == 3


async def test_memory_clock_stepping_back_refills_nothing() -> None:
    clock = ManualClock()
    bucket = MemoryTokenBucket(rate=1.0, burst=2, clock=clock)
    assert await takes(bucket, "a", 2) == [True, True]
    clock.advance(-10)
    assert (await bucket.take("a")).allowed is False


def test_memory_rejects_nonsense_sizes() -> None:
    with pytest.raises(ValueError, match="rate"):
        MemoryTokenBucket(rate=0, burst=1)
    with pytest.raises(ValueError, match="burst"):
        MemoryTokenBucket(rate=1, burst=0)


# Redis: server time, TTL, NOSCRIPT, failures ----------------------------------------------------------


@pytest.fixture
async def shared_redis() -> AsyncIterator[tuple[redis.asyncio.Redis, str]]:
    sync = shared_client()
    prefix = new_prefix()
    client = redis_client(SHARED_URL, timeout=5)
    try:
        yield client, prefix
    finally:
        await client.aclose()
        delete_prefix(sync, prefix)
        sync.close()


async def test_redis_key_is_namespaced_and_lives_at_least_burst_over_rate(
    shared_redis: tuple[redis.asyncio.Redis, str],
) -> None:
    client, prefix = shared_redis
    bucket = RedisTokenBucket(client, rate=0.3, burst=10, policy="orders", prefix=prefix)
    await bucket.take("ip:203.0.113.7")
    key = f"{prefix}:orders:ip:203.0.113.7"
    assert bucket.key("ip:203.0.113.7") == key
    # ceil(10 / 0.3) = 34 s: an expired key must mean a full bucket, never an early one.
    assert 33 <= await client.ttl(key) <= 34


async def test_redis_bucket_runs_on_redis_server_time(shared_redis: tuple[redis.asyncio.Redis, str]) -> None:
    client, prefix = shared_redis
    bucket = RedisTokenBucket(client, rate=1.0, burst=3, prefix=prefix)
    before = await client.time()
    await bucket.take("a")
    after = await client.time()
    stored = int(await client.hget(f"{prefix}:default:a", "ts") or 0)
    assert before[0] * 1_000_000 + before[1] <= stored <= after[0] * 1_000_000 + after[1]


async def test_redis_script_is_loaded_again_after_a_script_flush(tmp_path: Path) -> None:
    # On a private server: SCRIPT FLUSH on the shared one would disturb everyone else's scripts.
    with redis_server(tmp_path) as server:
        client = redis_client(server.url)
        try:
            bucket = RedisTokenBucket(client, rate=0.001, burst=3)
            assert (await bucket.take("a")).remaining == 2
            await client.script_flush()
            assert (await bucket.take("a")).remaining == 1  # NOSCRIPT answered by loading it again
        finally:
            await client.aclose()


async def test_unreachable_redis_is_a_store_error() -> None:
    client = redis_client(f"redis://127.0.0.1:{free_port()}/0")
    try:
        with pytest.raises(StoreError, match="ConnectionError"):
            await RedisTokenBucket(client, rate=1, burst=1).take("a")
    finally:
        await client.aclose()


# RespClient: what redis-py did for the bucket, and failing fast ---------------------------------------


async def test_resp_key_and_ttl_match_the_redis_py_bucket(shared_redis: tuple[redis.asyncio.Redis, str]) -> None:
    client, prefix = shared_redis
    resp = RespClient(SHARED_URL)
    try:
        bucket = RespTokenBucket(resp, rate=0.3, burst=10, policy="orders", prefix=prefix)
        assert (await bucket.take("ip:203.0.113.7", cost=3)).remaining == 7
        assert 33 <= await client.ttl(f"{prefix}:orders:ip:203.0.113.7") <= 34
        # Both clients take from one bucket: the same script, the same key.
        other = RedisTokenBucket(client, rate=0.3, burst=10, policy="orders", prefix=prefix)
        assert (await other.take("ip:203.0.113.7")).remaining == 6
    finally:
        await resp.aclose()


async def test_resp_cancelled_decisions_leave_replies_matched(shared_redis: tuple[redis.asyncio.Redis, str]) -> None:
    _, prefix = shared_redis
    resp = RespClient(SHARED_URL)
    try:
        bucket = RespTokenBucket(resp, rate=0.001, burst=10, prefix=prefix)
        await bucket.take("warm")
        abandoned = [asyncio.ensure_future(bucket.take("a")) for _ in range(3)]
        await asyncio.sleep(0)  # written, not answered yet
        for task in abandoned:
            task.cancel()
        # Their replies still arrive first and must be skipped, not handed to the next callers.
        assert [(await bucket.take(k)).remaining for k in ("b", "b", "c")] == [9, 8, 9]
    finally:
        await resp.aclose()


async def test_resp_script_is_loaded_again_after_a_script_flush(tmp_path: Path) -> None:
    with redis_server(tmp_path) as server:
        resp = RespClient(server.url)
        try:
            bucket = RespTokenBucket(resp, rate=0.001, burst=5)
            assert (await bucket.take("a")).remaining == 4
            assert await resp.execute("SCRIPT", "FLUSH") == b"OK"
            # Every pending decision meets NOSCRIPT and is retried with EVAL.
            decisions = await asyncio.gather(*(bucket.take("a") for _ in range(3)))
            assert sorted(d.remaining for d in decisions) == [1, 2, 3]
            assert (await bucket.take("a")).remaining == 0  # cached again: EVALSHA works
        finally:
            await resp.aclose()


async def test_resp_authenticates_and_selects_the_database_from_the_url(tmp_path: Path) -> None:
    with redis_server(tmp_path) as server:
        admin = RespClient(server.url)
        await admin.execute("CONFIG", "SET", "requirepass", "s3cr:t")
        await admin.aclose()
        url = f"redis://:s3cr%3At@127.0.0.1:{server.port}/3"
        resp = RespClient(url)
        try:
            await RespTokenBucket(resp, rate=0.001, burst=2, prefix="p").take("a")
            assert await resp.execute("EXISTS", "p:default:a") == 1
            info = await resp.execute("CLIENT", "INFO")
            assert isinstance(info, bytes)
            assert b" db=3 " in info
        finally:
            await resp.aclose()
        wrong = RespClient(f"redis://:nope@127.0.0.1:{server.port}/0")
        try:
            with pytest.raises(StoreError, match="set-up"):
                await RespTokenBucket(wrong, rate=1, burst=1).take("a")
        finally:
            await wrong.aclose()


async def test_resp_killed_redis_fails_pending_decisions_at_once_and_reconnects(tmp_path: Path) -> None:
    with redis_server(tmp_path) as server:
        resp = RespClient(server.url, timeout=5)  # a long timeout: the loss, not the watchdog, must fail them
        try:
            bucket = RespTokenBucket(resp, rate=0.001, burst=1000)
            await bucket.take("a")
            # A paused server holds every command, so the decisions are pending when it dies.
            assert await resp.execute("CLIENT", "PAUSE", 5000, "ALL") == b"OK"
            pending = [asyncio.ensure_future(bucket.take("a")) for _ in range(50)]
            await asyncio.sleep(0.1)
            started = time.monotonic()
            server.kill()
            results = await asyncio.gather(*pending, return_exceptions=True)
            assert time.monotonic() - started < 1.0
            assert all(isinstance(r, StoreError) for r in results), results
            with pytest.raises(StoreError, match="connect"):
                await bucket.take("a")  # nobody listens: refused now, not after the timeout
            server.start()  # the same port, an empty Redis
            assert (await bucket.take("a")).remaining == 999
        finally:
            await resp.aclose()


async def test_resp_redis_that_never_answers_fails_pending_decisions_after_the_timeout() -> None:
    accepted: list[asyncio.StreamWriter] = []

    async def accept_and_stay_silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)

    silent = await asyncio.start_server(accept_and_stay_silent, "127.0.0.1", 0)
    port = silent.sockets[0].getsockname()[1]
    resp = RespClient(f"redis://127.0.0.1:{port}/0", timeout=0.2)
    try:
        bucket = RespTokenBucket(resp, rate=1, burst=10)
        started = time.monotonic()
        results = await asyncio.gather(*(bucket.take(str(i)) for i in range(20)), return_exceptions=True)
        elapsed = time.monotonic() - started
        assert all(isinstance(r, StoreError) and "within 0.2 s" in str(r) for r in results), results
        assert 0.2 <= elapsed < 1.0  # the watchdog fires on time; a busy machine may add a little
        assert len(accepted) == 1  # one connection for all of them
    finally:
        await resp.aclose()
        for writer in accepted:
            writer.close()
        silent.close()
        await silent.wait_closed()


async def test_unreachable_redis_is_a_store_error_for_resp_too() -> None:
    resp = RespClient(f"redis://127.0.0.1:{free_port()}/0")
    try:
        with pytest.raises(StoreError, match="cannot connect"):
            await RespTokenBucket(resp, rate=1, burst=1).take("a")
    finally:
        await resp.aclose()


def test_resp_client_takes_only_plain_redis_urls() -> None:
    for url in ("rediss://cache:6380/0", "unix:///run/redis.sock"):
        with pytest.raises(ValueError, match="redis://"):
            RespClient(url)


def test_the_scripts_replies_become_decisions_and_anything_else_a_store_error() -> None:
    # What both clients hand back for token_bucket.lua, and for token_buckets.lua (one per bucket).
    assert decision_of([1, 4, b"0", b"2.5"], 5) == Decision(True, 4, 0.0, 2.5, 5)
    assert decisions_of([[1, 4, b"0", b"2.5"], [0, 0, b"1.5", b"9"]], [5, 9]) == [
        Decision(True, 4, 0.0, 2.5, 5),
        Decision(False, 0, 1.5, 9.0, 9),
    ]
    for wrong in (None, b"OK", [1, 4, b"0"], [1, "4", b"0", b"2.5"], [1, 4, "0", b"2.5"]):
        with pytest.raises(StoreError, match="unexpected reply from the bucket script"):
            decision_of(wrong, 5)
    for wrongs in ([[1, 4, b"0", b"2.5"]], [[1, 4, b"0", b"2.5"], None], [1, 4, b"0", b"2.5"]):
        with pytest.raises(StoreError, match="unexpected reply from the buckets script"):
            decisions_of(wrongs, [5, 9])
