from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from tests.plugins.orders.harness import Backends, Orders, Stack, run_stack, running_orders

# The embedded defaults, and (one case) the production pair, which stays fast enough to run every time.
BACKENDS = {
    "sqlite-memory": Backends("storage-sqlite", "cache-memory"),
    "postgres-redis": Backends("storage-postgres", "cache-redis"),
}


@pytest.fixture(scope="module", params=list(BACKENDS))
def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """One registry + storage + cache per module and backend pair; tests keep apart by customer id."""
    with run_stack(BACKENDS[request.param], tmp_path_factory.mktemp(f"orders-{request.param}")) as running:
        yield running


@pytest.fixture
async def orders(stack: Stack) -> AsyncIterator[Orders]:
    async with running_orders(stack) as running:
        yield running
