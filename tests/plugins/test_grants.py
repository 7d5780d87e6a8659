"""Sharing between plugins by grant: `upf plugin storage-sqlite` and `upf plugin cache-memory` as real
processes with a real registry, and three registered plugins. orders-plugin's manifest grants
billing-plugin read access to its "orders" collection and read-write access to its "orders:" keys;
audit-plugin is granted nothing. The storage and cache plugins read the grants from the registry, so
what the callers send decides only whose data they ask for, never what they may do with it."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

from plugins.sdk import DependencyUnavailable, Plugin, Timings
from plugins.sdk.cache import CacheClient, CacheError
from plugins.sdk.storage import StorageClient, StorageError
from tests.conformance.cache.harness import poll
from tests.support.processes import Process, free_port
from tests.support.registry_process import RunningRegistry, run_registry

UPF = str(Path(sys.executable).parent / "upf")
FAST = {"leaseTtl": 1.5, "health": {"interval": 0.2, "timeout": 0.5, "successesBeforeHealthy": 1}}
OWNER = "orders-plugin"
GRANTS = {
    "storage": [{"collection": "orders", "plugins": ["billing-plugin"], "access": "read"}],
    "cache": [{"keyPrefix": "orders:", "plugins": ["billing-plugin"], "access": "read-write"}],
}


@pytest.fixture(scope="module")
def registry(work_dir: Path) -> Iterator[RunningRegistry]:
    with run_registry(FAST, work_dir) as running_registry:
        yield running_registry


@contextmanager
def infrastructure(registry: RunningRegistry, work_dir: Path, name: str, *args: str) -> Iterator[Process]:
    port = free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith("UPF_")}
    env["UPF_REGISTRATION_CREDENTIAL"] = registry.credential(name)
    command = [UPF, "plugin", name, "--registry", registry.target, "--port", str(port), "--drain-grace", "1", *args]
    process = Process(command, env=env, log=work_dir / f"{name}-{port}.log")
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="module")
def storage_and_cache(registry: RunningRegistry, work_dir: Path) -> Iterator[tuple[Process, Process]]:
    dsn = str(work_dir / f"grants-{free_port()}.sqlite3")
    with (
        infrastructure(registry, work_dir, "storage-sqlite", "--dsn", dsn) as storage,
        infrastructure(registry, work_dir, "cache-memory") as cache,
    ):
        yield storage, cache


def plugin(registry: RunningRegistry, work_dir: Path, plugin_id: str, grants: dict[str, Any] | None = None) -> Plugin:
    """A plugin registered for real (in this process) that requires IStorage and ICache."""
    manifest: dict[str, Any] = {
        "id": plugin_id,
        "version": "0.1.0",
        "name": plugin_id,
        "type": "business",
        "requires": [{"interface": "IStorage", "version": "^1"}, {"interface": "ICache", "version": "^1"}],
    }
    if grants is not None:
        manifest["grants"] = grants
    path = work_dir / f"{plugin_id}-{free_port()}.yaml"
    path.write_text(yaml.safe_dump(manifest))
    return Plugin(
        path,
        [],
        registry=registry.target,
        handle_signals=False,
        timings=Timings(stop_notice=0, drain_grace=0.1, resolve_cache_ttl=0.1),
        credential=registry.credential,
    )


@asynccontextmanager
async def running(plugin: Plugin, infrastructure: tuple[Process, Process]) -> AsyncIterator[Plugin]:
    task = asyncio.create_task(plugin.run())
    try:
        await plugin.started.wait()

        async def reachable() -> bool:
            assert all(p.alive() for p in infrastructure), [p.output() for p in infrastructure]
            try:
                await plugin.storage()
                await plugin.cache()
            except DependencyUnavailable:
                return False
            return bool(plugin.identity_token())

        await poll(reachable, timeout=15, what=f"{plugin.manifest.id} to reach storage and cache")
        yield plugin
    finally:
        await plugin.stop()
        await task


async def refused(call: Any) -> str:
    """The message of the PERMISSION_DENIED that `call` must end with."""
    with pytest.raises((StorageError, CacheError)) as caught:
        await call
    assert isinstance(caught.value, StorageError | CacheError)
    assert caught.value.code == grpc.StatusCode.PERMISSION_DENIED, caught.value
    return str(caught.value)


async def read_then_write(storage: StorageClient) -> None:
    async with storage.transaction() as tx:
        assert await tx.get("orders", "o-1") is not None
        await tx.set("orders", "o-1", {"total": 0})


async def test_a_grant_in_the_owners_manifest_is_all_that_opens_its_data(
    registry: RunningRegistry, work_dir: Path, storage_and_cache: tuple[Process, Process]
) -> None:
    async with (
        running(plugin(registry, work_dir, OWNER, GRANTS), storage_and_cache) as orders,
        running(plugin(registry, work_dir, "billing-plugin"), storage_and_cache) as billing,
        running(plugin(registry, work_dir, "audit-plugin"), storage_and_cache) as audit,
    ):
        own = await orders.storage()
        await own.set("orders", "o-1", {"total": 42})
        await own.set("invoices", "i-1", {"total": 42})

        # Read access to the granted collection, in every reading call.
        shared: StorageClient = await billing.storage(owner=OWNER)
        record = await shared.get("orders", "o-1")
        assert record is not None
        assert record.data == {"total": 42}
        assert await shared.exists("orders", "o-1")
        assert [r.id for r in (await shared.query("orders")).records] == ["o-1"]
        # Its own namespace is still its own: billing has no "orders" records of its own.
        assert await (await billing.storage()).get("orders", "o-1") is None

        # A read grant is not a write grant.
        message = await refused(shared.set("orders", "o-2", {"total": 1}))
        assert "orders-plugin grants billing-plugin read access to collection 'orders', not read-write" in message
        await refused(shared.delete("orders", "o-1"))
        await refused(shared.stream_set("orders", [("o-3", {})]))
        # Another collection of the owner is not granted.
        message = await refused(shared.get("invoices", "i-1"))
        assert "no access to collection 'invoices'" in message
        assert "'orders' (read)" in message  # what it does grant, to find the mistake
        # Inside a transaction, each operation is checked too.
        assert "not read-write" in await refused(read_then_write(shared))
        assert (await own.get("orders", "o-1")).data == {"total": 42}  # type: ignore[union-attr]

        # A plugin the owner granted nothing gets nothing.
        message = await refused((await audit.storage(owner=OWNER)).get("orders", "o-1"))
        assert "orders-plugin grants audit-plugin nothing in storage" in message

        # The cache: read-write on the granted prefix, for keys, locks and patterns alike.
        await (await orders.cache()).set("orders:count", b"1")
        await (await orders.cache()).set("secret", b"s")
        cache: CacheClient = await billing.cache(owner=OWNER)
        assert await cache.get("orders:count") == b"1"
        assert await cache.incr("orders:count") == 2
        assert await (await orders.cache()).get("orders:count") == b"2"
        assert sorted(await cache.keys("orders:*")) == ["orders:count"]
        lock = await cache.acquire("orders:nightly", ttl=60)
        assert lock is not None
        await cache.release(lock)
        assert "no access to key 'secret'" in await refused(cache.get("secret"))
        await refused(cache.keys("*"))  # a pattern reaching beyond the prefix
        await refused(cache.acquire("nightly", ttl=60))
        await refused((await audit.cache(owner=OWNER)).get("orders:count"))


async def test_a_grant_dropped_by_re_registering_stops_access(
    registry: RunningRegistry, work_dir: Path, storage_and_cache: tuple[Process, Process]
) -> None:
    async with (
        running(plugin(registry, work_dir, OWNER, GRANTS), storage_and_cache) as orders,
        running(plugin(registry, work_dir, "billing-plugin"), storage_and_cache) as billing,
    ):
        await (await orders.storage()).set("orders", "o-9", {"total": 9})
        shared = await billing.storage(owner=OWNER)
        assert await shared.get("orders", "o-9") is not None

        # A new instance of the owner registers a manifest without the grant: the registry now holds
        # that one, and the storage plugin follows within the second it caches grants for.
        async with running(plugin(registry, work_dir, OWNER), storage_and_cache):

            async def access_ended() -> bool:
                try:
                    await shared.get("orders", "o-9")
                except StorageError as exc:
                    return exc.code == grpc.StatusCode.PERMISSION_DENIED and "grants billing-plugin nothing" in str(exc)
                return False

            await poll(access_ended, timeout=10, what="the dropped grant to take effect")
