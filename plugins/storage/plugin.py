"""The storage plugins as processes: `upf plugin storage-sqlite|storage-postgres|storage-mysql`.

Each is the same servicer (service.py) over another backend, registered with its own manifest
(manifests/storage-*.yaml). The backend connects before the plugin registers; when the database is
down the plugin still starts, answers UNAVAILABLE, and works as soon as the database is back.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from upf.storage.v1 import storage_pb2_grpc

from plugins.sdk import Plugin, Timings, run_plugin
from plugins.sdk.credentials import Credential
from plugins.sdk.grants import RegistryGrants, Sharing
from plugins.sdk.identity import RegistryCallers
from plugins.storage.backend import Backend
from plugins.storage.mysql import MysqlBackend
from plugins.storage.postgres import PostgresBackend
from plugins.storage.service import NamespaceOf, StorageService
from plugins.storage.sqlite import SqliteBackend

__all__ = ["BACKENDS", "DEFAULT_DSNS", "StoragePlugin", "build", "main", "manifest_of", "options_from_config"]

MANIFESTS = Path(__file__).with_name("manifests")
DSN_ENV = "UPF_STORAGE_DSN"
COLLECTIONS_ENV = "UPF_STORAGE_COLLECTIONS"  # comma-separated: only these collections (others are refused)
# 1/true: namespaces from the registry-signed caller identity (namespaces.py) instead of upf-caller.

BACKENDS: dict[str, Callable[[str, int], Backend]] = {
    "storage-sqlite": lambda path, _pool: SqliteBackend(path),  # one connection: SQLite has one writer
    "storage-postgres": lambda dsn, pool: PostgresBackend(dsn, max_size=pool),
    "storage-mysql": lambda url, pool: MysqlBackend(url, max_size=pool),
}
DEFAULT_MAX_CONNECTIONS = 10
DEFAULT_DSNS = {
    "storage-sqlite": "upf-storage.sqlite3",
    "storage-postgres": "postgresql://postgres@127.0.0.1:5432/upf",
    "storage-mysql": "mysql://root@127.0.0.1:3306/upf",
}


def manifest_of(name: str) -> Path:
    return MANIFESTS / f"{name}.yaml"


class StoragePlugin(Plugin):
    """A Plugin that opens its backend before serving and closes it after the last call drained."""

    def __init__(
        self,
        backend: Backend,
        manifest_path: str | Path,
        servicers: Any,
        *,
        verified_namespaces: RegistryCallers | None = None,
        grants: RegistryGrants | None = None,
        **options: Any,
    ) -> None:
        super().__init__(manifest_path, servicers, **options)
        self.backend = backend
        self._verified_namespaces = verified_namespaces
        self._grants = grants

    async def run(self) -> None:
        await self.backend.start()
        try:
            await super().run()
        finally:
            await self.backend.close()
            if self._verified_namespaces is not None:
                await self._verified_namespaces.close()
            if self._grants is not None:
                await self._grants.close()


def build(
    name: str,
    dsn: str | None = None,
    *,
    registry: str = "127.0.0.1:50052",
    host: str = "127.0.0.1",
    port: int = 0,
    instance_id: str | None = None,
    manifest: str | Path | None = None,
    drain_grace: float = 10.0,
    collections: Sequence[str] | None = None,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
    namespace_of: NamespaceOf | None = None,
    handle_signals: bool = True,
    credential: Credential | None = None,
) -> StoragePlugin:
    """The plugin `name` (a key of BACKENDS). Each caller's records live in the namespace of its plugin
    id, from the identity token the registry signed for it (`namespace_of` replaces that, in tests); a
    caller reaches another plugin's collections as far as that plugin's manifest grants, as the registry
    holds it."""
    backend = BACKENDS[name](dsn or os.environ.get(DSN_ENV) or DEFAULT_DSNS[name], max_connections)
    if collections is None and os.environ.get(COLLECTIONS_ENV):
        collections = [c.strip() for c in os.environ[COLLECTIONS_ENV].split(",") if c.strip()]
    verified: RegistryCallers | None = None
    if namespace_of is None:
        namespace_of = verified = RegistryCallers(registry)
    grants = RegistryGrants(registry)
    sharing = Sharing("storage", grants)
    service = StorageService(backend, namespace_of=namespace_of, collections=collections, sharing=sharing)
    return StoragePlugin(
        backend,
        manifest or manifest_of(name),
        [(storage_pb2_grpc.add_StorageServicer_to_server, service)],
        registry=registry,
        host=host,
        port=port,
        instance_id=instance_id,
        timings=Timings(drain_grace=drain_grace),
        handle_signals=handle_signals,
        verified_namespaces=verified,
        grants=grants,
        credential=credential,
    )


# The seed's deployment.yaml keys (infrastructure.storage.config) -> build()'s keyword arguments.
_CONFIG_KEYS = {"connectionString": "dsn", "maxConnections": "max_connections", "collections": "collections"}


def options_from_config(config: Mapping[str, Any], where: str = "config") -> dict[str, Any]:
    """build() keyword arguments from a deployment file's `config:` of a storage plugin; ValueError
    naming the key for anything else."""
    options: dict[str, Any] = {}
    for key, value in config.items():
        if key not in _CONFIG_KEYS:
            raise ValueError(f"{where}.{key}: not a storage setting (one of {', '.join(_CONFIG_KEYS)})")
        if key == "connectionString" and not (isinstance(value, str) and value):
            raise ValueError(f"{where}.{key}: must be a database URL or, for storage-sqlite, a file path")
        if key == "maxConnections" and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{where}.{key}: must be a whole number of at least 1")
        if key == "collections" and not (isinstance(value, list) and all(isinstance(c, str) for c in value)):
            raise ValueError(f"{where}.{key}: must be a list of collection names")
        options[_CONFIG_KEYS[key]] = value
    return options


def main(name: str, dsn: str | None = None, **options: Any) -> int:
    """Run until SIGTERM/SIGINT; the exit status (0 after a graceful stop, 1 for an invalid manifest)."""
    try:
        return run_plugin(lambda: build(name, dsn, **options))
    except ValueError as exc:  # a DSN that is not one
        print(f"upf: {exc}", file=sys.stderr)
        return 2
