"""One contract for the custom provider's stores: SQLite (a file, and ":memory:") and PostgreSQL."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import closing
from pathlib import Path

import asyncpg
import pytest

from plugins.auth.store import (
    AuthStore,
    KeySchedule,
    PostgresAuthStore,
    RefreshToken,
    SigningKey,
    SqliteAuthStore,
    User,
)
from tests.plugins.auth.conftest import drop_auth_tables

OpenStore = Callable[[], Awaitable[AuthStore]]


@pytest.fixture(params=["sqlite", "postgres"])
async def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[OpenStore]:
    """Opens (and starts) stores on one database: several behave like replicas sharing it."""
    opened: list[AuthStore] = []
    url = ""
    if request.param == "postgres":
        url = request.getfixturevalue("postgres_url")

    async def open_one() -> AuthStore:
        store: AuthStore
        if request.param == "sqlite":
            store = SqliteAuthStore(tmp_path / "auth" / "auth.db")
        else:
            store = PostgresAuthStore(url, pool_size=4)
        await store.start()
        opened.append(store)
        return store

    try:
        yield open_one
    finally:
        for store in opened:
            await store.close()
        if url:
            await drop_auth_tables(url)


@pytest.fixture
async def store(open_store: OpenStore) -> AuthStore:
    return await open_store()


def user(user_id: str = "u1", username: str = "alice") -> User:
    return User(user_id, username, f"{username}@example.org", username.title(), "$argon2id$hash", False, 1000.5)


def token(token_hash: str = "h1", family: str = "f1", expires_at: int = 2000, access: int = 1100) -> RefreshToken:
    return RefreshToken(token_hash, family, "u1", 1000, expires_at, access)


def pem(kid: str) -> str:
    return f"-----BEGIN PRIVATE KEY-----\n{kid}\n-----END PRIVATE KEY-----\n"


def key(kid: str, created_at: float, alg: str = "EdDSA") -> SigningKey:
    return SigningKey(kid, alg, pem(kid), created_at, created_at)


# Keys sign for 100 s; a successor is stored 20 s (publish ahead) + 5 s (check every) before it signs.
EDDSA = KeySchedule("EdDSA", interval=100.0, publish_ahead=20.0, check_every=5.0)


async def test_users_round_trip_and_usernames_are_unique(store: AuthStore) -> None:
    assert await store.add_user(user())
    assert await store.user_by_id("u1") == user()
    assert await store.user_by_name("alice") == user()
    assert not await store.add_user(user("u2", "alice"))  # the username is taken
    assert not await store.add_user(user("u1", "bob"))  # so is the id
    assert await store.user_by_name("bob") is None
    assert await store.user_by_id("nobody") is None
    assert await store.user_by_name("ALICE") is None  # usernames are exact


async def test_user_updates_change_only_the_given_fields(store: AuthStore) -> None:
    await store.add_user(user())
    assert await store.update_user("u1", email="new@example.org", disabled=True)
    assert await store.update_user("u1", password_hash="$argon2id$new")
    assert await store.update_user("u1")
    got = await store.user_by_id("u1")
    assert got is not None
    assert (got.email, got.name, got.password_hash, got.disabled) == ("new@example.org", "Alice", "$argon2id$new", True)
    assert await store.update_user("u1", disabled=False)
    assert (await store.user_by_name("alice")).disabled is False  # type: ignore[union-attr]
    assert not await store.update_user("nobody", name="x")
    assert not await store.update_user("nobody")


async def test_roles_map_to_permissions_and_users_get_their_union(store: AuthStore) -> None:
    await store.put_role("admin", ["*"])
    await store.put_role("user", ["demo:read", "orders:read"])
    await store.put_role("clerk", ["orders:*", "orders:read"])
    await store.put_role("empty", [])
    assert await store.roles() == {
        "admin": ["*"],
        "clerk": ["orders:*", "orders:read"],
        "empty": [],
        "user": ["demo:read", "orders:read"],
    }
    await store.put_role("user", ["demo:read"])  # replaces
    assert (await store.roles())["user"] == ["demo:read"]

    await store.add_user(user())
    await store.set_user_roles("u1", ["user", "clerk", "undefined"])
    assert await store.user_roles("u1") == ["clerk", "undefined", "user"]
    assert await store.user_permissions("u1") == ["demo:read", "orders:*", "orders:read"]
    await store.set_user_roles("u1", ["admin"])
    assert await store.user_roles("u1") == ["admin"]
    assert await store.user_permissions("u1") == ["*"]
    assert await store.user_roles("nobody") == []
    assert await store.user_permissions("nobody") == []


async def test_a_refresh_token_is_spent_once(store: AuthStore) -> None:
    await store.add_refresh_token(token())
    assert await store.refresh_token("h1") == token()
    assert await store.refresh_token("unknown") is None
    assert await store.spend_refresh_token("h1")
    assert not await store.spend_refresh_token("h1")
    assert await store.refresh_token("h1") == RefreshToken("h1", "f1", "u1", 1000, 2000, 1100, used=True)
    assert not await store.spend_refresh_token("unknown")


async def test_of_concurrent_spends_exactly_one_wins(open_store: OpenStore) -> None:
    first, second = await open_store(), await open_store()
    await first.add_refresh_token(token())
    results = await asyncio.gather(*(s.spend_refresh_token("h1") for s in [first, second] * 4))
    assert sorted(results) == [False] * 7 + [True]


async def test_revoking_a_family_revokes_all_its_tokens(store: AuthStore) -> None:
    await store.add_refresh_token(token("h1", "f1", access=1100))
    await store.add_refresh_token(token("h2", "f1", access=1900))
    await store.add_refresh_token(token("h3", "f2"))
    assert await store.family_expiry("f1") == 1900
    assert await store.family_expiry("none") is None
    assert await store.revoke_family("f1") == 2
    assert await store.revoke_family("f1") == 0
    assert (await store.refresh_token("h2")).revoked  # type: ignore[union-attr]
    assert not await store.spend_refresh_token("h2")  # a revoked token cannot be spent
    assert not (await store.refresh_token("h3")).revoked  # type: ignore[union-attr]


async def test_expired_refresh_tokens_are_deleted(store: AuthStore) -> None:
    await store.add_refresh_token(token("old", expires_at=1500))
    await store.add_refresh_token(token("new", expires_at=2500))
    assert await store.delete_expired_refresh_tokens(2000) == 1
    assert await store.refresh_token("old") is None
    assert await store.refresh_token("new") is not None


async def test_a_successor_is_scheduled_ahead_and_takes_over_at_the_end_of_the_interval(store: AuthStore) -> None:
    assert await store.signing_keys() == []
    first = await store.schedule_signing_key(key("k1", 100.0), EDDSA, now=100.0)
    assert first == key("k1", 100.0)  # the first key signs at once
    # Not due yet (k1 signs until 200; its successor is stored from 200 - 20 - 5): nothing changes.
    assert await store.schedule_signing_key(key("k2", 174.0), EDDSA, now=174.0) == first
    assert [k.kid for k in await store.signing_keys()] == ["k1"]
    # Due: k2 is stored now, signs from 200, and k1 is retired then.
    second = await store.schedule_signing_key(key("k2", 175.0), EDDSA, now=175.0)
    assert second == SigningKey("k2", "EdDSA", pem("k2"), 175.0, 200.0, None)
    keys = await store.signing_keys()
    assert [(k.kid, k.signs_from, k.retired_at) for k in keys] == [("k2", 200.0, None), ("k1", 100.0, 200.0)]
    assert keys[1].private_pem == pem("k1")
    # The last key of the schedule is k2, whose successor is due from 275.
    assert await store.schedule_signing_key(key("k3", 190.0), EDDSA, now=190.0) == second
    # Stored late (the plugin was stopped): it still signs only publish_ahead after it is stored.
    third = await store.schedule_signing_key(key("k3", 400.0), EDDSA, now=400.0)
    assert (third.signs_from, third.retired_at) == (420.0, None)
    assert [(k.kid, k.retired_at) for k in await store.signing_keys()] == [("k3", None), ("k2", 420.0), ("k1", 200.0)]

    assert await store.delete_signing_keys_retired_by(199.0) == 0
    assert await store.delete_signing_keys_retired_by(200.0) == 1  # at or before
    assert [k.kid for k in await store.signing_keys()] == ["k3", "k2"]


async def test_another_algorithm_signs_at_once_and_the_scheduled_key_never_signs(store: AuthStore) -> None:
    await store.schedule_signing_key(key("k1", 100.0), EDDSA, now=100.0)
    await store.schedule_signing_key(key("k2", 180.0), EDDSA, now=180.0)  # to sign from 200
    rs256 = KeySchedule("RS256", interval=100.0, publish_ahead=20.0)
    chosen = await store.schedule_signing_key(key("k3", 190.0, "RS256"), rs256, now=190.0)
    assert (chosen.kid, chosen.alg, chosen.signs_from) == ("k3", "RS256", 190.0)
    keys = await store.signing_keys()
    # k1 stops at once; k2, scheduled for 200, is retired before it ever signs.
    assert [(k.kid, k.signs_from, k.retired_at) for k in keys] == [
        ("k3", 190.0, None),
        ("k2", 200.0, 190.0),
        ("k1", 100.0, 190.0),
    ]


async def test_replicas_scheduling_at_once_create_one_successor(open_store: OpenStore) -> None:
    replicas = [await open_store() for _ in range(3)]
    await replicas[0].schedule_signing_key(key("old", 100.0), EDDSA, now=100.0)
    chosen = await asyncio.gather(
        *(r.schedule_signing_key(key(f"new{n}", 180.0), EDDSA, now=180.0) for n, r in enumerate(replicas))
    )
    assert len({k.kid for k in chosen}) == 1
    keys = await replicas[0].signing_keys()
    assert [(k.kid, k.signs_from) for k in keys if k.retired_at is None] == [(chosen[0].kid, 200.0)]
    assert len(keys) == 2


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
async def test_keys_stored_before_the_schedule_existed_sign_from_their_creation(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """A store written before keys were published ahead (no signs_from column) is read and extended."""
    legacy_table = (
        "CREATE TABLE auth_signing_keys (kid TEXT PRIMARY KEY, alg TEXT NOT NULL, private_pem TEXT NOT NULL, "
        "created_at DOUBLE PRECISION NOT NULL, retired_at DOUBLE PRECISION)"
    )
    rows = [("k0", "EdDSA", pem("k0"), 50.0, 100.0), ("k1", "EdDSA", pem("k1"), 100.0, None)]
    store: AuthStore
    url = ""
    if backend == "sqlite":
        path = tmp_path / "legacy.db"
        with closing(sqlite3.connect(path)) as legacy, legacy:  # closed, after a commit
            legacy.execute(legacy_table)
            legacy.executemany("INSERT INTO auth_signing_keys VALUES (?, ?, ?, ?, ?)", rows)
        store = SqliteAuthStore(path)
    else:
        url = request.getfixturevalue("postgres_url")
        db = await asyncpg.connect(url, timeout=5)
        try:
            await db.execute(legacy_table)
            await db.executemany("INSERT INTO auth_signing_keys VALUES ($1, $2, $3, $4, $5)", rows)
        finally:
            await db.close()
        store = PostgresAuthStore(url, pool_size=2)
    await store.start()
    try:
        assert [(k.kid, k.signs_from, k.retired_at) for k in await store.signing_keys()] == [
            ("k1", 100.0, None),
            ("k0", 50.0, 100.0),
        ]
        successor = await store.schedule_signing_key(key("k2", 175.0), EDDSA, now=175.0)
        assert (successor.kid, successor.signs_from) == ("k2", 200.0)
        assert [(k.kid, k.signs_from, k.retired_at) for k in await store.signing_keys()][:2] == [
            ("k2", 200.0, None),
            ("k1", 100.0, 200.0),
        ]
    finally:
        await store.close()
        if url:
            await drop_auth_tables(url)


async def test_start_is_idempotent_and_keeps_the_data(open_store: OpenStore) -> None:
    first = await open_store()
    await first.add_user(user())
    await first.put_role("admin", ["*"])
    await first.close()
    again = await open_store()  # creates the tables if missing: they are there
    assert await again.user_by_id("u1") == user()
    assert await again.roles() == {"admin": ["*"]}


async def test_sqlite_memory_store_works_and_is_private() -> None:
    first, second = SqliteAuthStore(":memory:"), SqliteAuthStore(":memory:")
    await first.start()
    await second.start()
    try:
        await first.add_user(user())
        assert await first.user_by_name("alice") == user()
        assert await second.user_by_name("alice") is None
    finally:
        await first.close()
        await second.close()
