"""cancel_and_wait ends a task even when a cancellation is lost, as Python 3.11's wait_for can lose one."""

from __future__ import annotations

import asyncio

from common.tasks import cancel_and_wait


async def test_a_task_that_loses_a_cancellation_is_cancelled_again_until_it_ends() -> None:
    lost = 0

    async def reader() -> None:
        nonlocal lost
        while True:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                if lost < 2:  # as wait_for does when a result meets the cancellation: carries on
                    lost += 1
                    continue
                raise

    task = asyncio.create_task(reader())
    await asyncio.sleep(0)
    async with asyncio.timeout(5):
        await cancel_and_wait(task, again_after=0.01)
    assert task.cancelled()
    assert lost == 2


async def test_a_task_that_obeys_is_waited_for_once_and_its_outcome_left_on_it() -> None:
    cleaned = asyncio.Event()

    async def worker() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            await asyncio.sleep(0)  # a clean-up step of its own
            cleaned.set()

    task = asyncio.create_task(worker())
    await asyncio.sleep(0)
    await cancel_and_wait(task)
    assert cleaned.is_set()
    assert task.cancelled()

    async def fails() -> None:
        raise ValueError("boom")

    failed = asyncio.create_task(fails())
    await cancel_and_wait(failed)  # already over or not: no cancellation sticks to a finished task
    assert failed.cancelled() or isinstance(failed.exception(), ValueError)
