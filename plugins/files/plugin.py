"""A files plugin as a process on the plugin SDK: one servicer (service.py) over one backend.

    files = build(backend, PluginOptions(registry=..., manifest=MANIFESTS / "files-s3.yaml"))
    await files.run()     # until SIGTERM/SIGINT or `await files.stop()`; the backend is closed after

files-local also runs its signed-URL listener (url_server.py) for as long as the plugin runs.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from upf.files.v1 import files_pb2_grpc

from manifests import ManifestError
from plugins.files.backend import Backend
from plugins.files.service import FilesService, NamespaceOf
from plugins.files.url_server import SignedUrlServer
from plugins.sdk import Plugin, RegistrationRejected, Timings
from plugins.sdk.credentials import Credential
from plugins.sdk.grants import RegistryGrants, Sharing
from plugins.sdk.identity import RegistryCallers

__all__ = ["MANIFESTS", "FilesPlugin", "PluginOptions", "build", "run_files_plugin"]

MANIFESTS = Path(__file__).with_name("manifests")


@dataclass(frozen=True, slots=True)
class PluginOptions:
    """What every files plugin takes, whatever its backend."""

    manifest: Path
    registry: str = "127.0.0.1:50052"
    host: str = "127.0.0.1"
    port: int = 0
    instance_id: str | None = None
    credential: Credential | None = None
    timings: Timings = field(default_factory=Timings)
    handle_signals: bool = True


class FilesPlugin:
    """The backend, the SDK plugin serving it and (files-local) the signed-URL listener, started and
    stopped together."""

    def __init__(
        self,
        plugin: Plugin,
        backend: Backend,
        callers: RegistryCallers,
        url_server: SignedUrlServer | None = None,
        grants: RegistryGrants | None = None,
    ) -> None:
        self.plugin = plugin
        self.backend = backend
        self._callers = callers
        self._grants = grants
        self._url_server = url_server
        self.ready = asyncio.Event()  # set once the gRPC server (and the URL listener) serve

    async def run(self) -> None:
        try:
            if self._url_server is not None:
                await self._url_server.start()
            serving = asyncio.create_task(self.plugin.run())
            started = asyncio.create_task(self.plugin.started.wait())
            await asyncio.wait({serving, started}, return_when=asyncio.FIRST_COMPLETED)
            if self.plugin.started.is_set():
                self.ready.set()
            started.cancel()
            await serving
        finally:
            if self._url_server is not None:
                await self._url_server.stop()
            await self.backend.close()
            await self._callers.close()
            if self._grants is not None:
                await self._grants.close()

    @property
    def started(self) -> asyncio.Event:
        """Set once it serves (the name every plugin's start-up event has)."""
        return self.ready

    async def stop(self) -> None:
        await self.plugin.stop()


def build(
    backend: Backend,
    options: PluginOptions,
    *,
    url_server: SignedUrlServer | None = None,
    namespace_of: NamespaceOf | None = None,
) -> FilesPlugin:
    """The plugin for `backend`; callers' namespaces come from their identity tokens (`namespace_of`
    replaces that only where no registry signs tokens), and another plugin's files are reached as far as
    its manifest, as the registry holds it, grants."""
    callers = RegistryCallers(options.registry, call_timeout=options.timings.call_timeout)
    if namespace_of is None:
        namespace_of = callers
    grants = RegistryGrants(options.registry)
    service = FilesService(backend, namespace_of, Sharing("files", grants))
    plugin = Plugin(
        options.manifest,
        [(files_pb2_grpc.add_FilesServicer_to_server, service)],
        registry=options.registry,
        host=options.host,
        port=options.port,
        instance_id=options.instance_id,
        timings=options.timings,
        handle_signals=options.handle_signals,
        credential=options.credential,
    )
    return FilesPlugin(plugin, backend, callers, url_server, grants)


def run_files_plugin(make: Callable[[], Awaitable[FilesPlugin]]) -> int:
    """Build (in the event loop: backends open clients there) and run; the exit status, with errors a
    person can act on."""

    async def run() -> None:
        files = await make()
        await files.run()

    try:
        asyncio.run(run())
    except ManifestError as exc:
        print(f"upf: invalid manifest:\n{exc}", file=sys.stderr)
        return 1
    except (RegistrationRejected, OSError, ValueError) as exc:
        print(f"upf: {exc}", file=sys.stderr)
        return 1
    return 0
