"""storage-sqlite's writing connection: plain sessions share it, a transaction has it alone, first come
first served (plugins/storage/sqlite.py _Gate)."""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack

import pytest

from plugins.storage.sqlite import _Gate


async def test_sessions_share_and_a_transaction_waits_for_them_and_holds_off_later_ones() -> None:
    gate = _Gate()
    order: list[str] = []
    async with AsyncExitStack() as first:
        await first.enter_async_context(gate.shared())
        async with gate.shared():  # a second session does not wait for the first
            order.append("two sessions at once")

        transaction_in = asyncio.Event()
        release_transaction = asyncio.Event()

        async def transaction() -> None:
            async with gate.exclusive():
                order.append("transaction")
                transaction_in.set()
                await release_transaction.wait()

        async def later_session() -> None:
            async with gate.shared():
                order.append("later session")

        tx = asyncio.create_task(transaction())
        await asyncio.sleep(0)
        later = asyncio.create_task(later_session())
        await asyncio.sleep(0)
        assert order == ["two sessions at once"]  # the transaction waits for the open session
    await asyncio.wait_for(transaction_in.wait(), 1)
    assert order == ["two sessions at once", "transaction"]  # the later session did not overtake it
    release_transaction.set()
    await asyncio.wait_for(asyncio.gather(tx, later), 1)
    assert order == ["two sessions at once", "transaction", "later session"]


async def test_a_waiter_that_is_cancelled_holds_nobody_up() -> None:
    gate = _Gate()
    async with AsyncExitStack() as session:
        await session.enter_async_context(gate.shared())

        async def transaction() -> None:
            async with gate.exclusive():
                pytest.fail("cancelled while waiting: it never gets in")

        tx = asyncio.create_task(transaction())
        await asyncio.sleep(0)
        tx.cancel()
        with pytest.raises(asyncio.CancelledError):
            await tx
        async with asyncio.timeout(1), gate.shared():  # nothing is queued ahead any more
            pass
    async with asyncio.timeout(1), gate.exclusive():
        pass
