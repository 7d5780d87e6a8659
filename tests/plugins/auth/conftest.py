"""Fixtures for the auth plugin's tests: a throw-away PostgreSQL database per test session."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import asyncpg
import pytest

ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


def _admin(statement: str) -> None:
    """Run one statement as the administrator, on a loop of its own in a thread: the fixture that needs
    it may be set up from inside a test's running loop."""

    async def run() -> None:
        connection = await asyncpg.connect(ADMIN_URL, timeout=5)
        try:
            await connection.execute(statement)
        finally:
            await connection.close()

    with ThreadPoolExecutor(1) as executor:
        executor.submit(asyncio.run, run()).result()


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A database of this test session's own on the shared PostgreSQL, dropped at the end."""
    name = f"upf_auth_test_{uuid.uuid4().hex[:12]}"
    try:
        _admin(f'CREATE DATABASE "{name}"')
    except (OSError, asyncpg.PostgresError) as exc:
        pytest.fail(f"PostgreSQL is not reachable at {ADMIN_URL} ({exc}); .ci/run starts it")
    try:
        yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    finally:
        _admin(f'DROP DATABASE "{name}" WITH (FORCE)')


async def drop_auth_tables(url: str) -> None:
    """Empty the database between tests: the next store's start() creates the tables again."""
    connection = await asyncpg.connect(url, timeout=5)
    try:
        await connection.execute(
            "DROP TABLE IF EXISTS auth_user_roles, auth_role_permissions, auth_roles, auth_users, "
            "auth_refresh_tokens, auth_signing_keys CASCADE"
        )
    finally:
        await connection.close()
