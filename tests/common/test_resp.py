"""RespClient on real Redis servers: the shared one for replies and errors, private ones (killed,
restarted, flushed) for deadlines, scripts and lost connections."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio
import uvloop
from redis.exceptions import ConnectionError, ResponseError

from common.resp import RedisPyCommands, RespClient, Script, commands_for
from tests.support.redis_server import SHARED_URL, redis_server

SLOW = Script("local i = 0 while i < 20000000 do i = i + 1 end return 'slow'")  # ~0.1-0.5 s of Redis
COUNT = Script("return redis.call('INCRBY', KEYS[1], ARGV[1])")


@pytest.fixture
async def prefix() -> AsyncIterator[str]:
    name = f"test-resp:{secrets.token_hex(6)}"
    yield name
    cleanup = redis.asyncio.Redis.from_url(SHARED_URL)
    keys = [key async for key in cleanup.scan_iter(match=f"{name}:*")]
    if keys:
        await cleanup.delete(*keys)
    await cleanup.aclose()


async def test_concurrent_commands_each_get_their_own_reply(prefix: str) -> None:
    client = RespClient(SHARED_URL)
    try:
        await asyncio.gather(*(client.execute("SET", f"{prefix}:{n}", f"value {n}") for n in range(500)))
        values = await asyncio.gather(*(client.execute("GET", f"{prefix}:{n}") for n in range(500)))
        assert values == [f"value {n}".encode() for n in range(500)]
        counts = await asyncio.gather(*(client.run(COUNT, [f"{prefix}:count"], [2]) for _ in range(100)))
        assert sorted(counts) == list(range(2, 201, 2))
        assert await client.execute("GET", f"{prefix}:missing") is None
    finally:
        await client.aclose()


async def test_an_error_reply_fails_its_command_only(prefix: str) -> None:
    client = RespClient(SHARED_URL)
    try:
        await client.execute("SET", f"{prefix}:text", "not a number")
        outcomes = await asyncio.gather(
            client.execute("SET", f"{prefix}:a", 1),
            client.execute("INCR", f"{prefix}:text"),
            client.execute("INCR", f"{prefix}:a"),
            return_exceptions=True,
        )
        assert outcomes[0] == b"OK"
        assert isinstance(outcomes[1], ResponseError)
        assert "not an integer" in str(outcomes[1])
        assert outcomes[2] == 2
    finally:
        await client.aclose()


async def test_the_database_of_the_url_is_used(prefix: str) -> None:
    client = RespClient(SHARED_URL.replace("/0", "/3"))
    other = redis.asyncio.Redis.from_url(SHARED_URL.replace("/0", "/3"))
    try:
        await client.execute("SET", f"{prefix}:db", "three")
        assert await other.get(f"{prefix}:db") == b"three"
        await other.delete(f"{prefix}:db")
    finally:
        await client.aclose()
        await other.aclose()


async def test_a_caller_that_stops_waiting_leaves_the_replies_in_order(work_dir: Path) -> None:
    with redis_server(work_dir) as server:
        client = RespClient(server.url)
        try:
            await client.execute("SET", "key", "value")
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.01):
                    await client.run(SLOW, [], [])
            # The slow script's reply arrives first and belongs to nobody; this one gets its own.
            assert await client.execute("GET", "key") == b"value"
        finally:
            await client.aclose()


async def test_scripts_are_loaded_again_when_redis_forgot_them(work_dir: Path) -> None:
    with redis_server(work_dir) as server:
        client = RespClient(server.url)
        try:
            assert await client.run(COUNT, ["n"], [5]) == 5
            await client.execute("SCRIPT", "FLUSH")
            assert await client.run(COUNT, ["n"], [5]) == 10
        finally:
            await client.aclose()


async def test_a_lost_connection_fails_what_waited_and_the_next_command_connects_again(work_dir: Path) -> None:
    with redis_server(work_dir) as server:
        client = RespClient(server.url, timeout=5, connect_timeout=1.0)
        try:
            assert await client.execute("PING") == b"PONG"
            slow = asyncio.create_task(client.run(SLOW, [], []))
            await asyncio.sleep(0)  # on its way (or in the buffer the kill closes)
            server.kill()
            with pytest.raises(ConnectionError, match="lost"):
                await slow
            with pytest.raises(ConnectionError, match="cannot connect"):
                await client.execute("PING")
            server.start()  # the same port again
            assert await client.execute("PING") == b"PONG"
        finally:
            await client.aclose()


async def test_a_refused_login_fails_each_command_and_leaves_no_connection_open() -> None:
    client = RespClient(SHARED_URL.replace("redis://", "redis://:not-the-password@"))
    try:
        for _ in range(2):  # each command tries again, and is refused again
            with pytest.raises(ConnectionError, match=r"refused the connection set-up: .*AUTH"):
                await client.execute("PING")
        assert client._connection is None
    finally:
        await client.aclose()


async def test_a_closed_client_connects_again_when_used() -> None:
    client = RespClient(SHARED_URL)
    assert await client.execute("PING") == b"PONG"
    await client.aclose()
    try:
        assert await client.execute("PING") == b"PONG"
    finally:
        await client.aclose()


async def test_other_urls_get_the_same_calls_on_redis_py(prefix: str) -> None:
    for url in ("rediss://cache.internal:6380/0", "unix:///run/redis.sock"):
        with pytest.raises(ValueError, match="is not supported here: a plain TCP redis:// URL"):
            RespClient(url)
        assert isinstance(commands_for(url, redis.asyncio.Redis.from_url(SHARED_URL), timeout=1), RedisPyCommands)
    # The redis-py side behaves as the pipelined one (here on the shared Redis, over plain TCP).
    client = redis.asyncio.Redis.from_url(SHARED_URL)
    try:
        commands = RedisPyCommands(client)
        assert await commands.execute("SET", f"{prefix}:k", "v") is True
        assert await commands.execute("GET", f"{prefix}:k") == b"v"
        script = Script(f"return redis.call('INCRBY', KEYS[1], ARGV[1]) -- {prefix}")  # new to Redis
        assert await commands.run(script, [f"{prefix}:n"], [3]) == 3
        assert await commands.run(script, [f"{prefix}:n"], [3]) == 6
    finally:
        await client.aclose()


def test_it_runs_on_uvloop_as_in_the_gateway(prefix: str) -> None:
    # uvloop's transports are not asyncio.Transport subclasses: the client must not insist that they are.
    async def round_trip() -> object:
        client = RespClient(SHARED_URL)
        try:
            await asyncio.gather(*(client.execute("SET", f"{prefix}:uv{n}", n) for n in range(50)))
            return await client.execute("GET", f"{prefix}:uv49")
        finally:
            await client.aclose()

    assert uvloop.run(round_trip()) == b"49"
