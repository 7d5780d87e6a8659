"""storage-sqlite: the embedded default, one SQLite file (or memory) through aiosqlite.

SQLite has one writer at a time, so the backend keeps one writing connection: single writes share it
(each commits on its own), and a transaction has it to itself for its duration, so long transactions
hold up other writes (the price of an embedded database, and the reason production uses PostgreSQL or
MariaDB). Reads of a file
database go through a second connection without the lock: in WAL mode it sees what was committed,
never a transaction in progress. `:memory:` is one database per connection, so there reads take the
writer's connection and lock too.

synchronous=NORMAL (with WAL): a commit survives the plugin crashing, not the machine losing power in
the moment after it; in exchange a write does not wait for an fsync (about 20x more writes per second).
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import aiosqlite

from plugins.storage.backend import TABLE, SqlSession
from plugins.storage.errors import BackendUnavailable
from plugins.storage.query import Path, Scalar

__all__ = ["SqliteBackend", "SqliteDialect"]

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS {TABLE} (
    ns TEXT NOT NULL,
    collection TEXT NOT NULL,
    id TEXT NOT NULL,
    data TEXT NOT NULL,
    version INTEGER NOT NULL,
    PRIMARY KEY (ns, collection, id)
) WITHOUT ROWID
"""


class SqliteDialect:
    def placeholder(self, index: int) -> str:
        return "?"

    def _path(self, path: Path) -> str:
        # Segments are checked identifiers (query._SEGMENT), so they are safe inside the literal.
        return "'$." + ".".join(path) + "'"

    def kind(self, path: Path) -> str:
        return (
            f"(CASE json_type(data, {self._path(path)}) WHEN 'null' THEN 1 WHEN 'true' THEN 2 WHEN 'false' THEN 2 "
            "WHEN 'integer' THEN 3 WHEN 'real' THEN 3 WHEN 'text' THEN 4 WHEN 'array' THEN 5 WHEN 'object' THEN 5 "
            "ELSE 0 END)"
        )

    def num(self, path: Path) -> str:
        p = self._path(path)
        return (
            f"(CASE json_type(data, {p}) WHEN 'integer' THEN CAST(json_extract(data, {p}) AS REAL) "
            f"WHEN 'real' THEN json_extract(data, {p}) WHEN 'true' THEN 1.0 ELSE 0.0 END)"
        )

    def text(self, path: Path) -> str:
        p = self._path(path)
        return f"(CASE json_type(data, {p}) WHEN 'text' THEN json_extract(data, {p}) ELSE '' END)"

    def prefix(self, text_sql: str, marker: str, length: int) -> str:
        return f"substr({text_sql}, 1, {int(length)}) = {marker}"

    def equality_hint(self, path: Path, value: Scalar, param: Callable[[Any], str]) -> str | None:
        return None  # json_type and json_extract are cheap enough

    def text_param(self, marker: str) -> str:
        return marker


class SqliteSession(SqlSession):
    dialect = SqliteDialect()

    def __init__(self, namespace: str, connection: aiosqlite.Connection) -> None:
        super().__init__(namespace)
        self._connection = connection

    async def fetch(self, sql: str, params: Sequence[Any]) -> list[Sequence[Any]]:
        return list(await self._connection.execute_fetchall(sql, params))  # one trip to aiosqlite's thread

    async def execute(self, sql: str, params: Sequence[Any]) -> int:
        async with self._connection.execute(sql, params) as cursor:
            return cursor.rowcount

    async def insert_new(self, collection: str, record_id: str, data: str) -> bool:
        return (
            await self.execute(
                f"INSERT INTO {TABLE} (ns, collection, id, data, version) VALUES (?, ?, ?, ?, 1) "
                "ON CONFLICT DO NOTHING",
                [self.namespace, collection, record_id, data],
            )
            == 1
        )

    async def upsert(self, collection: str, record_id: str, data: str) -> int:
        rows = await self.fetch(
            f"INSERT INTO {TABLE} (ns, collection, id, data, version) VALUES (?, ?, ?, ?, 1) "
            "ON CONFLICT (ns, collection, id) DO UPDATE SET data = excluded.data, version = version + 1 "
            "RETURNING version",
            [self.namespace, collection, record_id, data],
        )
        return int(rows[0][0])

    async def upsert_many(self, collection: str, items: Sequence[tuple[str, str]]) -> None:
        await self._connection.executemany(
            f"INSERT INTO {TABLE} (ns, collection, id, data, version) VALUES (?, ?, ?, ?, 1) "
            "ON CONFLICT (ns, collection, id) DO UPDATE SET data = excluded.data, version = version + 1",
            [(self.namespace, collection, record_id, data) for record_id, data in items],
        )


class _Gate:
    """The writing connection: plain sessions share it, a transaction has it to itself.

    A plain session's statements each commit on their own (autocommit), and aiosqlite runs the
    statements of all sessions one after another in its thread, so sessions need not wait for each
    other: holding the connection for a whole round trip each made writes 6x slower than the same
    statements sent side by side. What must not happen is a session's statement landing inside another
    caller's BEGIN ... COMMIT, so a transaction waits for the sessions under way and holds off new ones
    (first come, first served: a waiting transaction is not overtaken).
    """

    def __init__(self) -> None:
        self._sessions = 0
        self._exclusive = False
        self._waiting: deque[tuple[bool, asyncio.Future[None]]] = deque()

    @asynccontextmanager
    async def shared(self) -> AsyncIterator[None]:
        if self._exclusive or self._waiting:
            await self._wait(exclusive=False)
        else:
            self._sessions += 1
        try:
            yield
        finally:
            self._sessions -= 1
            self._wake()

    @asynccontextmanager
    async def exclusive(self) -> AsyncIterator[None]:
        if self._exclusive or self._sessions or self._waiting:
            await self._wait(exclusive=True)
        else:
            self._exclusive = True
        try:
            yield
        finally:
            self._exclusive = False
            self._wake()

    async def _wait(self, *, exclusive: bool) -> None:
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append((exclusive, turn))
        try:
            await turn
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled():  # let in, then cancelled: it leaves again
                if exclusive:
                    self._exclusive = False
                else:
                    self._sessions -= 1
            self._wake()
            raise

    def _wake(self) -> None:
        while self._waiting:
            exclusive, turn = self._waiting[0]
            if turn.done():  # its waiter was cancelled
                self._waiting.popleft()
                continue
            if self._exclusive or (exclusive and self._sessions):
                return
            self._waiting.popleft()
            if exclusive:
                self._exclusive = True
                turn.set_result(None)
                return
            self._sessions += 1
            turn.set_result(None)


class SqliteBackend:
    name = "sqlite"

    def __init__(self, path: str = ":memory:") -> None:
        self.path = path
        self._connection: aiosqlite.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()  # opening and closing the connections
        self._gate = _Gate()  # using the writing connection
        self._reader_lock = asyncio.Lock()  # opening it, not using it

    async def start(self) -> None:
        async with self._lock:
            await self._connect()

    async def _connect(self) -> aiosqlite.Connection:
        if self._connection is None:
            try:
                # isolation_level=None: autocommit, with BEGIN/COMMIT written out for transactions.
                connection = await aiosqlite.connect(self.path, isolation_level=None)
                await connection.execute("PRAGMA journal_mode=WAL")
                await connection.execute("PRAGMA synchronous=NORMAL")
                await connection.execute(_SCHEMA)
            except (sqlite3.Error, OSError) as exc:
                raise BackendUnavailable(f"cannot open the SQLite database {self.path}: {exc}") from None
            self._connection = connection
        return self._connection

    async def _read_connection(self) -> aiosqlite.Connection:
        async with self._reader_lock:
            if self._reader is None:
                async with self._lock:
                    await self._connect()  # creates the file and the table first
                try:
                    self._reader = await aiosqlite.connect(self.path, isolation_level=None)
                except (sqlite3.Error, OSError) as exc:
                    raise BackendUnavailable(f"cannot open the SQLite database {self.path}: {exc}") from None
            return self._reader

    async def close(self) -> None:
        async with self._gate.exclusive(), self._lock:
            for connection in (self._connection, self._reader):
                if connection is not None:
                    await connection.close()
            self._connection = self._reader = None

    @asynccontextmanager
    async def session(self, namespace: str, *, readonly: bool = False) -> AsyncIterator[SqlSession]:
        if readonly and self.path != ":memory:":
            try:
                yield SqliteSession(namespace, await self._read_connection())
            except sqlite3.OperationalError as exc:
                raise BackendUnavailable(f"SQLite: {exc}") from None
            return
        async with self._gate.shared():
            async with self._lock:
                connection = await self._connect()
            try:
                yield SqliteSession(namespace, connection)
            except sqlite3.OperationalError as exc:
                raise BackendUnavailable(f"SQLite: {exc}") from None

    @asynccontextmanager
    async def transaction(self, namespace: str) -> AsyncIterator[SqlSession]:
        async with self._gate.exclusive():
            async with self._lock:
                connection = await self._connect()
            await connection.execute("BEGIN IMMEDIATE")
            try:
                yield SqliteSession(namespace, connection)
            except BaseException as exc:
                # Shielded: a second cancel must not leave the one connection inside a transaction.
                await asyncio.shield(connection.execute("ROLLBACK"))
                if isinstance(exc, sqlite3.OperationalError):
                    raise BackendUnavailable(f"SQLite: {exc}") from None
                raise
            await connection.execute("COMMIT")
