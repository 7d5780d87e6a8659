"""A files plugin run inside another process (`upf run`), from a deployment file's `config:`.

    files = EmbeddedFiles("files-local", {"httpPort": 8081}, registry="127.0.0.1:50052", credential=...)
    task = asyncio.create_task(files.run()); await files.started.wait(); ...; await files.stop()

The backend is opened inside run() (the S3 and GCS clients belong to the event loop that uses them).
files-local without a `root` keeps its files in a temporary directory that is removed when it stops,
like the rest of the embedded defaults, which keep nothing once `upf run` ends; its signed URLs are
served by its own listener (url_server.py) on `httpHost:httpPort` (default 127.0.0.1, any free port),
and start with `publicUrl` when a proxy publishes that listener elsewhere.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from plugins.files.kinds import KINDS, LocalSettings, make, settings_from_config
from plugins.files.plugin import MANIFESTS, FilesPlugin, PluginOptions
from plugins.sdk import Timings
from plugins.sdk.credentials import Credential
from plugins.sdk.tracing import Traced, untraced

__all__ = ["EmbeddedFiles", "check_config"]


def check_config(kind: str, config: Mapping[str, Any], where: str) -> None:
    """ValueError naming the key, for a config the plugin would refuse."""
    settings_from_config(kind, config, where, root=Path("."))


class EmbeddedFiles:
    def __init__(
        self, kind: str, config: Mapping[str, Any], *, registry: str, credential: Credential, traced: Traced = untraced
    ) -> None:
        if kind not in KINDS:
            raise ValueError(f"not a files plugin: {kind}")
        self._temporary = kind == "files-local" and "root" not in config
        self._root = Path(tempfile.mkdtemp(prefix="upf-files-")) if self._temporary else Path(".")
        self.settings = settings_from_config(kind, config, f"infrastructure.files.config ({kind})", root=self._root)
        self._options = PluginOptions(
            manifest=MANIFESTS / f"{kind}.yaml",
            registry=registry,
            credential=credential,
            timings=Timings(drain_grace=1.0),
            handle_signals=False,
        )
        self._traced = traced  # applied to the SDK plugin once it is made, before it starts
        self.started = asyncio.Event()
        self.files: FilesPlugin | None = None
        self._stopping = False

    async def run(self) -> None:
        try:
            self.files = await make(self.settings, self._options)
            self._traced(self.files.plugin)
            if self._stopping:
                return
            running = asyncio.create_task(self.files.run())
            ready = asyncio.create_task(self.files.ready.wait())
            await asyncio.wait({running, ready}, return_when=asyncio.FIRST_COMPLETED)
            if self.files.ready.is_set():
                self.started.set()
            ready.cancel()
            await running
        finally:
            if self._temporary and isinstance(self.settings, LocalSettings):
                await asyncio.to_thread(shutil.rmtree, self._root, True)

    async def stop(self) -> None:
        self._stopping = True
        if self.files is not None:
            await self.files.stop()
