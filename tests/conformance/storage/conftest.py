"""The implementations the storage suite runs against, each a real grpc.aio server on 127.0.0.1 over its
real backend: a temp SQLite file, a fresh PostgreSQL database, a fresh MariaDB database (random names,
dropped at the end). A database server that cannot be reached fails the suite; it never skips."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncmy
import asyncpg
import grpc
import pytest
from upf.storage.v1 import storage_pb2_grpc

from common.rpc.channel import Channel
from plugins.sdk.storage import StorageClient
from plugins.storage.backend import Backend
from plugins.storage.documents import Limits
from plugins.storage.mysql import MysqlBackend
from plugins.storage.postgres import PostgresBackend
from plugins.storage.service import CALLER_METADATA_KEY, NamespaceOf, StorageService, namespace_from_metadata
from plugins.storage.sqlite import SqliteBackend

POSTGRES = ("127.0.0.1", 5432)
MARIADB = ("127.0.0.1", 3306)
# storage-sqlite twice: a file (reads on their own connection) and :memory: (the embedded default of
# a deployment that names no storage; one connection for everything).
IMPLEMENTATIONS = ["storage-sqlite", "storage-sqlite-memory", "storage-postgres", "storage-mysql"]


def _in_thread(work: Callable[[], Awaitable[None]]) -> None:
    """Run admin statements on a loop of their own: session fixtures are set up from inside a test's loop."""
    with ThreadPoolExecutor(1) as executor:
        executor.submit(asyncio.run, work()).result()  # type: ignore[arg-type]


def _postgres_admin(statement: str) -> None:
    async def run() -> None:
        connection = await asyncpg.connect(f"postgresql://postgres@{POSTGRES[0]}:{POSTGRES[1]}/postgres", timeout=5)
        try:
            await connection.execute(statement)
        finally:
            await connection.close()

    _in_thread(run)


def _mariadb_admin(statement: str) -> None:
    async def run() -> None:
        connection = await asyncmy.connect(
            host=MARIADB[0], port=MARIADB[1], user="root", password="", connect_timeout=5
        )
        try:
            async with connection.cursor() as cursor:
                await cursor.execute(statement)
        finally:
            connection.close()

    _in_thread(run)


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[str]:
    name = f"upf_storage_test_{uuid.uuid4().hex[:12]}"
    try:
        _postgres_admin(f'CREATE DATABASE "{name}"')
    except (OSError, asyncpg.PostgresError) as exc:
        pytest.fail(f"PostgreSQL is not reachable at {POSTGRES[0]}:{POSTGRES[1]} ({exc}); .ci/run starts it")
    try:
        yield name
    finally:
        _postgres_admin(f'DROP DATABASE "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def mariadb_database() -> Iterator[str]:
    name = f"upf_storage_test_{uuid.uuid4().hex[:12]}"
    try:
        _mariadb_admin(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
    except Exception as exc:  # asyncmy's errors are not OSError subclasses
        pytest.fail(f"MariaDB is not reachable at {MARIADB[0]}:{MARIADB[1]} ({exc}); .ci/run starts it")
    try:
        yield name
    finally:
        _mariadb_admin(f"DROP DATABASE `{name}`")


@dataclass
class Implementation:
    """How to make one implementation's backend, given where its database server listens."""

    name: str
    make_backend: Callable[[tuple[str, int] | None], Backend]
    server: tuple[str, int] | None  # the database server, for a proxy to stand in front of; None: embedded


@pytest.fixture(params=IMPLEMENTATIONS)
def implementation(request: pytest.FixtureRequest, tmp_path: Path) -> Implementation:
    return _implementation(request.param, request, tmp_path)


@pytest.fixture(params=[name for name in IMPLEMENTATIONS if not name.startswith("storage-sqlite")])
def server_implementation(request: pytest.FixtureRequest, tmp_path: Path) -> Implementation:
    """The implementations whose database is a server that can go away (not embedded SQLite)."""
    return _implementation(request.param, request, tmp_path)


@pytest.fixture(params=[name for name in IMPLEMENTATIONS if name != "storage-sqlite-memory"])
def streaming_implementation(request: pytest.FixtureRequest, tmp_path: Path) -> Implementation:
    """For the 100k-record stream (the suite's slowest test): SQLite :memory: streams through the same
    service code as the SQLite file, so it is left out to keep the suite's time down."""
    return _implementation(request.param, request, tmp_path)


@pytest.fixture
async def streaming_storage(streaming_implementation: Implementation) -> AsyncIterator[Running]:
    async with serve(streaming_implementation) as running:
        yield running


def _implementation(name: str, request: pytest.FixtureRequest, tmp_path: Path) -> Implementation:
    if name == "storage-sqlite":
        path = str(tmp_path / "storage.sqlite3")
        return Implementation(name, lambda _server: SqliteBackend(path), None)
    if name == "storage-sqlite-memory":
        return Implementation(name, lambda _server: SqliteBackend(":memory:"), None)
    if name == "storage-postgres":
        database = request.getfixturevalue("postgres_database")

        def postgres(server: tuple[str, int] | None) -> Backend:
            host, port = server or POSTGRES
            return PostgresBackend(f"postgresql://postgres@{host}:{port}/{database}", connect_timeout=2)

        return Implementation(name, postgres, POSTGRES)
    database = request.getfixturevalue("mariadb_database")

    def mysql(server: tuple[str, int] | None) -> Backend:
        host, port = server or MARIADB
        return MysqlBackend(f"mysql://root@{host}:{port}/{database}", connect_timeout=2)

    return Implementation(name, mysql, MARIADB)


@dataclass
class Running:
    """A storage server and the clients of a test; each test has namespaces of its own."""

    implementation: Implementation
    backend: Backend
    address: str
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:10])
    channels: list[grpc.aio.Channel] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.implementation.name

    def namespace(self, label: str = "main") -> str:
        return f"t{self.run_id}-{label}"

    def channel(self) -> grpc.aio.Channel:
        # The channel plugins reach their storage with (plugins/sdk/resolve.py).
        channel = Channel(self.address)
        self.channels.append(channel)
        return channel

    def client(self, label: str = "main", **options: Any) -> StorageClient:
        """A client on a channel of its own, in namespace `label` of this test."""
        return StorageClient(self.channel(), metadata=[(CALLER_METADATA_KEY, self.namespace(label))], **options)

    def metadata(self, label: str = "main") -> list[tuple[str, str]]:
        return [(CALLER_METADATA_KEY, self.namespace(label))]


@asynccontextmanager
async def serve(
    implementation: Implementation,
    server: tuple[str, int] | None = None,
    *,
    collections: list[str] | None = None,
    namespace_of: NamespaceOf = namespace_from_metadata,
    limits: Limits | None = None,
) -> AsyncIterator[Running]:
    """The implementation's backend (its database at `server`, default the real one) behind StorageService
    (with only `collections`, when given) on a grpc.aio server on a free port of 127.0.0.1."""
    backend = implementation.make_backend(server)
    await backend.start()
    grpc_server = grpc.aio.server()
    storage_pb2_grpc.add_StorageServicer_to_server(
        StorageService(backend, collections=collections, namespace_of=namespace_of, limits=limits), grpc_server
    )
    port = grpc_server.add_insecure_port("127.0.0.1:0")
    await grpc_server.start()
    running = Running(implementation, backend, f"127.0.0.1:{port}")
    try:
        yield running
    finally:
        for channel in running.channels:
            await channel.close(None)
        await grpc_server.stop(None)
        await backend.close()


@pytest.fixture
async def storage(implementation: Implementation) -> AsyncIterator[Running]:
    async with serve(implementation) as running:
        yield running
