"""`upf plugin storage-sqlite` as a real process with a real registry, and business plugins that find
it through their manifest's `requires: IStorage` with `await plugin.storage()`."""

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
from upf.registry.v1 import registry_pb2 as pb

from plugins.sdk import Plugin, Timings
from plugins.sdk.storage import StorageClient, StorageError
from plugins.storage.plugin import build, options_from_config
from plugins.storage.postgres import PostgresBackend
from tests.support.processes import Process, _died, free_port, wait_until
from tests.support.registry_process import RunningRegistry, run_registry

UPF = str(Path(sys.executable).parent / "upf")
FAST = {"leaseTtl": 1.5, "health": {"interval": 0.2, "timeout": 0.5, "successesBeforeHealthy": 1}}

BUSINESS_MANIFEST = """\
id: {plugin_id}
version: 0.1.0
name: A plugin that keeps notes
type: business
provides: []
requires:
  - interface: IStorage
    version: ^1.0.0
"""


def storage_routed(registry: RunningRegistry) -> bool:
    reply = registry.stub.ListPlugins(pb.ListPluginsRequest(), timeout=2)
    return any(
        p.plugin_id == "storage-sqlite" and any(i.health == pb.HEALTH_STATE_HEALTHY for i in p.instances)
        for p in reply.plugins
    )


@contextmanager
def storage_plugin(registry: RunningRegistry, tmp_path: Path, **env_extra: str) -> Iterator[str]:
    """`upf plugin storage-sqlite` registered and healthy; its endpoint."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("UPF_")}
    env["UPF_REGISTRATION_CREDENTIAL"] = registry.credential("storage-sqlite")
    env.update(env_extra)
    port = free_port()
    args = [UPF, "plugin", "storage-sqlite", "--dsn", str(tmp_path / "s.sqlite3"), "--registry", registry.target]
    process = Process([*args, "--port", str(port)], env=env, log=tmp_path / f"storage-plugin-{port}.log")
    try:
        wait_until(
            lambda: storage_routed(registry) or (not process.alive() and _died(process)),
            what="storage-sqlite to be registered and healthy",
        )
        yield f"127.0.0.1:{port}"
    finally:
        assert process.stop() == 0, process.output()


@asynccontextmanager
async def business_plugin(registry: RunningRegistry, tmp_path: Path, plugin_id: str) -> AsyncIterator[StorageClient]:
    """A registered plugin that requires IStorage; its StorageClient from `await plugin.storage()`."""
    manifest = tmp_path / f"{plugin_id}.yaml"
    manifest.write_text(BUSINESS_MANIFEST.format(plugin_id=plugin_id))
    plugin = Plugin(
        manifest,
        [],
        registry=registry.target,
        timings=Timings(stop_notice=0),
        handle_signals=False,
        credential=registry.credential,
    )
    running = asyncio.create_task(plugin.run())
    await plugin.started.wait()
    try:
        yield await plugin.storage()
    finally:
        await plugin.stop()
        await running


async def test_storage_plugin_registers_and_serves_a_business_plugin(tmp_path: Path) -> None:
    with run_registry(FAST, tmp_path) as registry, storage_plugin(registry, tmp_path):
        async with business_plugin(registry, tmp_path, "notes-plugin") as storage:
            assert await storage.set("notes", "n1", {"text": "hello"}) == 1
            record = await storage.get("notes", "n1")
            assert record is not None
            assert record.data == {"text": "hello"}


async def test_verified_callers_keep_their_records_apart(tmp_path: Path) -> None:
    with (
        run_registry(FAST, tmp_path) as registry,
        storage_plugin(registry, tmp_path) as endpoint,
    ):
        async with (
            business_plugin(registry, tmp_path, "notes-plugin") as notes,
            business_plugin(registry, tmp_path, "todo-plugin") as todo,
        ):
            await notes.set("items", "shared-id", {"owner": "notes"})
            assert await todo.get("items", "shared-id") is None
            assert await todo.set("items", "shared-id", {"owner": "todo"}, expected_version=0) == 1
            assert (await notes.get("items", "shared-id")).data == {"owner": "notes"}  # type: ignore[union-attr]

        # Claiming a name is not enough any more: without the registry's token the call is refused.
        async with grpc.aio.insecure_channel(endpoint) as channel:
            impostor = StorageClient(channel, metadata=[("upf-caller", "notes-plugin")])
            with pytest.raises(StorageError) as refused:
                await impostor.get("items", "shared-id")
            assert refused.value.code == grpc.StatusCode.UNAUTHENTICATED


def test_a_deployment_files_config_becomes_the_plugins_options() -> None:
    config = {"connectionString": "postgresql://app@db:5432/orders", "maxConnections": 20, "collections": ["orders"]}
    options = options_from_config(config, "infrastructure.storage.config")
    assert options == {"dsn": "postgresql://app@db:5432/orders", "max_connections": 20, "collections": ["orders"]}
    plugin = build("storage-postgres", **options, handle_signals=False)
    assert isinstance(plugin.backend, PostgresBackend)
    assert plugin.backend.dsn == "postgresql://app@db:5432/orders"
    bad_configs: list[tuple[dict[str, Any], str]] = [
        ({"connectionUrl": "x"}, "infrastructure.storage.config.connectionUrl: not a storage setting"),
        ({"maxConnections": 0}, "infrastructure.storage.config.maxConnections: must be a whole number"),
        ({"collections": "orders"}, "infrastructure.storage.config.collections: must be a list"),
    ]
    for bad, message in bad_configs:
        with pytest.raises(ValueError, match=message):
            options_from_config(bad, "infrastructure.storage.config")
