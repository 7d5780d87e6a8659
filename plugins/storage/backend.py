"""What the servicer needs from a database, and the SQL that is the same on all three.

A `Backend` hands out sessions: `session()` for one call outside a transaction, `transaction()` for
one that commits when its block ends and rolls back when it raises. A backend turns its driver's
"cannot reach the server" errors into BackendUnavailable and keeps a pool that reconnects by itself.

`SqlSession` is the storage model in SQL over one table (every namespace and collection in it, the
namespace first in the key); a backend's session supplies fetch/execute and the two writes whose SQL
differs (insert-if-absent and upsert).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, Protocol

from plugins.storage.errors import VersionConflict
from plugins.storage.query import Dialect, Plan, compile_count, compile_page

__all__ = ["TABLE", "Backend", "Page", "SqlSession", "StoredRecord"]

TABLE = "upf_storage_records"


@dataclass(frozen=True, slots=True)
class StoredRecord:
    id: str
    data: str
    version: int


@dataclass(frozen=True, slots=True)
class Page:
    records: list[StoredRecord]
    keys: list[tuple[Any, ...]]  # the sort key of each record: a cursor can point after any of them
    more: bool  # records follow the last one


class Backend(Protocol):
    name: str

    async def start(self) -> None:
        """Connect and create the table; a backend that is down is not an error here (calls say so)."""

    async def close(self) -> None: ...

    def session(self, namespace: str, *, readonly: bool = False) -> AbstractAsyncContextManager[SqlSession]:
        """One call's worth of work, each statement committed by itself; `readonly`: it only reads."""

    def transaction(self, namespace: str) -> AbstractAsyncContextManager[SqlSession]:
        """Committed when the block ends, rolled back when it raises (a cancel included)."""


class SqlSession(ABC):
    dialect: Dialect

    def __init__(self, namespace: str) -> None:
        self.namespace = namespace

    @abstractmethod
    async def fetch(self, sql: str, params: Sequence[Any]) -> list[Sequence[Any]]: ...

    @abstractmethod
    async def execute(self, sql: str, params: Sequence[Any]) -> int:
        """Run a statement; the number of rows it changed."""

    @abstractmethod
    async def insert_new(self, collection: str, record_id: str, data: str) -> bool:
        """Insert at version 1 unless the record exists; whether it was inserted."""

    @abstractmethod
    async def upsert(self, collection: str, record_id: str, data: str) -> int:
        """Insert at version 1 or replace and bump the version, atomically; the new version."""

    async def upsert_many(self, collection: str, items: Sequence[tuple[str, str]]) -> None:
        """Unconditional writes of (id, data) pairs; backends override it with a bulk statement."""
        for record_id, data in items:
            await self.upsert(collection, record_id, data)

    def _p(self, index: int) -> str:
        return self.dialect.placeholder(index)

    def _json(self, index: int) -> str:
        return self.dialect.placeholder(index)

    async def get(self, collection: str, record_id: str) -> StoredRecord | None:
        rows = await self.fetch(
            f"SELECT id, data, version FROM {TABLE} WHERE ns = {self._p(1)} AND collection = {self._p(2)} "
            f"AND id = {self._p(3)}",
            [self.namespace, collection, record_id],
        )
        return _record(rows[0]) if rows else None

    async def get_many(self, collection: str, ids: Sequence[str]) -> list[StoredRecord]:
        if not ids:
            return []
        markers = ", ".join(self._p(3 + i) for i in range(len(ids)))
        rows = await self.fetch(
            f"SELECT id, data, version FROM {TABLE} WHERE ns = {self._p(1)} AND collection = {self._p(2)} "
            f"AND id IN ({markers})",
            [self.namespace, collection, *ids],
        )
        found = {row[0]: _record(row) for row in rows}
        return [found[i] for i in dict.fromkeys(ids) if i in found]

    async def version_of(self, collection: str, record_id: str) -> int | None:
        rows = await self.fetch(
            f"SELECT version FROM {TABLE} WHERE ns = {self._p(1)} AND collection = {self._p(2)} AND id = {self._p(3)}",
            [self.namespace, collection, record_id],
        )
        return int(rows[0][0]) if rows else None

    async def put(self, collection: str, record_id: str, data: str, expected: int | None) -> int:
        """Write a record; with `expected` only over that version (0: only if absent). The new version."""
        if expected is None:
            return await self.upsert(collection, record_id, data)
        if expected == 0:
            if await self.insert_new(collection, record_id, data):
                return 1
        else:
            changed = await self.execute(
                f"UPDATE {TABLE} SET data = {self._json(1)}, version = version + 1 WHERE ns = {self._p(2)} "
                f"AND collection = {self._p(3)} AND id = {self._p(4)} AND version = {self._p(5)}",
                [data, self.namespace, collection, record_id, expected],
            )
            if changed == 1:
                return expected + 1
        raise VersionConflict(collection, record_id, expected, await self.version_of(collection, record_id))

    async def delete(self, collection: str, record_id: str, expected: int | None) -> bool:
        sql = f"DELETE FROM {TABLE} WHERE ns = {self._p(1)} AND collection = {self._p(2)} AND id = {self._p(3)}"
        params: list[Any] = [self.namespace, collection, record_id]
        if expected is not None:
            sql += f" AND version = {self._p(4)}"
            params.append(expected)
        deleted = await self.execute(sql, params) == 1
        if not deleted and expected is not None:
            actual = await self.version_of(collection, record_id)
            if actual is not None or expected != 0:
                raise VersionConflict(collection, record_id, expected, actual)
        return deleted

    async def exists(self, collection: str, record_id: str) -> bool:
        return await self.version_of(collection, record_id) is not None

    async def page(self, plan: Plan, limit: int) -> Page:
        """Up to `limit` records of the plan, after plan.after, and whether more follow."""
        statement = compile_page(self.dialect, TABLE, self.namespace, plan, limit + 1)
        rows = await self.fetch(statement.text, statement.params)
        more = len(rows) > limit
        rows = rows[:limit]
        keys = [(*(_key_value(i, v) for i, v in enumerate(row[3:])), str(row[0])) for row in rows]
        return Page([_record(row) for row in rows], keys, more)

    async def count(self, plan: Plan) -> int:
        statement = compile_count(self.dialect, TABLE, self.namespace, plan)
        rows = await self.fetch(statement.text, statement.params)
        return int(rows[0][0])


def _record(row: Sequence[Any]) -> StoredRecord:
    data = row[1]
    if isinstance(data, bytes | bytearray):
        data = data.decode("utf-8")
    return StoredRecord(str(row[0]), data, int(row[2]))


def _key_value(index: int, value: Any) -> Any:
    # kind, num, text per sort field: drivers hand back ints, floats, Decimals or strs for them.
    position = index % 3
    if position == 0:
        return int(value)
    if position == 1:
        return float(value)
    return value.decode("utf-8") if isinstance(value, bytes | bytearray) else str(value)
