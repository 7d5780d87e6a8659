"""`upf plugin storage-sqlite` as a real process with a real registry, and a business plugin that finds
it through its manifest's `requires: IStorage` with `await plugin.storage()`."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from upf.registry.v1 import registry_pb2 as pb

from plugins.sdk import Plugin, Timings
from tests.support.processes import Process, _died, free_port, wait_until
from tests.support.registry_process import RunningRegistry, run_registry

UPF = str(Path(sys.executable).parent / "upf")
FAST = {"leaseTtl": 1.5, "health": {"interval": 0.2, "timeout": 0.5, "successesBeforeHealthy": 1}}

BUSINESS_MANIFEST = """\
id: notes-plugin
version: 0.1.0
name: Notes
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


async def test_storage_plugin_registers_and_serves_a_business_plugin(tmp_path: Path) -> None:
    with run_registry(FAST, tmp_path) as registry:
        env = {key: value for key, value in os.environ.items() if not key.startswith("UPF_")}
        env["UPF_REGISTRATION_CREDENTIAL"] = registry.credential("storage-sqlite")
        args = [UPF, "plugin", "storage-sqlite", "--dsn", str(tmp_path / "s.sqlite3"), "--registry", registry.target]
        process = Process([*args, "--port", str(free_port())], env=env, log=tmp_path / "storage-plugin.log")
        try:
            wait_until(
                lambda: storage_routed(registry) or (not process.alive() and _died(process)),
                what="storage-sqlite to be registered and healthy",
            )
            manifest = tmp_path / "notes.yaml"
            manifest.write_text(BUSINESS_MANIFEST)
            notes = Plugin(
                manifest,
                [],
                registry=registry.target,
                timings=Timings(stop_notice=0),
                handle_signals=False,
                credential=registry.credential,
            )
            running = asyncio.create_task(notes.run())
            await notes.started.wait()
            try:
                storage = await notes.storage()
                assert await storage.set("notes", "n1", {"text": "hello"}) == 1
                record = await storage.get("notes", "n1")
                assert record is not None
                assert record.data == {"text": "hello"}
            finally:
                await notes.stop()
                await running
        finally:
            assert process.stop() == 0, process.output()
