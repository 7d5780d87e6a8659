"""The ICache conformance suite: the same test bodies against cache-memory, cache-redis and cache-memcached.

Each test talks to real grpc.aio servers through the SDK's CacheClient, so it checks what a plugin in
any language would see. Capabilities are checked both ways (Dapr's rule): what the manifest claims
Describe reports, what it claims works, and what it leaves out answers UNIMPLEMENTED with a reason.
"""

from __future__ import annotations

import asyncio
import re
import time

import grpc
import pytest
from upf.cache.v1 import cache_pb2 as pb

from cli.main import CACHE_PLUGINS
from manifests import load_manifest
from plugins.cache.plugin import BACKENDS, manifest_of
from plugins.sdk.cache import (
    CacheClient,
    CacheUnavailable,
    CacheUnsupported,
    InvalidCacheArgument,
    LockNotHeld,
    LockTimeout,
    NotAnInteger,
)
from tests.conformance.cache.conftest import Crashable
from tests.conformance.cache.harness import CacheHarness, poll


def short_ttl(cache: CacheHarness, resolution: float) -> float:
    """A TTL to wait out: any with the manual clock; on a server's clock, long enough that the calls
    checking "not expired yet" finish within it on a busy machine."""
    return 0.2 if cache.clock is not None else max(1.0, resolution)


def capabilities(cache: CacheHarness) -> set[str]:
    return set(load_manifest(cache.manifest).provides[0].capabilities)


async def test_describe_reports_what_the_manifest_claims(cache: CacheHarness) -> None:
    client = (await cache.replica()).client()
    described = await client.describe()
    assert described.backend == cache.backend
    assert set(described.capabilities) == capabilities(cache)
    assert described.max_value_bytes == cache.settings.max_value_bytes
    manifest = load_manifest(cache.manifest)
    assert manifest.type == "infrastructure"
    assert [p.name for p in manifest.provides] == ["ICache"]
    assert manifest.provides[0].grpc_services == ["upf.cache.v1.Cache"]
    assert set(manifest.provides[0].methods) == set(pb.DESCRIPTOR.services_by_name["Cache"].methods_by_name)


async def test_get_set_delete(cache: CacheHarness) -> None:
    client = (await cache.replica()).client()
    assert await client.get("greeting") is None
    assert await client.set("greeting", b"hello")
    assert await client.get("greeting") == b"hello"
    assert await client.set("greeting", b"\x00\xffbinary")  # values are bytes, any bytes
    assert await client.get("greeting") == b"\x00\xffbinary"
    assert await client.set("empty", b"")
    assert await client.get("empty") == b""  # found, and empty: not the same as missing
    unicode_key = "clé:ünïcødé key with spaces " + "x" * 300  # longer than memcached's own limit
    assert await client.set(unicode_key, b"v")
    assert await client.get(unicode_key) == b"v"
    assert await client.delete("greeting")
    assert not await client.delete("greeting")
    assert await client.get("greeting") is None


async def test_set_only_if_absent_or_present(cache: CacheHarness) -> None:
    client = (await cache.replica()).client()
    assert not await client.set("k", b"1", xx=True)  # absent: xx refuses
    assert await client.get("k") is None
    assert await client.set("k", b"1", nx=True)
    assert not await client.set("k", b"2", nx=True)  # present: nx refuses
    assert await client.get("k") == b"1"
    assert await client.set("k", b"3", xx=True)
    assert await client.get("k") == b"3"


async def test_mget_mset(cache: CacheHarness) -> None:
    client = (await cache.replica()).client()
    values = {f"item:{i}": f"value {i}".encode() for i in range(50)}
    await client.mset(values)
    got = await client.mget([*values, "item:missing", "item:0"])
    assert got == values  # missing keys are left out, repeated ones answered once
    assert await client.mget([]) == {}


async def test_keys_and_invalidate_by_pattern(cache: CacheHarness) -> None:
    client = (await cache.replica()).client()
    await client.mset({"user:1": b"a", "user:2": b"b", "user:10": b"c", "order:1": b"d", "user*odd": b"e"})
    if "keys" not in capabilities(cache):
        for call in (client.keys("user:*"), client.invalidate("user:*")):
            with pytest.raises(CacheUnsupported, match="cannot list") as caught:
                await call
            assert caught.value.code == grpc.StatusCode.UNIMPLEMENTED
        return
    assert sorted(await client.keys("user:*")) == ["user:1", "user:10", "user:2"]
    assert sorted(await client.keys("user:?")) == ["user:1", "user:2"]
    assert sorted(await client.keys("user:[!-1]*")) == ["user:1", "user:10"]
    assert sorted(await client.keys("user:[^1]")) == ["user:2"]
    assert await client.keys("user\\*odd") == ["user*odd"]
    assert sorted(await client.keys("*")) == ["order:1", "user*odd", "user:1", "user:10", "user:2"]
    assert await client.invalidate("user:1*") == 2
    assert sorted(await client.keys("*")) == ["order:1", "user*odd", "user:2"]
    assert await client.invalidate("nothing:*") == 0


async def test_keys_streams_in_batches(cache: CacheHarness) -> None:
    client = (await cache.replica()).client()
    if "keys" not in capabilities(cache):
        with pytest.raises(CacheUnsupported, match="cannot list"):
            await anext(aiter(client.iter_keys("many:*")))
        return
    await client.mset({f"many:{i:04}": b"x" for i in range(1000)})
    keys = [key async for key in client.iter_keys("many:*", batch_size=64)]
    assert sorted(keys) == [f"many:{i:04}" for i in range(1000)]


async def test_counters(cache: CacheHarness) -> None:
    client = (await cache.replica()).client()
    assert await client.incr("hits") == 1
    assert await client.incr("hits", 41) == 42
    assert await client.decr("hits", 50) == -8  # signed, on every backend
    assert await client.incr("hits", 10) == 2
    assert await client.decr("fresh") == -1
    assert await client.get("hits") == b"2"  # a counter is a value like any other
    await client.set("text", b"not a number")
    with pytest.raises(NotAnInteger):
        await client.incr("text")
    await client.set("big", b"9223372036854775807")
    with pytest.raises(NotAnInteger, match="overflow"):
        await client.incr("big")
    assert await client.get("big") == b"9223372036854775807"


async def test_concurrent_increments_from_two_clients_sum_exactly(cache: CacheHarness) -> None:
    replica = await cache.replica()
    first, second = replica.client(), replica.client()

    async def count(client: CacheClient, times: int, delta: int) -> None:
        for _ in range(times):
            await client.incr("shared", delta)

    await asyncio.gather(count(first, 100, 1), count(second, 100, 1), count(second, 50, -1))
    assert await first.get("shared") == b"150"


async def test_ttl_expiry(cache: CacheHarness) -> None:
    client = (await cache.replica()).client()
    resolution = (await client.describe()).ttl_resolution_ms / 1000
    ttl = short_ttl(cache, resolution)
    await client.set("short", b"1", ttl=ttl)
    await client.mset({"batch:1": b"1", "batch:2": b"2"}, ttl=ttl)
    await client.set("count", b"1", ttl=ttl)
    assert await client.incr("count") == 2  # counting keeps the TTL
    await client.set("forever", b"1")
    await client.set("renewed", b"1", ttl=ttl)
    await client.set("renewed", b"2")  # a Set without a TTL takes the TTL away
    assert await client.get("short") == b"1"  # not early
    assert await client.mget(["batch:1", "batch:2"]) == {"batch:1": b"1", "batch:2": b"2"}
    await cache.advance(ttl + resolution + 0.001)

    async def gone() -> bool:
        expired = await client.mget(["short", "batch:1", "batch:2", "count"])
        return expired == {}

    await poll(gone, timeout=5, what="entries to expire")
    assert await client.mget(["forever", "renewed"]) == {"forever": b"1", "renewed": b"2"}
    assert await client.set("short", b"again", nx=True)  # an expired key counts as absent


async def test_extend_keeps_a_lock_past_its_first_ttl(cache: CacheHarness) -> None:
    replica = await cache.replica()
    alice, bob = replica.client(), replica.client()
    resolution = (await alice.describe()).ttl_resolution_ms / 1000
    ttl = short_ttl(cache, resolution)
    started = time.monotonic()
    lock = await alice.acquire("long-job", ttl=ttl)
    assert lock is not None
    await alice.extend(lock, 60)
    await cache.advance(ttl + resolution + 0.001)
    if cache.clock is None:  # on a server's clock: wait out the first TTL (and memcached's extra second)

        async def first_ttl_over() -> bool:
            return time.monotonic() - started > ttl + resolution + 0.1

        await poll(first_ttl_over, what="the lock's first TTL to pass")
    assert await bob.acquire("long-job", ttl=60) is None  # still alice's
    await alice.release(lock)


async def test_locks_contention_holder_only_and_fencing(cache: CacheHarness) -> None:
    replica = await cache.replica()
    alice, bob = replica.client(), replica.client()
    first = await alice.acquire("report", ttl=30)
    assert first is not None
    assert await bob.acquire("report", ttl=30) is None  # taken
    forged = type(first)(first.name, "0" * 32, first.fencing_token, first.ttl)
    with pytest.raises(LockNotHeld):
        await bob.release(forged)  # only the token's holder may release
    with pytest.raises(LockNotHeld):
        await bob.extend(forged, 60)
    await alice.extend(first, 30)
    await alice.release(first)
    with pytest.raises(LockNotHeld):
        await alice.release(first)  # released once
    second = await bob.acquire("report", ttl=30)
    assert second is not None
    assert second.fencing_token > first.fencing_token
    assert second.token != first.token
    with pytest.raises(LockNotHeld):
        await alice.release(first)  # a former holder's token is worth nothing now
    await bob.release(second)

    async with alice.lock("report", ttl=30) as third:  # the context manager releases on exit
        assert third.fencing_token > second.fencing_token
        with pytest.raises(LockTimeout):
            async with bob.lock("report", ttl=30, wait=0):
                pass
    fourth = await bob.acquire("report", ttl=30)
    assert fourth is not None
    assert fourth.fencing_token > third.fencing_token


async def test_lock_waiters_get_it_when_released(cache: CacheHarness) -> None:
    replica = await cache.replica()
    alice, bob = replica.client(), replica.client(timeout=0.3)
    held = await alice.acquire("job", ttl=30)
    assert held is not None
    waiting = asyncio.create_task(bob.acquire("job", ttl=30, wait=10))

    async def waited_past_bobs_call_timeout() -> bool:
        return replica.counted.calls["acquire_lock"] >= 10  # tries 5, 10, 20 ... 100 ms apart: > 0.3 s

    await poll(waited_past_bobs_call_timeout, what="bob to wait longer than his calls' timeout")
    assert not waiting.done()  # the wait is not cut short by the client's per-call timeout
    await alice.release(held)
    granted = await waiting
    assert granted is not None
    assert granted.fencing_token > held.fencing_token


async def test_lock_expiry_lets_another_acquire(cache: CacheHarness) -> None:
    replica = await cache.replica()
    alice, bob = replica.client(), replica.client()
    resolution = (await alice.describe()).ttl_resolution_ms / 1000
    ttl = short_ttl(cache, resolution)
    first = await alice.acquire("expiring", ttl=ttl)
    assert first is not None
    assert await bob.acquire("expiring", ttl=30) is None  # not early
    await cache.advance(ttl + resolution + 0.001)
    second = await bob.acquire("expiring", ttl=30, wait=5)
    assert second is not None
    assert second.fencing_token > first.fencing_token
    with pytest.raises(LockNotHeld):
        await alice.extend(first, 30)  # expired: the former holder can neither extend
    with pytest.raises(LockNotHeld):
        await alice.release(first)  # nor release the new holder's lock
    await bob.release(second)


async def test_invalidation_feed(cache: CacheHarness) -> None:
    replica = await cache.replica()
    writer, watcher = replica.client(), replica.client()
    async with watcher.watch_invalidations() as feed, watcher.watch_invalidations("user:*") as users:
        events = aiter(feed)
        await writer.set("user:1", b"a")
        await writer.mset({"user:2": b"b", "order:1": b"c"})
        await writer.incr("order:count")
        await writer.delete("user:1")
        assert not await writer.set("user:2", b"x", nx=True)  # nothing changed: nothing reported
        await writer.set("user:3", b"c")
        seen = [tuple(sorted((await anext(events)).keys)) for _ in range(5)]
        assert seen == [("user:1",), ("order:1", "user:2"), ("order:count",), ("user:1",), ("user:3",)]
        assert all(change.origin == replica.origin for change in [await anext(aiter(users))])
        if "keys" in capabilities(cache):
            await writer.invalidate("order:*")
            change = await anext(events)
            assert (change.keys, change.pattern) == ((), "order:*")
        filtered = aiter(users)
        user_keys = [(await anext(filtered)).keys for _ in range(3)]  # after the first one read above
        assert user_keys == [("user:2",), ("user:1",), ("user:3",)]


async def test_invalidation_feed_across_replicas(shared_cache: CacheHarness) -> None:
    first, second = await shared_cache.replica(), await shared_cache.replica()
    writer, reader = first.client(), second.client()
    await writer.set("shared", b"1")
    assert await reader.get("shared") == b"1"  # replicas share the data
    if "invalidation-feed" not in capabilities(shared_cache):
        assert "invalidation-feed-local" in capabilities(shared_cache)
        return  # memcached: a replica's feed covers its own changes only, and says so
    async with reader.watch_invalidations() as feed:
        await writer.set("shared", b"2")
        change = await anext(aiter(feed))
        assert change.keys == ("shared",)
        assert change.origin == first.origin


async def test_large_values(cache: CacheHarness) -> None:
    client = (await cache.replica()).client()
    limit = (await client.describe()).max_value_bytes
    big = bytes(range(256)) * (limit // 256) + b"x" * (limit % 256)
    assert len(big) == limit
    assert await client.set("big", big)
    assert await client.get("big") == big
    await client.mset({"big:2": big})
    assert await client.mget(["big:2"]) == {"big:2": big}
    with pytest.raises(InvalidCacheArgument, match=r"^value: "):
        await client.set("too-big", big + b"!")


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda c: c.get(""), "key"),
        (lambda c: c.set("x" * 1025, b""), "key"),
        (lambda c: c.set("k", b"", ttl=-1), "ttl_ms"),
        (lambda c: c.set("k", b"", nx=True, xx=True), "nx"),
        (lambda c: c.mget(["a", ""]), r"keys\[1\]"),
        (lambda c: c.mget([f"k{i}" for i in range(1001)]), "keys"),
        (lambda c: c.mset({"": b""}), r"values\[''\]"),
        (lambda c: c.delete(""), "key"),
        (lambda c: c.incr(""), "key"),
        (lambda c: c.acquire("", ttl=1), "name"),
        (lambda c: c.acquire("lock", ttl=0), "ttl_ms"),
        (lambda c: c.acquire("lock", ttl=1, wait=-1), "wait_ms"),
    ],
)
async def test_bad_input_names_the_field(cache: CacheHarness, call: object, field: str) -> None:
    client = (await cache.replica()).client()
    with pytest.raises(InvalidCacheArgument, match=rf"^{field}: ") as caught:
        await call(client)  # type: ignore[operator]
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT


async def test_bad_patterns_and_callers(cache: CacheHarness) -> None:
    replica = await cache.replica()
    client = replica.client()
    if "keys" in capabilities(cache):
        for pattern in ("", "user:[abc", "trailing\\", "[]"):
            with pytest.raises(InvalidCacheArgument, match=r"^pattern: "):
                await client.keys(pattern)
            with pytest.raises(InvalidCacheArgument, match=r"^pattern: "):
                await client.invalidate(pattern)
    with pytest.raises(InvalidCacheArgument, match=r"^pattern: "):
        async with client.watch_invalidations("user:[abc"):
            pass
    stub = replica.stub()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Get(pb.GetRequest(key="k"), metadata=(("upf-caller", "../etc"),))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (caught.value.details() or "").startswith("upf-caller: ")


async def test_namespaces_keep_callers_apart(cache: CacheHarness) -> None:
    replica = await cache.replica()
    alpha, beta, anonymous = replica.client("alpha"), replica.client("beta"), replica.client(None)
    await alpha.set("k", b"alpha's")
    await beta.set("k", b"beta's")
    assert await alpha.get("k") == b"alpha's"
    assert await beta.get("k") == b"beta's"
    assert await anonymous.get("k") is None  # "default" namespace
    assert await alpha.incr("n") == 1
    assert await beta.incr("n") == 1
    lock = await alpha.acquire("l", ttl=30)
    assert lock is not None
    with pytest.raises(LockNotHeld):
        await beta.release(lock)  # even with alpha's token, beta reaches only its own locks
    other = await beta.acquire("l", ttl=30)  # beta's lock of the same name is another lock
    assert other is not None
    await alpha.release(lock)
    if "keys" in capabilities(cache):
        assert sorted(await beta.keys("*")) == ["k", "n"]
        assert await beta.invalidate("*") == 2
        assert await alpha.get("k") == b"alpha's"
    async with beta.watch_invalidations() as feed:
        await alpha.set("k", b"unseen by beta")
        await beta.set("mine", b"1")
        assert (await anext(aiter(feed))).keys == ("mine",)  # alpha's change came first and was not sent


async def test_backend_dies_mid_call_then_recovers(killable_cache: Crashable) -> None:
    harness = killable_cache.harness
    replica = await harness.replica()
    client, other = replica.client(timeout=10), replica.client(timeout=10)
    await client.set("k", b"before")
    held = await client.acquire("busy", ttl=60)
    assert held is not None
    feed_watch = other.watch_invalidations()
    await feed_watch.__aenter__()
    waiting = asyncio.create_task(other.acquire("busy", ttl=60, wait=30))  # polls the backend meanwhile

    async def waiting_on_the_backend() -> bool:
        return replica.counted.calls["acquire_lock"] >= 3  # alice's grant, then at least two tries of bob's

    await poll(waiting_on_the_backend, what="the lock wait to reach the backend")
    assert not waiting.done()

    killable_cache.kill()
    with pytest.raises(CacheUnavailable) as caught:
        await waiting  # cut off in the middle of its wait
    assert caught.value.code == grpc.StatusCode.UNAVAILABLE
    assert "Traceback" not in str(caught.value)
    with pytest.raises(CacheUnavailable):
        await client.get("k")
    with pytest.raises(CacheUnavailable):
        await client.set("k", b"during")
    if "invalidation-feed" in {c for c in (await client.describe()).capabilities}:
        with pytest.raises(CacheUnavailable):  # a feed over the backend says it was cut
            await anext(aiter(feed_watch))
    await feed_watch.__aexit__(None, None, None)

    killable_cache.start()  # the same port, empty: the plugin was not restarted

    async def answers() -> bool:
        try:
            return await client.set("k", b"after")
        except CacheUnavailable:
            return False

    await poll(answers, timeout=15, what="the plugin to reach its backend again")
    assert await client.get("k") == b"after"
    assert await client.incr("n") == 1


async def test_backend_down_from_the_start_then_up(killable_cache: Crashable) -> None:
    killable_cache.kill()  # before the plugin ever reached it
    client = (await killable_cache.harness.replica()).client(timeout=10)
    with pytest.raises(CacheUnavailable) as caught:
        await client.get("k")
    assert killable_cache.harness.backend in str(caught.value).lower()  # "Redis at ... is unavailable"
    assert "Traceback" not in str(caught.value)
    killable_cache.start()

    async def answers() -> bool:
        try:
            return await client.set("k", b"v")
        except CacheUnavailable:
            return False

    await poll(answers, timeout=15, what="the plugin to reach its backend")


def test_manifest_names_match_the_cli() -> None:
    assert tuple(f"cache-{b}" for b in BACKENDS) == CACHE_PLUGINS
    for backend in BACKENDS:
        assert re.fullmatch(rf"cache-{backend}", load_manifest(manifest_of(backend)).id)


async def test_a_backend_that_stops_answering_is_unavailable_within_the_timeout_then_recovers(
    killable_cache: Crashable,
) -> None:
    client = (await killable_cache.harness.replica()).client(timeout=10)
    await client.set("k", b"before")
    killable_cache.pause()
    try:
        started = time.monotonic()
        with pytest.raises(CacheUnavailable) as caught:
            await client.get("k")
        # The plugin's own deadline (TIMEOUT), not the caller's 10 s, ended the call.
        assert time.monotonic() - started < 5
        assert caught.value.code == grpc.StatusCode.UNAVAILABLE
        with pytest.raises(CacheUnavailable):
            await client.incr("n")
    finally:
        killable_cache.resume()

    async def answers() -> bool:
        try:
            return await client.get("k") == b"before"
        except CacheUnavailable:
            return False

    await poll(answers, timeout=15, what="the plugin to be answered again")
    # The increment cut off above reached the paused server's socket and may have been applied: one
    # that answered UNAVAILABLE is "unknown", as a timed-out write is anywhere.
    assert await client.incr("n") in (1, 2)
