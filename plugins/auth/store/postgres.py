"""The production store: PostgreSQL through an asyncpg pool, shared by every plugin replica.

Replicas that start together create the tables under an advisory lock (CREATE TABLE IF NOT EXISTS
is not safe against itself when run concurrently), and key rotation runs under another one, so
that of several replicas that find a successor key due only the first creates one.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from plugins.auth.store.base import KeySchedule, RefreshToken, SigningKey, StoreUnavailable, User

__all__ = ["PostgresAuthStore"]

# pg_advisory_xact_lock keys: arbitrary constants, the same in every replica.
_SCHEMA_LOCK = 0x75706661_0001  # "upfa" + 1
_ROTATION_LOCK = 0x75706661_0002

_SCHEMA = """
CREATE TABLE IF NOT EXISTS auth_users (
    id TEXT PRIMARY KEY,
    username TEXT NOT NULL UNIQUE,
    email TEXT NOT NULL DEFAULT '',
    name TEXT NOT NULL DEFAULT '',
    password_hash TEXT NOT NULL,
    disabled BOOLEAN NOT NULL DEFAULT FALSE,
    created_at DOUBLE PRECISION NOT NULL
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
    issued_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    access_expires_at BIGINT NOT NULL,
    used BOOLEAN NOT NULL DEFAULT FALSE,
    revoked BOOLEAN NOT NULL DEFAULT FALSE
);
CREATE INDEX IF NOT EXISTS auth_refresh_tokens_family ON auth_refresh_tokens (family);
CREATE INDEX IF NOT EXISTS auth_refresh_tokens_expires_at ON auth_refresh_tokens (expires_at);
CREATE TABLE IF NOT EXISTS auth_signing_keys (
    kid TEXT PRIMARY KEY,
    alg TEXT NOT NULL,
    private_pem TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    signs_from DOUBLE PRECISION NOT NULL,
    retired_at DOUBLE PRECISION
);
-- Tables from before keys were published ahead: such a key signed from its creation (see _KEY_COLUMNS).
ALTER TABLE auth_signing_keys ADD COLUMN IF NOT EXISTS signs_from DOUBLE PRECISION;
"""

_USER_COLUMNS = "id, username, email, name, password_hash, disabled, created_at"
_TOKEN_COLUMNS = "token_hash, family, user_id, issued_at, expires_at, access_expires_at, used, revoked"
# signs_from is NULL in a row written by a replica that predates it: that key signed from its creation.
_KEY_COLUMNS = "kid, alg, private_pem, created_at, COALESCE(signs_from, created_at), retired_at"

# What means "the database does not answer" rather than a mistake in our SQL.
_UNAVAILABLE = (OSError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError, asyncpg.CannotConnectNowError)


def _user(row: asyncpg.Record) -> User:
    return User(*row.values())


def _token(row: asyncpg.Record) -> RefreshToken:
    return RefreshToken(*row.values())


def _key(row: asyncpg.Record) -> SigningKey:
    return SigningKey(*row.values())


class PostgresAuthStore:
    def __init__(self, url: str, *, pool_size: int = 10, connect_timeout: float = 5.0) -> None:
        self._url = url
        self._pool_size = pool_size
        self._connect_timeout = connect_timeout
        self._pool: asyncpg.Pool | None = None

    async def start(self) -> None:
        if self._pool is not None:
            return
        try:
            self._pool = await asyncpg.create_pool(
                self._url, min_size=1, max_size=self._pool_size, timeout=self._connect_timeout
            )
        except (*_UNAVAILABLE, asyncpg.PostgresError) as exc:
            raise StoreUnavailable(f"cannot connect to PostgreSQL at {_safe(self._url)}: {exc}") from exc
        async with self._connection() as db, db.transaction():
            await db.execute("SELECT pg_advisory_xact_lock($1)", _SCHEMA_LOCK)
            await db.execute(_SCHEMA)

    async def close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[PoolConnectionProxy[asyncpg.Record]]:
        if self._pool is None:
            raise StoreUnavailable("the PostgreSQL store is not started")
        try:
            async with self._pool.acquire() as db:
                yield db
        except _UNAVAILABLE as exc:
            raise StoreUnavailable(f"PostgreSQL at {_safe(self._url)} does not answer: {exc}") from exc

    async def _fetchrow(self, sql: str, *args: Any) -> asyncpg.Record | None:
        async with self._connection() as db:
            row: asyncpg.Record | None = await db.fetchrow(sql, *args)
            return row

    async def _fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        async with self._connection() as db:
            return list(await db.fetch(sql, *args))

    async def _execute(self, sql: str, *args: Any) -> int:
        """The number of rows the statement touched (from its status, e.g. "UPDATE 3")."""
        async with self._connection() as db:
            status: str = await db.execute(sql, *args)
        return int(status.rsplit(" ", 1)[-1])

    # Users

    async def add_user(self, user: User) -> bool:
        sql = f"INSERT INTO auth_users ({_USER_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING"
        args = (user.id, user.username, user.email, user.name, user.password_hash, user.disabled, user.created_at)
        return await self._execute(sql, *args) == 1

    async def user_by_id(self, user_id: str) -> User | None:
        row = await self._fetchrow(f"SELECT {_USER_COLUMNS} FROM auth_users WHERE id = $1", user_id)
        return None if row is None else _user(row)

    async def user_by_name(self, username: str) -> User | None:
        row = await self._fetchrow(f"SELECT {_USER_COLUMNS} FROM auth_users WHERE username = $1", username)
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
        # Column names are ours, never input; values are parameters.
        assignments = ", ".join(f"{column} = ${n}" for n, column in enumerate(changes, start=2))
        return (
            await self._execute(f"UPDATE auth_users SET {assignments} WHERE id = $1", user_id, *changes.values()) == 1
        )

    # Roles

    async def put_role(self, role: str, permissions: list[str]) -> None:
        async with self._connection() as db, db.transaction():
            await db.execute("INSERT INTO auth_roles (name) VALUES ($1) ON CONFLICT DO NOTHING", role)
            await db.execute("DELETE FROM auth_role_permissions WHERE role = $1", role)
            await db.execute(
                "INSERT INTO auth_role_permissions (role, permission) SELECT $1, unnest($2::text[]) "
                "ON CONFLICT DO NOTHING",
                role,
                permissions,
            )

    async def roles(self) -> dict[str, list[str]]:
        rows = await self._fetch(
            "SELECT r.name, p.permission FROM auth_roles r LEFT JOIN auth_role_permissions p ON p.role = r.name "
            'ORDER BY r.name, p.permission COLLATE "C"'
        )
        roles: dict[str, list[str]] = {}
        for name, permission in rows:
            granted = roles.setdefault(name, [])
            if permission is not None:
                granted.append(permission)
        return roles

    async def set_user_roles(self, user_id: str, roles: list[str]) -> None:
        async with self._connection() as db, db.transaction():
            await db.execute("DELETE FROM auth_user_roles WHERE user_id = $1", user_id)
            await db.execute(
                "INSERT INTO auth_user_roles (user_id, role) SELECT $1, unnest($2::text[]) ON CONFLICT DO NOTHING",
                user_id,
                roles,
            )

    async def user_roles(self, user_id: str) -> list[str]:
        rows = await self._fetch(
            'SELECT role FROM auth_user_roles WHERE user_id = $1 ORDER BY role COLLATE "C"', user_id
        )
        return [row[0] for row in rows]

    async def user_permissions(self, user_id: str) -> list[str]:
        rows = await self._fetch(
            'SELECT DISTINCT p.permission COLLATE "C" FROM auth_user_roles u '
            "JOIN auth_role_permissions p ON p.role = u.role WHERE u.user_id = $1 ORDER BY 1",
            user_id,
        )
        return [row[0] for row in rows]

    # Refresh tokens

    async def add_refresh_token(self, token: RefreshToken) -> None:
        await self._execute(
            f"INSERT INTO auth_refresh_tokens ({_TOKEN_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            token.token_hash, token.family, token.user_id, token.issued_at, token.expires_at,
            token.access_expires_at, token.used, token.revoked,
        )  # fmt: skip

    async def refresh_token(self, token_hash: str) -> RefreshToken | None:
        row = await self._fetchrow(
            f"SELECT {_TOKEN_COLUMNS} FROM auth_refresh_tokens WHERE token_hash = $1", token_hash
        )
        return None if row is None else _token(row)

    async def spend_refresh_token(self, token_hash: str) -> bool:
        sql = "UPDATE auth_refresh_tokens SET used = TRUE WHERE token_hash = $1 AND NOT used AND NOT revoked"
        return await self._execute(sql, token_hash) == 1

    async def revoke_family(self, family: str) -> int:
        return await self._execute(
            "UPDATE auth_refresh_tokens SET revoked = TRUE WHERE family = $1 AND NOT revoked", family
        )

    async def family_expiry(self, family: str) -> int | None:
        row = await self._fetchrow("SELECT MAX(access_expires_at) FROM auth_refresh_tokens WHERE family = $1", family)
        return None if row is None or row[0] is None else int(row[0])

    async def delete_expired_refresh_tokens(self, now: int) -> int:
        return await self._execute("DELETE FROM auth_refresh_tokens WHERE expires_at < $1", now)

    # Signing keys

    async def signing_keys(self) -> list[SigningKey]:
        rows = await self._fetch(f"SELECT {_KEY_COLUMNS} FROM auth_signing_keys ORDER BY created_at DESC")
        return [_key(row) for row in rows]

    async def schedule_signing_key(self, candidate: SigningKey, schedule: KeySchedule, *, now: float) -> SigningKey:
        async with self._connection() as db, db.transaction():
            # Held until commit: a replica that was waiting here then sees the key just created.
            await db.execute("SELECT pg_advisory_xact_lock($1)", _ROTATION_LOCK)
            row = await db.fetchrow(
                f"SELECT {_KEY_COLUMNS} FROM auth_signing_keys WHERE retired_at IS NULL "
                "ORDER BY COALESCE(signs_from, created_at) DESC LIMIT 1"
            )
            last = None if row is None else _key(row)
            signs_from = schedule.successor_signs_from(last, now)
            if signs_from is None:
                assert last is not None  # no key at all always needs one
                return last
            await db.execute(
                "UPDATE auth_signing_keys SET retired_at = $1 WHERE retired_at IS NULL OR retired_at > $1", signs_from
            )
            await db.execute(
                "INSERT INTO auth_signing_keys (kid, alg, private_pem, created_at, signs_from, retired_at) "
                "VALUES ($1, $2, $3, $4, $5, NULL)",
                candidate.kid, candidate.alg, candidate.private_pem, candidate.created_at, signs_from,
            )  # fmt: skip
        return replace(candidate, signs_from=signs_from, retired_at=None)

    async def delete_signing_keys_retired_by(self, when: float) -> int:
        return await self._execute(
            "DELETE FROM auth_signing_keys WHERE retired_at IS NOT NULL AND retired_at <= $1", when
        )


def _safe(url: str) -> str:
    """The URL without its password, for messages and logs."""
    scheme, sep, rest = url.partition("://")
    credentials, at, host = rest.rpartition("@")
    if not at:
        return url
    user = credentials.split(":", 1)[0]
    return f"{scheme}{sep}{user}@{host}"
