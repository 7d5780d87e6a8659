"""The waiting Redis pool, on the shared Redis: a burst beyond the pool waits for a connection, a wait
that runs out fails naming why, and a waiter that leaves does not strand the others."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import redis.asyncio
from redis.exceptions import MaxConnectionsError

from common.redis_pool import WaitingConnectionPool, pooled_client
from tests.support.processes import eventually
from tests.support.redis_server import SHARED_URL


@asynccontextmanager
async def one_connection(*, wait: float) -> AsyncIterator[tuple[redis.asyncio.Redis, WaitingConnectionPool]]:
    """A client whose pool holds a single connection, and that pool."""
    client = pooled_client(SHARED_URL, max_connections=1, wait=wait)
    pool = client.connection_pool
    assert isinstance(pool, WaitingConnectionPool)
    try:
        yield client, pool
    finally:
        await client.aclose()


@pytest.fixture
async def key() -> AsyncIterator[str]:
    name = f"test-redis-pool:{secrets.token_hex(6)}"
    yield name
    cleanup = redis.asyncio.Redis.from_url(SHARED_URL)
    await cleanup.delete(name)
    await cleanup.aclose()


async def test_a_burst_larger_than_the_pool_waits_and_every_command_succeeds(key: str) -> None:
    client = pooled_client(SHARED_URL, max_connections=3)
    try:
        results = await asyncio.gather(*(client.incr(key) for _ in range(200)))
        assert sorted(results) == list(range(1, 201))
        assert len(client.connection_pool._in_use_connections) == 0
        assert len(client.connection_pool._available_connections) <= 3
    finally:
        await client.aclose()

    # The plain pool of the same size fails the same burst: what the waiting pool is for.
    plain = redis.asyncio.Redis.from_url(SHARED_URL, max_connections=3)
    try:
        outcomes = await asyncio.gather(*(plain.incr(key) for _ in range(200)), return_exceptions=True)
        assert any(isinstance(outcome, MaxConnectionsError) for outcome in outcomes)
    finally:
        await plain.aclose()


async def test_a_wait_that_runs_out_fails_naming_the_pool(key: str) -> None:
    async with one_connection(wait=0.1) as (client, pool):
        held = await pool.get_connection()  # the only connection, taken
        with pytest.raises(MaxConnectionsError, match=r"within 0.1 s \(1 in use\)"):
            await client.get(key)
        await pool.release(held)
        assert await client.get(key) is None  # free again: the next command gets it


async def test_a_woken_waiter_that_leaves_passes_the_connection_on(key: str) -> None:
    async with one_connection(wait=5) as (client, pool):
        first = await pool.get_connection()

        async def get() -> object:
            return await client.get(key)

        leaving = asyncio.create_task(get())
        staying = asyncio.create_task(get())
        await eventually(lambda: len(pool._waiters) == 2, what="two commands waiting")
        await pool.release(first)  # wakes `leaving`, which is cancelled before it takes the connection
        leaving.cancel()
        async with asyncio.timeout(2):
            assert await staying is None
        assert leaving.cancelled()
