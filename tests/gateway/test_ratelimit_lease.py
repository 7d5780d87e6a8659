"""Token leases (rateLimiting.leaseTokens): fewer round trips, never more than the shared bucket.

- a hot key costs one EVALSHA per lease, counted by INFO commandstats on a redis-server of the
  test's own, with the RESP client and with redis-py;
- two processes' tables leasing from one bucket let exactly its burst through, in few round trips;
- leased tokens count against the burst in Redis until spent and handed back: a full bucket with a
  lease out gives another holder only the rest, and the two together get the burst, not more;
- unspent tokens go back with the holder's next round trip; a lease ends by itself at its expiry,
  in Redis and (on the injected clock) in the holder;
- calls waiting for one round trip share its answer, refusal included; a store failure reaches
  each of them as a StoreError at once;
- a small bucket leases nothing (it behaves as without leases: the contract suite runs over it in
  test_ratelimit_buckets.py), and the settings refuse leases on the memory store.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pydantic
import pytest
import redis
import redis.asyncio

from gateway.ratelimit import RespClient, StoreError
from gateway.ratelimit.lease import LEASE_SCRIPT, LeasedTokenBucket, LeaseTable
from gateway.ratelimit.limiter import StoreClient, lease_table
from gateway.ratelimit.redis import redis_client
from gateway.settings import RateLimitSettings
from tests.support.clock import ManualClock
from tests.support.redis_server import SHARED_URL, delete_prefix, new_prefix, redis_server, shared_client


def settings(url: str, prefix: str, **extra: object) -> RateLimitSettings:
    config = {"store": "redis", "redisUrl": url, "keyPrefix": prefix, "redisTimeout": 2, "leaseTokens": 16, **extra}
    return RateLimitSettings.model_validate(config)


def table_on(client: StoreClient, config: RateLimitSettings, clock: ManualClock | None = None) -> LeaseTable:
    table = lease_table(client, config) if clock is None else lease_table(client, config, clock)
    assert table is not None
    return table


def bucket(table: LeaseTable, prefix: str, *, rate: float, burst: int, extra: int = 16) -> LeasedTokenBucket:
    return LeasedTokenBucket(table, rate=rate, burst=burst, policy="p", prefix=prefix, extra=extra)


@dataclass
class Shared:
    sync: redis.Redis
    prefix: str
    clients: list[StoreClient]

    def client(self, kind: str = "resp") -> StoreClient:
        # Long timeouts: these tests count exact decisions, and a loaded machine must not turn one into a
        # Redis error (the failure modes have tests of their own).
        client: StoreClient = (
            RespClient(SHARED_URL, timeout=5) if kind == "resp" else redis_client(SHARED_URL, timeout=5)
        )
        self.clients.append(client)
        return client

    def hash(self, key: str) -> dict[str, str]:
        raw: dict[bytes, bytes] = self.sync.hgetall(f"{self.prefix}:p:{key}")  # type: ignore[assignment]
        return {name.decode(): value.decode() for name, value in raw.items()}

    def leased(self, key: str) -> int:
        """Extras on live leases of `key`'s bucket, as Redis holds them."""
        return sum(int(value.split()[0]) for name, value in self.hash(key).items() if name.startswith("l:"))

    def take_directly(self, key: str, *, burst: int, rate: float, want: int) -> list[int | str]:
        """One round trip of another holder asking for `want` tokens and no extras: what it is granted."""
        args: list[str | int | float] = ["other", 30_000_000, 0.1, repr(rate), burst, 100, 1, want, 0, 0]
        reply = self.sync.eval(LEASE_SCRIPT, 1, f"{self.prefix}:p:{key}", *args)
        return [value.decode() if isinstance(value, bytes) else value for value in reply[0]]


@pytest.fixture
async def shared() -> AsyncIterator[Shared]:
    sync = shared_client()
    state = Shared(sync, new_prefix(), [])
    try:
        yield state
    finally:
        for client in state.clients:
            await client.aclose()
        delete_prefix(sync, state.prefix)
        sync.close()


# Fewer round trips ------------------------------------------------------------------------------


def command_calls(client: redis.Redis) -> int:
    stats = client.info("commandstats")
    return sum(int(stats.get(f"cmdstat_{name}", {}).get("calls", 0)) for name in ("evalsha", "eval"))


@pytest.mark.parametrize("kind", ["resp", "redis-py"])
async def test_a_hot_key_costs_one_evalsha_per_lease(tmp_path: Path, kind: str) -> None:
    with redis_server(tmp_path) as server:
        config = settings(server.url, "upf:lease")
        client: StoreClient = RespClient(server.url, timeout=5) if kind == "resp" else redis_client(server.url)
        sync = redis.Redis.from_url(server.url)
        try:
            table = table_on(client, config)
            hot = bucket(table, "upf:lease", rate=1e6, burst=1_000_000)
            before = command_calls(sync)
            decisions = [await hot.take("client") for _ in range(1700)]
            calls = command_calls(sync) - before
        finally:
            await client.aclose()
            sync.close()
    assert all(d.allowed for d in decisions)
    # Each round trip: the one call waiting, plus 16 leased for the next sixteen. The new server
    # has no script yet: the first EVALSHA is refused (NOSCRIPT) and repeated with the script.
    assert table.round_trips == 100
    assert calls == 100 + 1


async def test_two_holders_leasing_one_bucket_let_exactly_its_burst_through(shared: Shared) -> None:
    config = settings(SHARED_URL, shared.prefix, replicas=2)
    tables = [table_on(shared.client(), config), table_on(shared.client("redis-py"), config)]
    buckets = [bucket(table, shared.prefix, rate=0.001, burst=1000) for table in tables]
    decisions = await asyncio.gather(*(buckets[i % 2].take("hot") for i in range(3000)))
    assert sum(d.allowed for d in decisions) == 1000
    # Concurrent calls wait for the round trip under way and share it: far fewer than the calls.
    assert sum(table.round_trips for table in tables) < 100
    refused = [d for d in decisions if not d.allowed]
    assert all(990 < d.retry_after <= 1000 for d in refused)  # one token at 0.001/s


# Never more than the bucket ---------------------------------------------------------------------------


async def test_leased_tokens_count_against_the_burst_until_spent(shared: Shared) -> None:
    # Refilled in a tenth of a second: whatever the lease, the bucket is full again at once.
    rate, burst = 1000.0, 100
    table = table_on(shared.client(), settings(SHARED_URL, shared.prefix, leaseSeconds=10))
    holder = bucket(table, shared.prefix, rate=rate, burst=burst)
    assert (await holder.take("k")).allowed
    assert shared.leased("k") == 9  # a tenth of the 99 left
    # Refilled up to the burst less the lease: another holder asking for everything gets 91 ...
    await asyncio.sleep(0.2)
    granted, remaining, *_ = shared.take_directly("k", burst=burst, rate=rate, want=500)
    assert (granted, remaining) == (91, 0)
    # ... and this one spends its 9 without asking Redis: the two together get the burst, not 109.
    trips = table.round_trips
    assert all([(await holder.take("k")).allowed for _ in range(9)])
    assert table.round_trips == trips


async def test_unspent_tokens_go_back_with_the_next_round_trip(shared: Shared) -> None:
    rate, burst = 0.001, 100  # nothing refills during the test
    table = table_on(shared.client(), settings(SHARED_URL, shared.prefix))
    holder = bucket(table, shared.prefix, rate=rate, burst=burst)
    await holder.take("k")
    assert (int(float(shared.hash("k")["tokens"])), shared.leased("k")) == (90, 9)  # whole tokens
    # Cost 10 is more than the 9 leased: a round trip, which hands the 9 back and takes 10 + extras.
    assert (await holder.take("k", cost=10)).allowed
    tokens, leased = int(float(shared.hash("k")["tokens"])), shared.leased("k")
    assert leased == 8  # a tenth of the 89 left after the 10
    assert tokens + leased + 1 + 10 == burst  # in Redis + leased + spent: nothing lost, nothing made


async def test_a_lease_ends_by_itself_in_redis_and_in_its_holder(shared: Shared) -> None:
    rate, burst = 1000.0, 100
    clock = ManualClock()
    table = table_on(shared.client(), settings(SHARED_URL, shared.prefix, leaseSeconds=0.5), clock)
    holder = bucket(table, shared.prefix, rate=rate, burst=burst)
    await holder.take("k")
    assert shared.leased("k") == 9

    # Redis: once the lease expires, the bucket refills past it. Polled by another holder's look
    # (want 0 takes nothing): at most 91 while the lease lives, then the whole burst.
    def level() -> int:
        granted, remaining, *_ = shared.take_directly("k", burst=burst, rate=rate, want=0)
        assert granted == 0
        return int(remaining)

    assert level() <= 91
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5
    while level() < burst:
        assert loop.time() < deadline, "the expired lease still counts against the burst"
        await asyncio.sleep(0.05)
    # The holder: 8 tokens still leased, but past leaseSeconds on its clock it asks Redis again.
    trips = table.round_trips
    await holder.take("k")
    assert table.round_trips == trips
    clock.now += 0.5
    await holder.take("k")
    assert table.round_trips == trips + 1


# Waiting calls, failures, settings ----------------------------------------------------------------------


async def test_calls_waiting_for_a_round_trip_share_its_refusal(shared: Shared) -> None:
    table = table_on(shared.client(), settings(SHARED_URL, shared.prefix))
    small = bucket(table, shared.prefix, rate=0.001, burst=3)
    assert all([(await small.take("k")).allowed for _ in range(3)])
    trips = table.round_trips
    refused = await asyncio.gather(*(small.take("k") for _ in range(50)))
    assert not any(d.allowed for d in refused)
    assert table.round_trips == trips + 1
    assert {(d.remaining, d.limit) for d in refused} == {(0, 3)}
    assert all(990 < d.retry_after <= 1000 for d in refused)


async def test_a_store_failure_reaches_every_waiting_call(tmp_path: Path) -> None:
    with redis_server(tmp_path) as server:
        client = RespClient(server.url, timeout=1)
        try:
            table = table_on(client, settings(server.url, "upf:lease"))
            hot = bucket(table, "upf:lease", rate=0.001, burst=10)
            assert (await hot.take("k")).allowed
            server.kill()
            outcomes = await asyncio.gather(*(hot.take("other") for _ in range(20)), return_exceptions=True)
        finally:
            await client.aclose()
    assert all(isinstance(outcome, StoreError) for outcome in outcomes)


async def test_the_leases_kept_are_bounded(shared: Shared) -> None:
    config = settings(SHARED_URL, shared.prefix)
    table = LeaseTable(table_on(shared.client(), config).run, lease_seconds=1.0, max_leases=10)
    wide = bucket(table, shared.prefix, rate=1e6, burst=1_000_000)
    for n in range(50):
        assert (await wide.take(f"client-{n}")).allowed
        assert len(table.leases) <= 10
    # The newest are kept: the last client spends its lease without a round trip.
    trips = table.round_trips
    assert (await wide.take("client-49")).allowed
    assert table.round_trips == trips


def test_leases_need_the_redis_store() -> None:
    with pytest.raises(pydantic.ValidationError, match="leaseTokens applies to the Redis store only"):
        RateLimitSettings.model_validate({"store": "memory", "leaseTokens": 8})
    assert RateLimitSettings.model_validate({"store": "redis"}).lease_tokens == 0  # exact unless asked
    assert lease_table(RespClient(SHARED_URL), RateLimitSettings.model_validate({"store": "redis"})) is None
