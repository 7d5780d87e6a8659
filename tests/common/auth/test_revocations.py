"""Revocations: one process (memory) and replicas sharing the real Redis (common/auth/revocations.py)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest
import redis

from common.auth.revocations import MemoryRevocations, RedisRevocations, RevocationUnavailable
from tests.support.processes import eventually, free_port
from tests.support.redis_server import SHARED_URL, delete_prefix, new_prefix, redis_server, shared_client

Replicas = Callable[..., Awaitable[RedisRevocations]]


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def prefix() -> Iterator[str]:
    client = shared_client()
    value = new_prefix()
    try:
        yield value
    finally:
        delete_prefix(client, value)
        client.close()


@pytest.fixture
async def replicas(prefix: str) -> AsyncIterator[Replicas]:
    started: list[RedisRevocations] = []

    async def start(**options: object) -> RedisRevocations:
        revocations = RedisRevocations(SHARED_URL, prefix, **options)  # type: ignore[arg-type]
        started.append(revocations)
        await revocations.start()
        return revocations

    yield start
    for revocations in started:
        await revocations.close()


async def test_memory_revokes_tokens_and_sessions_until_they_expire() -> None:
    clock = Clock()
    revocations = MemoryRevocations(clock=clock)
    now = int(clock.now)
    await revocations.revoke("jti", "token-1", now + 10)
    await revocations.revoke("sid", "session-1", now + 20)
    assert revocations.is_revoked("token-1", None)
    assert revocations.is_revoked("other", "session-1")
    assert revocations.is_revoked(None, "session-1")
    assert not revocations.is_revoked("token-2", "session-2")
    assert not revocations.is_revoked("session-1", "token-1")  # kinds are separate
    assert revocations.status.entries == 2

    clock.now = now + 10
    assert not revocations.is_revoked("token-1", None)
    assert revocations.is_revoked(None, "session-1")
    assert revocations.status.entries == 1
    clock.now = now + 20
    assert not revocations.is_revoked(None, "session-1")
    assert revocations.status.entries == 0


async def test_a_later_revocation_of_the_same_id_extends_it() -> None:
    clock = Clock()
    revocations = MemoryRevocations(clock=clock)
    now = int(clock.now)
    await revocations.revoke("sid", "s", now + 10)
    await revocations.revoke("sid", "s", now + 30)
    await revocations.revoke("sid", "s", now + 5)  # shorter: changes nothing
    clock.now = now + 15
    assert revocations.is_revoked(None, "s")
    clock.now = now + 30
    assert not revocations.is_revoked(None, "s")


async def test_an_already_expired_revocation_is_not_kept() -> None:
    revocations = MemoryRevocations()
    await revocations.revoke("jti", "old", int(time.time()) - 1)
    assert not revocations.is_revoked("old", None)
    assert revocations.status.entries == 0


@pytest.mark.parametrize(
    ("kind", "value", "exp", "message"),
    [
        ("user", "x", 1, "kind must be one of jti, sid"),
        ("sid", "", 1, "non-empty"),
        ("sid", "a b", 1, "no whitespace"),
        ("jti", "x", 1.5, "integer of unix seconds"),
    ],
)
async def test_bad_revocations_are_refused(kind: str, value: str, exp: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        await MemoryRevocations().revoke(kind, value, exp)  # type: ignore[arg-type]


async def test_redis_revocation_reaches_another_replica_within_a_second(replicas: Replicas, prefix: str) -> None:
    writer = await replicas()
    reader = await replicas()
    exp = int(time.time()) + 60
    started = time.monotonic()
    await writer.revoke("sid", "session-a", exp)
    assert writer.is_revoked(None, "session-a")  # at once where it was revoked
    await eventually(lambda: reader.is_revoked(None, "session-a"), timeout=1.0, what="the revocation on the reader")
    assert time.monotonic() - started < 1.0
    await writer.revoke("jti", "token:with:colons", exp)
    await eventually(lambda: reader.is_revoked("token:with:colons", None), timeout=1.0, what="the jti revocation")

    client = shared_client()
    try:  # the layout other implementations rely on (proto/upf/auth/v1/auth.proto)
        assert client.get(f"{prefix}:revoked:sid:session-a") == str(exp).encode()
        assert client.expiretime(f"{prefix}:revoked:sid:session-a") == exp
    finally:
        client.close()


async def test_a_replica_that_starts_later_loads_what_is_already_revoked(replicas: Replicas) -> None:
    first = await replicas()
    await first.revoke("sid", "before", int(time.time()) + 60)
    later = await replicas()
    assert later.is_revoked(None, "before")  # start() returns once loaded
    assert later.status.connected
    assert later.status.syncs == 1


async def test_a_killed_subscription_reloads_what_it_missed(replicas: Replicas, prefix: str) -> None:
    reader = await replicas()
    client = shared_client()
    try:
        # Written with no message, as if published while the reader was away: only the reload finds it.
        client.set(f"{prefix}:revoked:sid:missed", int(time.time()) + 60, exat=int(time.time()) + 60)
        assert not reader.is_revoked(None, "missed")
        # Only this reader's subscriber (named after its prefix): other tests share this Redis.
        name = f"{prefix}:revocations"
        (subscriber,) = [c for c in client.client_list(_type="pubsub") if c["name"] == name]
        assert client.client_kill_filter(_id=subscriber["id"]) == 1
        await eventually(lambda: reader.status.syncs >= 2, what="the reader to resubscribe")
        assert reader.is_revoked(None, "missed")
        assert reader.status.connected
    finally:
        client.close()


async def test_revocations_survive_a_redis_restart_and_expired_ones_are_pruned(tmp_path: Path) -> None:
    with redis_server(tmp_path) as server:
        clock = Clock()
        reader = RedisRevocations(server.url, "upf:auth", clock=clock, backoff_max=0.2, ping_interval=1.0)
        writer = RedisRevocations(server.url, "upf:auth")
        try:
            await reader.start()
            await writer.start()
            now = int(time.time())
            await writer.revoke("sid", "short", now + 30)
            await eventually(lambda: reader.is_revoked(None, "short"), what="the first revocation")

            server.kill()
            await eventually(lambda: not reader.status.connected, what="the reader to notice Redis is gone")
            assert reader.is_revoked(None, "short")  # the local copy still answers
            with pytest.raises(RevocationUnavailable, match="cannot publish"):
                await writer.revoke("sid", "lost", now + 60)

            server.start()  # the same port, empty (no persistence); another replica revokes meanwhile
            fresh = redis.Redis(port=server.port)
            try:
                fresh.set("upf:auth:revoked:jti:while-away", now + 60, exat=now + 60)
            finally:
                fresh.close()
            await eventually(lambda: reader.status.connected, what="the reader to reconnect")
            assert reader.is_revoked("while-away", None)

            clock.now = now + 30
            assert not reader.is_revoked(None, "short")
            assert reader.status.entries == 1
        finally:
            await reader.close()
            await writer.close()


async def test_start_returns_when_redis_is_down_and_local_revocations_still_count(tmp_path: Path) -> None:
    revocations = RedisRevocations(f"redis://127.0.0.1:{free_port()}/0", "upf:auth", ready_timeout=0.3)
    try:
        await revocations.start()
        assert not revocations.status.connected
        assert "onnect" in revocations.status.last_error
        with pytest.raises(RevocationUnavailable):
            await revocations.revoke("sid", "s", int(time.time()) + 60)
        assert revocations.is_revoked(None, "s")
    finally:
        await revocations.close()


async def test_malformed_messages_are_ignored(replicas: Replicas, prefix: str) -> None:
    reader = await replicas()
    client = shared_client()
    try:
        client.publish(f"{prefix}:revoked", "nonsense")
        client.publish(f"{prefix}:revoked", "sid:x:notanumber")
        client.publish(f"{prefix}:revoked", f"sid:good:{int(time.time()) + 60}")
    finally:
        client.close()
    await eventually(lambda: reader.is_revoked(None, "good"), what="the good message")
    assert reader.status.entries == 1
    assert reader.status.connected
