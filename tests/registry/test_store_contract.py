"""One contract for every PluginStore: memory and Redis (the shared server; fails when it is down)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest

from registry.model import Check, Health, InstanceRecord, InstanceView, Phase
from registry.store.base import PluginStore
from registry.store.memory import MemoryPluginStore
from registry.store.redis import RedisPluginStore
from tests.support.redis_server import SHARED_URL, new_prefix, shared_client

MANIFEST = '{"id":"a","version":"1.0.0","name":"A","type":"business"}'


def record(instance_id: str = "a-1", lease_id: str = "lease-1") -> InstanceRecord:
    return InstanceRecord(instance_id, "a", MANIFEST, "127.0.0.1:1", lease_id, 100.0, 1.0)


def view(instance_id: str = "a-1", health: Health = Health.HEALTHY) -> InstanceView:
    return InstanceView(instance_id, "a", "1.0.0", "127.0.0.1:1", health, Phase.READY, "", ("IX",))


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[PluginStore]:
    if request.param == "memory":
        yield MemoryPluginStore(history=3)
        return
    shared_client().close()  # fails the test, with the reason, when Redis is not there
    redis_store = RedisPluginStore.from_url(SHARED_URL, prefix=new_prefix(), history=3)
    try:
        yield redis_store
    finally:
        await redis_store.delete_all()
        await redis_store.close()


async def test_records_round_trip_and_replace_forgets_the_old_lease(store: PluginStore) -> None:
    await store.put(record())
    assert await store.get("a-1") == record()
    assert await store.instance_for_lease("lease-1") == "a-1"
    await store.put(record(lease_id="lease-2"))
    assert await store.instance_for_lease("lease-1") is None
    assert await store.instance_for_lease("lease-2") == "a-1"
    assert [r.instance_id for r in await store.all()] == ["a-1"]


async def test_field_updates_apply_only_to_existing_records(store: PluginStore) -> None:
    await store.put(record())
    assert await store.set_lease("a-1", 200.5)
    assert await store.set_phase("a-1", Phase.STOPPING)
    assert await store.set_check("a-1", Check(True, "", True))
    got = await store.get("a-1")
    assert got is not None
    assert (got.lease_expires_at, got.phase, got.check) == (200.5, Phase.STOPPING, Check(True, "", True))
    assert await store.remove("a-1")
    assert not await store.remove("a-1")
    assert not await store.set_phase("a-1", Phase.READY)
    assert await store.get("a-1") is None
    assert await store.instance_for_lease("lease-1") is None


async def test_publish_is_compare_and_set_with_increasing_revisions(store: PluginStore) -> None:
    assert await store.publish("a-1", view()) == 1
    assert await store.publish("a-1", view()) is None  # unchanged: no new revision
    assert await store.publish("a-1", view(health=Health.UNHEALTHY)) == 2
    assert await store.publish("a-1", None) == 3
    assert await store.publish("a-1", None) is None
    changes = await store.changes_since(await store.epoch(), 0)
    assert changes is not None
    assert [(c.revision, c.kind, c.view.health) for c in changes] == [
        (1, "updated", Health.HEALTHY),
        (2, "updated", Health.UNHEALTHY),
        (3, "removed", Health.UNHEALTHY),
    ]
    assert changes[0].view == view()
    assert await store.snapshot() == (await store.epoch(), 3, [])


async def test_history_is_bounded_and_a_lost_revision_asks_for_a_snapshot(store: PluginStore) -> None:
    for n in range(5):
        await store.publish(f"a-{n}", view(f"a-{n}"))
    epoch = await store.epoch()
    assert await store.changes_since(epoch, 1) is None  # revisions 2.. are no longer all retained (history 3)
    kept = await store.changes_since(epoch, 2)
    assert kept is not None
    assert [c.revision for c in kept] == [3, 4, 5]
    assert await store.changes_since(epoch, 5) == []
    assert await store.changes_since(epoch, 99) is None  # from a store that was reset
    snapshot_epoch, revision, views = await store.snapshot()
    assert (snapshot_epoch, revision) == (epoch, 5)
    assert [v.instance_id for v in views] == [f"a-{n}" for n in range(5)]


async def test_a_revision_of_another_epoch_is_never_answered_with_changes(store: PluginStore) -> None:
    epoch = await store.epoch()
    assert epoch
    for n in range(3):
        await store.publish(f"a-{n}", view(f"a-{n}"))
    assert await store.epoch() == epoch  # publishing continues the history
    assert await store.changes_since(epoch, 1) is not None
    # Revision 1 exists here, but the one asked about is of another history.
    assert await store.changes_since("another-epoch", 1) is None
    assert await store.changes_since("", 1) is None


async def test_wait_returns_at_once_when_already_past(store: PluginStore) -> None:
    await store.publish("a-1", view())
    epoch = await store.epoch()
    # wait() returns quietly on its timeout too, so only the time taken tells the two apart.
    # "another-epoch" is another history: past whatever it held.
    for waited_epoch, revision in [(epoch, 0), ("another-epoch", 1)]:
        started = time.monotonic()
        await store.wait(waited_epoch, revision, timeout=30)
        elapsed = time.monotonic() - started
        assert elapsed < 1, f"wait({waited_epoch!r}, {revision}) took {elapsed:.1f} s"
    await store.wait(epoch, 1, timeout=0.01)  # nothing past revision 1 yet: returns on its timeout


async def test_each_memory_store_is_a_history_of_its_own() -> None:
    one, two = MemoryPluginStore(), MemoryPluginStore()
    await one.publish("a-1", view())
    await two.publish("b-1", view("b-1"))
    assert await one.epoch() != await two.epoch()
    assert await two.changes_since(await one.epoch(), 0) is None


async def test_redis_epoch_is_kept_by_every_store_on_the_keys_and_renewed_when_they_are_lost() -> None:
    shared_client().close()
    prefix = new_prefix()
    first = RedisPluginStore.from_url(SHARED_URL, prefix=prefix)
    again = RedisPluginStore.from_url(SHARED_URL, prefix=prefix)  # a restarted or second replica
    try:
        await first.publish("a-1", view())
        await first.publish("a-2", view("a-2"))
        epoch = await first.epoch()
        assert await again.epoch() == epoch
        resumed = await again.changes_since(epoch, 1)
        assert resumed is not None
        assert [(c.revision, c.view.instance_id) for c in resumed] == [(2, "a-2")]
        await first.delete_all()  # the data is lost: a new history, revisions from 1 again
        for n in range(3):
            await again.publish(f"b-{n}", view(f"b-{n}"))
        renewed = await first.epoch()
        assert renewed != epoch
        assert await first.changes_since(epoch, 1) is None  # revision 1 exists, in another history
        assert (await first.snapshot())[:2] == (renewed, 3)
        await first.delete_all()
        assert await first.epoch() not in (epoch, renewed)  # reading alone makes one
    finally:
        await first.delete_all()
        await first.close()
        await again.close()


async def test_the_signing_key_is_the_first_one_stored(store: PluginStore) -> None:
    first = await store.signing_key(b"\x01" * 32)
    assert first == b"\x01" * 32
    assert await store.signing_key(b"\x02" * 32) == first


async def test_registries_sharing_a_redis_store_share_its_signing_key() -> None:
    shared_client().close()
    prefix = new_prefix()
    one = RedisPluginStore.from_url(SHARED_URL, prefix=prefix)
    two = RedisPluginStore.from_url(SHARED_URL, prefix=prefix)
    try:
        key = await one.signing_key(b"\x03" * 32)
        assert await two.signing_key(b"\x04" * 32) == key == b"\x03" * 32
    finally:
        await one.delete_all()
        await one.close()
        await two.close()
