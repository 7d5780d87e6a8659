"""storage-mysql: JSON documents in MariaDB (10.5+) or MySQL (8+) through an asyncmy pool.

Strings compare with utf8mb4_nopad_bin (code point order, trailing spaces significant), as on the
other backends; sessions run READ COMMITTED, so a conditional write that finds no row takes no gap
lock and two writers of a new record race on the primary key instead of deadlocking.

The pool is made on first use and again after a failed start; connections that broke are closed
before they go back to the pool, so calls recover by themselves when the server is back.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import unquote, urlsplit

import asyncmy
from asyncmy.errors import IntegrityError, InterfaceError, OperationalError

from plugins.storage.backend import TABLE, SqlSession
from plugins.storage.errors import BackendUnavailable, TransactionAborted
from plugins.storage.query import Path, Scalar

__all__ = ["MysqlBackend", "MysqlDialect", "parse_mysql_url"]

logger = logging.getLogger(__name__)

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS {TABLE} (
    ns VARCHAR(128) NOT NULL,
    collection VARCHAR(64) NOT NULL,
    id VARCHAR(255) NOT NULL,
    data JSON NOT NULL,
    version BIGINT NOT NULL,
    PRIMARY KEY (ns, collection, id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_nopad_bin
"""

_DUPLICATE_KEY = 1062
_RETRYABLE = {1205, 1213}  # lock wait timeout, deadlock: the transaction was rolled back
_TEXT = "utf8mb4_nopad_bin"


class MysqlDialect:
    def placeholder(self, index: int) -> str:
        return "%s"

    def _path(self, path: Path) -> str:
        # Segments are checked identifiers (query._SEGMENT), so they are safe inside the literal.
        return "'$." + ".".join(path) + "'"

    def kind(self, path: Path) -> str:
        return (
            f"(CASE JSON_TYPE(JSON_EXTRACT(data, {self._path(path)})) WHEN 'NULL' THEN 1 WHEN 'BOOLEAN' THEN 2 "
            "WHEN 'INTEGER' THEN 3 WHEN 'UNSIGNED INTEGER' THEN 3 WHEN 'DOUBLE' THEN 3 WHEN 'STRING' THEN 4 "
            "WHEN 'ARRAY' THEN 5 WHEN 'OBJECT' THEN 5 ELSE 0 END)"
        )

    def num(self, path: Path) -> str:
        p = self._path(path)
        return (
            f"(CASE JSON_TYPE(JSON_EXTRACT(data, {p})) WHEN 'INTEGER' THEN CAST(JSON_VALUE(data, {p}) AS DOUBLE) "
            f"WHEN 'UNSIGNED INTEGER' THEN CAST(JSON_VALUE(data, {p}) AS DOUBLE) "
            f"WHEN 'DOUBLE' THEN CAST(JSON_VALUE(data, {p}) AS DOUBLE) "
            f"WHEN 'BOOLEAN' THEN IF(JSON_EXTRACT(data, {p}) = 'true', 1e0, 0e0) ELSE 0e0 END)"
        )

    def text(self, path: Path) -> str:
        p = self._path(path)
        return (
            f"(CASE JSON_TYPE(JSON_EXTRACT(data, {p})) WHEN 'STRING' THEN JSON_UNQUOTE(JSON_EXTRACT(data, {p})) "
            f"ELSE '' END COLLATE {_TEXT})"
        )

    def prefix(self, text_sql: str, marker: str, length: int) -> str:
        # LEFT counts characters (code points), like SQLite's substr and PostgreSQL's left.
        return f"LEFT({text_sql}, {int(length)}) = ({marker} COLLATE {_TEXT})"

    def equality_hint(self, path: Path, value: Scalar, param: Callable[[Any], str]) -> str | None:
        # One JSON_VALUE (the unescaped scalar) instead of the three JSON_EXTRACTs of kind and text:
        # for the ~all rows that do not match, MariaDB's AND stops here.
        if isinstance(value, str):
            return f"JSON_VALUE(data, {self._path(path)}) = ({param(value)} COLLATE {_TEXT})"
        return None

    def text_param(self, marker: str) -> str:
        return f"({marker} COLLATE {_TEXT})"


class MysqlSession(SqlSession):
    dialect = MysqlDialect()

    def __init__(self, namespace: str, connection: Any) -> None:
        super().__init__(namespace)
        self._connection = connection

    async def fetch(self, sql: str, params: Sequence[Any]) -> list[Sequence[Any]]:
        async with self._connection.cursor() as cursor:
            await cursor.execute(sql, list(params))
            return list(await cursor.fetchall())

    async def execute(self, sql: str, params: Sequence[Any]) -> int:
        async with self._connection.cursor() as cursor:
            return int(await cursor.execute(sql, list(params)))

    async def insert_new(self, collection: str, record_id: str, data: str) -> bool:
        try:
            await self.execute(
                f"INSERT INTO {TABLE} (ns, collection, id, data, version) VALUES (%s, %s, %s, %s, 1)",
                [self.namespace, collection, record_id, data],
            )
        except IntegrityError as exc:
            if exc.args and exc.args[0] == _DUPLICATE_KEY:
                return False
            raise
        return True

    # On a duplicate key, LAST_INSERT_ID(expr) hands the new version back in the OK packet, so an
    # upsert is one statement: 1 row affected = inserted (version 1), 2 = updated (version = insert id).
    _UPSERT = (
        f"INSERT INTO {TABLE} (ns, collection, id, data, version) VALUES (%s, %s, %s, %s, 1) "
        "ON DUPLICATE KEY UPDATE data = VALUES(data), version = LAST_INSERT_ID(version + 1)"
    )

    async def upsert(self, collection: str, record_id: str, data: str) -> int:
        async with self._connection.cursor() as cursor:
            affected = await cursor.execute(self._UPSERT, [self.namespace, collection, record_id, data])
            return 1 if affected == 1 else int(cursor.lastrowid)

    async def upsert_many(self, collection: str, items: Sequence[tuple[str, str]]) -> None:
        async with self._connection.cursor() as cursor:
            # executemany turns this into multi-row INSERTs (one round trip per ~max_allowed_packet), but
            # only when VALUES holds nothing but placeholders: the initial version is a parameter too.
            await cursor.executemany(
                f"INSERT INTO {TABLE} (ns, collection, id, data, version) VALUES (%s, %s, %s, %s, %s) "
                "ON DUPLICATE KEY UPDATE data = VALUES(data), version = version + 1",
                [(self.namespace, collection, record_id, data, 1) for record_id, data in items],
            )


def parse_mysql_url(url: str) -> dict[str, Any]:
    """mysql://user:password@host:port/database -> asyncmy.connect keyword arguments."""
    parts = urlsplit(url)
    if parts.scheme not in ("mysql", "mariadb") or not parts.path.strip("/"):
        raise ValueError(f"not a MySQL URL (mysql://user:password@host:port/database): {url}")
    return {
        "host": parts.hostname or "127.0.0.1",
        "port": parts.port or 3306,
        "user": unquote(parts.username or "root"),
        "password": unquote(parts.password or ""),
        "database": parts.path.strip("/"),
    }


class MysqlBackend:
    name = "mysql"

    def __init__(self, url: str, *, max_size: int = 10, connect_timeout: float = 5.0) -> None:
        self.url = url
        self._connect_args = parse_mysql_url(url)
        self._max_size = max_size
        self._connect_timeout = connect_timeout
        self._pool: Any = None
        self._pool_lock = asyncio.Lock()

    async def start(self) -> None:
        # When the database is down, calls answer UNAVAILABLE and each one tries again.
        try:
            await self._ensure_pool()
        except BackendUnavailable as exc:
            logger.warning("%s; calls answer UNAVAILABLE until it can be reached", exc)

    async def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            await self._pool.wait_closed()
            self._pool = None

    async def _ensure_pool(self) -> Any:
        async with self._pool_lock:
            if self._pool is not None:
                return self._pool
            try:
                pool = await asyncio.wait_for(
                    asyncmy.create_pool(
                        minsize=1,
                        maxsize=self._max_size,
                        charset="utf8mb4",
                        autocommit=True,
                        connect_timeout=self._connect_timeout,
                        init_command="SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED",
                        **self._connect_args,
                    ),
                    self._connect_timeout,
                )
                async with pool.acquire() as connection, connection.cursor() as cursor:
                    # Asked first: CREATE TABLE IF NOT EXISTS on an existing table logs a server warning.
                    await cursor.execute(
                        "SELECT 1 FROM information_schema.tables WHERE table_schema = DATABASE() AND table_name = %s",
                        [TABLE],
                    )
                    if not await cursor.fetchall():
                        await cursor.execute(_SCHEMA)
            except (OSError, TimeoutError, OperationalError, InterfaceError) as exc:
                raise BackendUnavailable(f"MariaDB/MySQL is unreachable: {exc}") from None
            self._pool = pool
            return pool

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[Any]:
        pool = await self._ensure_pool()
        try:
            async with pool.acquire() as connection:
                try:
                    yield connection
                except BaseException:
                    if connection.get_transaction_status():
                        connection.close()  # never hand a half-done transaction to the next caller
                    raise
        except OperationalError as exc:
            if exc.args and exc.args[0] in _RETRYABLE:
                raise TransactionAborted(f"MariaDB rolled the transaction back ({exc.args[1]}); retry it") from None
            raise BackendUnavailable(f"MariaDB/MySQL is unreachable: {exc.args[-1] if exc.args else exc}") from None
        except (OSError, TimeoutError, InterfaceError) as exc:
            raise BackendUnavailable(f"MariaDB/MySQL is unreachable: {exc or type(exc).__name__}") from None

    @asynccontextmanager
    async def session(self, namespace: str, *, readonly: bool = False) -> AsyncIterator[SqlSession]:
        async with self._connection() as connection:
            yield MysqlSession(namespace, connection)

    @asynccontextmanager
    async def transaction(self, namespace: str) -> AsyncIterator[SqlSession]:
        async with self._connection() as connection:
            await connection.begin()
            try:
                yield MysqlSession(namespace, connection)
            except BaseException:
                try:
                    await asyncio.shield(connection.rollback())
                except Exception:
                    connection.close()
                raise
            await connection.commit()
