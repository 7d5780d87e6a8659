"""The embedded store: one SQLite file (or ":memory:") through aiosqlite.

One connection, and an asyncio lock around each operation: aiosqlite runs statements on its own
thread in order, but two coroutines' transactions would otherwise interleave on the one connection.
Several processes may share a file (WAL mode; writers wait up to busy_timeout for each other).
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiosqlite

from plugins.auth.store.base import KeySchedule, RefreshToken, SigningKey, StoreUnavailable, User

__all__ = ["SqliteAuthStore"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS auth_users (
    id TEXT PRIMARY KEY,
    username TEXT NOT NULL UNIQUE,
    email TEXT NOT NULL DEFAULT '',
    name TEXT NOT NULL DEFAULT '',
    password_hash TEXT NOT NULL,
    disabled INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS auth_roles (name TEXT PRIMARY KEY);
CREATE TABLE IF NOT EXISTS auth_role_permissions (
    role TEXT NOT NULL REFERENCES auth_roles(name) ON DELETE CASCADE,
    permission TEXT NOT NULL,
    PRIMARY KEY (role, permission)
);
CREATE TABLE IF NOT EXISTS auth_user_roles (
    user_id TEXT NOT NULL REFERENCES auth_users(id) ON DELETE CASCADE,
    role TEXT NOT NULL,
    PRIMARY KEY (user_id, role)
);
CREATE TABLE IF NOT EXISTS auth_refresh_tokens (
    token_hash TEXT PRIMARY KEY,
    family TEXT NOT NULL,
    user_id TEXT NOT NULL,
    issued_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    access_expires_at INTEGER NOT NULL,
    used INTEGER NOT NULL DEFAULT 0,
    revoked INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS auth_refresh_tokens_family ON auth_refresh_tokens (family);
CREATE INDEX IF NOT EXISTS auth_refresh_tokens_expires_at ON auth_refresh_tokens (expires_at);
CREATE TABLE IF NOT EXISTS auth_signing_keys (
    kid TEXT PRIMARY KEY,
    alg TEXT NOT NULL,
    private_pem TEXT NOT NULL,
    created_at REAL NOT NULL,
    signs_from REAL NOT NULL,
    retired_at REAL
);
"""

_USER_COLUMNS = "id, username, email, name, password_hash, disabled, created_at"
_TOKEN_COLUMNS = "token_hash, family, user_id, issued_at, expires_at, access_expires_at, used, revoked"
# signs_from is NULL in a row of a file from before keys were published ahead: that key signed from its creation.
_KEY_COLUMNS = "kid, alg, private_pem, created_at, COALESCE(signs_from, created_at), retired_at"


def _user(row: Iterable[Any]) -> User:
    id_, username, email, name, password_hash, disabled, created_at = row
    return User(id_, username, email, name, password_hash, bool(disabled), created_at)


def _token(row: Iterable[Any]) -> RefreshToken:
    token_hash, family, user_id, issued_at, expires_at, access_expires_at, used, revoked = row
    return RefreshToken(
        token_hash, family, user_id, issued_at, expires_at, access_expires_at, bool(used), bool(revoked)
    )


class SqliteAuthStore:
    def __init__(self, path: str | Path = ":memory:", *, busy_timeout: float = 5.0) -> None:
        self._path = str(path)
        self._busy_timeout = busy_timeout
        self._db: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        if self._db is not None:
            return
        if self._path != ":memory:" and not self._path.startswith("file:"):
            Path(self._path).parent.mkdir(parents=True, exist_ok=True)
        try:
            # isolation_level=None: no implicit transactions; the ones we need are explicit (BEGIN IMMEDIATE).
            db = await aiosqlite.connect(self._path, isolation_level=None)
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"cannot open the SQLite store {self._path}: {exc}") from exc
        self._db = db
        async with self._use() as db:
            await db.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout * 1000)}")
            await db.execute("PRAGMA foreign_keys = ON")
            if self._path != ":memory:":
                await db.execute("PRAGMA journal_mode = WAL")
            await db.executescript(_SCHEMA)
        async with self._transaction() as db:
            # A file from before keys were published ahead; in a transaction, as another process may add it too.
            async with db.execute("SELECT name FROM pragma_table_info('auth_signing_keys')") as cursor:
                columns = {name for (name,) in await cursor.fetchall()}
            if "signs_from" not in columns:
                await db.execute("ALTER TABLE auth_signing_keys ADD COLUMN signs_from REAL")

    async def close(self) -> None:
        if self._db is not None:
            db, self._db = self._db, None
            await db.close()

    @asynccontextmanager
    async def _use(self) -> AsyncIterator[aiosqlite.Connection]:
        if self._db is None:
            raise StoreUnavailable("the SQLite store is not started")
        async with self._lock:
            try:
                yield self._db
            except sqlite3.IntegrityError:
                raise
            except sqlite3.Error as exc:
                raise StoreUnavailable(f"the SQLite store {self._path} failed: {exc}") from exc

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        async with self._use() as db:
            # IMMEDIATE takes the write lock at once, so that a read-then-write cannot be overtaken
            # by another process sharing the file.
            await db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                await db.execute("ROLLBACK")
                raise
            await db.execute("COMMIT")

    async def _fetchone(self, sql: str, args: tuple[Any, ...]) -> Any:
        async with self._use() as db, db.execute(sql, args) as cursor:
            return await cursor.fetchone()

    async def _fetchall(self, sql: str, args: tuple[Any, ...]) -> list[Any]:
        async with self._use() as db, db.execute(sql, args) as cursor:
            return list(await cursor.fetchall())

    async def _write(self, sql: str, args: tuple[Any, ...]) -> int:
        async with self._use() as db, db.execute(sql, args) as cursor:
            return cursor.rowcount

    # Users

    async def add_user(self, user: User) -> bool:
        sql = f"INSERT INTO auth_users ({_USER_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING"
        args = (user.id, user.username, user.email, user.name, user.password_hash, int(user.disabled), user.created_at)
        return await self._write(sql, args) == 1

    async def user_by_id(self, user_id: str) -> User | None:
        row = await self._fetchone(f"SELECT {_USER_COLUMNS} FROM auth_users WHERE id = ?", (user_id,))
        return None if row is None else _user(row)

    async def user_by_name(self, username: str) -> User | None:
        row = await self._fetchone(f"SELECT {_USER_COLUMNS} FROM auth_users WHERE username = ?", (username,))
        return None if row is None else _user(row)

    async def update_user(
        self,
        user_id: str,
        *,
        email: str | None = None,
        name: str | None = None,
        password_hash: str | None = None,
        disabled: bool | None = None,
    ) -> bool:
        fields = {"email": email, "name": name, "password_hash": password_hash, "disabled": disabled}
        changes = {column: value for column, value in fields.items() if value is not None}
        if not changes:
            return await self.user_by_id(user_id) is not None
        assignments = ", ".join(f"{column} = ?" for column in changes)  # column names are ours, not input
        values = tuple(int(v) if isinstance(v, bool) else v for v in changes.values())
        return await self._write(f"UPDATE auth_users SET {assignments} WHERE id = ?", (*values, user_id)) == 1

    # Roles

    async def put_role(self, role: str, permissions: list[str]) -> None:
        async with self._transaction() as db:
            await db.execute("INSERT INTO auth_roles (name) VALUES (?) ON CONFLICT DO NOTHING", (role,))
            await db.execute("DELETE FROM auth_role_permissions WHERE role = ?", (role,))
            await db.executemany(
                "INSERT INTO auth_role_permissions (role, permission) VALUES (?, ?) ON CONFLICT DO NOTHING",
                [(role, permission) for permission in permissions],
            )

    async def roles(self) -> dict[str, list[str]]:
        rows = await self._fetchall(
            "SELECT r.name, p.permission FROM auth_roles r LEFT JOIN auth_role_permissions p ON p.role = r.name "
            "ORDER BY r.name, p.permission",
            (),
        )
        roles: dict[str, list[str]] = {}
        for name, permission in rows:
            granted = roles.setdefault(name, [])
            if permission is not None:
                granted.append(permission)
        return roles

    async def set_user_roles(self, user_id: str, roles: list[str]) -> None:
        async with self._transaction() as db:
            await db.execute("DELETE FROM auth_user_roles WHERE user_id = ?", (user_id,))
            await db.executemany(
                "INSERT INTO auth_user_roles (user_id, role) VALUES (?, ?) ON CONFLICT DO NOTHING",
                [(user_id, role) for role in roles],
            )

    async def user_roles(self, user_id: str) -> list[str]:
        rows = await self._fetchall("SELECT role FROM auth_user_roles WHERE user_id = ? ORDER BY role", (user_id,))
        return [role for (role,) in rows]

    async def user_permissions(self, user_id: str) -> list[str]:
        rows = await self._fetchall(
            "SELECT DISTINCT p.permission FROM auth_user_roles u JOIN auth_role_permissions p ON p.role = u.role "
            "WHERE u.user_id = ? ORDER BY p.permission",
            (user_id,),
        )
        return [permission for (permission,) in rows]

    # Refresh tokens

    async def add_refresh_token(self, token: RefreshToken) -> None:
        await self._write(
            f"INSERT INTO auth_refresh_tokens ({_TOKEN_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                token.token_hash, token.family, token.user_id, token.issued_at, token.expires_at,
                token.access_expires_at, int(token.used), int(token.revoked),
            ),
        )  # fmt: skip

    async def refresh_token(self, token_hash: str) -> RefreshToken | None:
        row = await self._fetchone(
            f"SELECT {_TOKEN_COLUMNS} FROM auth_refresh_tokens WHERE token_hash = ?", (token_hash,)
        )
        return None if row is None else _token(row)

    async def spend_refresh_token(self, token_hash: str) -> bool:
        sql = "UPDATE auth_refresh_tokens SET used = 1 WHERE token_hash = ? AND used = 0 AND revoked = 0"
        return await self._write(sql, (token_hash,)) == 1

    async def revoke_family(self, family: str) -> int:
        sql = "UPDATE auth_refresh_tokens SET revoked = 1 WHERE family = ? AND revoked = 0"
        return await self._write(sql, (family,))

    async def family_expiry(self, family: str) -> int | None:
        row = await self._fetchone("SELECT MAX(access_expires_at) FROM auth_refresh_tokens WHERE family = ?", (family,))
        return None if row is None or row[0] is None else int(row[0])

    async def delete_expired_refresh_tokens(self, now: int) -> int:
        return await self._write("DELETE FROM auth_refresh_tokens WHERE expires_at < ?", (now,))

    # Signing keys

    async def signing_keys(self) -> list[SigningKey]:
        rows = await self._fetchall(f"SELECT {_KEY_COLUMNS} FROM auth_signing_keys ORDER BY created_at DESC", ())
        return [SigningKey(*row) for row in rows]

    async def schedule_signing_key(self, candidate: SigningKey, schedule: KeySchedule, *, now: float) -> SigningKey:
        async with self._transaction() as db:
            async with db.execute(
                f"SELECT {_KEY_COLUMNS} FROM auth_signing_keys WHERE retired_at IS NULL "
                "ORDER BY COALESCE(signs_from, created_at) DESC LIMIT 1"
            ) as cursor:
                row = await cursor.fetchone()
            last = None if row is None else SigningKey(*row)
            signs_from = schedule.successor_signs_from(last, now)
            if signs_from is None:
                assert last is not None  # no key at all always needs one
                return last
            await db.execute(
                "UPDATE auth_signing_keys SET retired_at = ? WHERE retired_at IS NULL OR retired_at > ?",
                (signs_from, signs_from),
            )
            await db.execute(
                "INSERT INTO auth_signing_keys (kid, alg, private_pem, created_at, signs_from) VALUES (?, ?, ?, ?, ?)",
                (candidate.kid, candidate.alg, candidate.private_pem, candidate.created_at, signs_from),
            )
        return replace(candidate, signs_from=signs_from, retired_at=None)

    async def delete_signing_keys_retired_by(self, when: float) -> int:
        return await self._write(
            "DELETE FROM auth_signing_keys WHERE retired_at IS NOT NULL AND retired_at <= ?", (when,)
        )
