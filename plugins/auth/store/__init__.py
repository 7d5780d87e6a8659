"""The custom provider's store: users, roles, refresh tokens and signing keys (SQLite or PostgreSQL)."""

from __future__ import annotations

from plugins.auth.store.base import AuthStore, KeySchedule, RefreshToken, SigningKey, StoreUnavailable, User
from plugins.auth.store.postgres import PostgresAuthStore
from plugins.auth.store.sqlite import SqliteAuthStore

__all__ = [
    "AuthStore",
    "KeySchedule",
    "PostgresAuthStore",
    "RefreshToken",
    "SigningKey",
    "SqliteAuthStore",
    "StoreUnavailable",
    "User",
]
