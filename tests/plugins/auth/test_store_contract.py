"""One contract for the custom provider's stores: SQLite (a file, and ":memory:") and PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from plugins.auth.store import AuthStore, PostgresAuthStore, RefreshToken, SigningKey, SqliteAuthStore, User
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


def key(kid: str, created_at: float, alg: str = "EdDSA") -> SigningKey:
    return SigningKey(kid, alg, f"-----BEGIN PRIVATE KEY-----\n{kid}\n-----END PRIVATE KEY-----\n", created_at)


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


async def test_rotation_keeps_a_fresh_key_and_replaces_a_due_one(store: AuthStore) -> None:
    assert await store.signing_keys() == []
    first = await store.rotate_signing_key(key("k1", 100.0), due_before=50.0, alg="EdDSA")
    assert first == key("k1", 100.0)
    # Not due yet: the stored key stays, the candidate is dropped.
    assert await store.rotate_signing_key(key("k2", 150.0), due_before=90.0, alg="EdDSA") == first
    assert [k.kid for k in await store.signing_keys()] == ["k1"]
    # Due (created at or before due_before): retired when the new one is created.
    second = await store.rotate_signing_key(key("k2", 200.0), due_before=100.0, alg="EdDSA")
    assert second.kid == "k2"
    keys = await store.signing_keys()
    assert [(k.kid, k.retired_at) for k in keys] == [("k2", None), ("k1", 200.0)]
    assert keys[1].private_pem == key("k1", 100.0).private_pem
    # Another algorithm configured: rotated at once, however fresh.
    third = await store.rotate_signing_key(key("k3", 210.0, "RS256"), due_before=0.0, alg="RS256")
    assert (third.kid, third.alg) == ("k3", "RS256")
    assert [(k.kid, k.retired_at) for k in await store.signing_keys()] == [("k3", None), ("k2", 210.0), ("k1", 200.0)]

    assert await store.delete_signing_keys_retired_by(199.0) == 0
    assert await store.delete_signing_keys_retired_by(200.0) == 1  # at or before
    assert [k.kid for k in await store.signing_keys()] == ["k3", "k2"]


async def test_replicas_rotating_at_once_create_one_key(open_store: OpenStore) -> None:
    replicas = [await open_store() for _ in range(3)]
    await replicas[0].rotate_signing_key(key("old", 100.0), due_before=0.0, alg="EdDSA")
    chosen = await asyncio.gather(
        *(
            r.rotate_signing_key(key(f"new{n}", 200.0 + n), due_before=150.0, alg="EdDSA")
            for n, r in enumerate(replicas)
        )
    )
    assert len({k.kid for k in chosen}) == 1
    keys = await replicas[0].signing_keys()
    assert [k.kid for k in keys if k.retired_at is None] == [chosen[0].kid]
    assert len(keys) == 2


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
