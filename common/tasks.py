"""Cancelling a task and knowing it is over.

On Python 3.11 a cancellation can be lost: when it meets a result arriving at the same moment inside
`asyncio.wait_for` (gh-86296, fixed in 3.12), wait_for returns the result and the task runs on as if
never cancelled. redis-py sends every command through wait_for, so a task cancelled while a Redis
reply comes in is the common case, not a curiosity: message-bus-redis lost one in two cancellations of
a subscription's reader, which then kept taking messages for a subscriber that was gone.
"""

from __future__ import annotations

import asyncio

# Asked again this often while the task runs on. Short: whoever waits is usually closing something.
AGAIN_AFTER = 0.05


async def cancel_and_wait(task: asyncio.Task[object], *, again_after: float = AGAIN_AFTER) -> None:
    """Cancel `task` and return once it is done, cancelling it again if a cancellation was lost.

    A task still running after `again_after` seconds is cancelled again, which would also cut short a
    clean-up of its own that takes longer than that: give such a task a longer `again_after`.
    The task's own outcome (cancelled, failed or finished) is left on it for the caller to read; a
    cancellation of the caller itself propagates as usual.
    """
    while not task.done():
        task.cancel()
        await asyncio.wait((task,), timeout=again_after)
