"""The invalidation feed inside one process: what the memory and memcached backends use.

Each watcher has a bounded queue. A watcher that falls behind is not allowed to hold up writers or
grow without bound: its queue is dropped and its stream ends with UNAVAILABLE, which tells it that
changes were lost, so it drops its local cache and watches again.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator

from plugins.cache.backend import READY, Change
from plugins.cache.errors import BackendUnavailable

__all__ = ["LocalFeed"]

_LOST = Change(pattern="*", origin="<lost>")


class LocalFeed:
    def __init__(self, *, queue_size: int = 10_000) -> None:
        self._queue_size = queue_size
        self._watchers: dict[str, set[asyncio.Queue[Change]]] = {}

    def publish(self, namespace: str, change: Change) -> None:
        for queue in list(self._watchers.get(namespace, ())):
            if queue.qsize() >= self._queue_size - 1:
                # Room for one more is kept for this marker, so the watcher always learns of the loss.
                self._watchers[namespace].discard(queue)
                queue.put_nowait(_LOST)
            else:
                queue.put_nowait(change)

    async def watch(self, namespace: str) -> AsyncGenerator[Change, None]:
        queue: asyncio.Queue[Change] = asyncio.Queue()
        self._watchers.setdefault(namespace, set()).add(queue)
        try:
            yield READY
            while True:
                change = await queue.get()
                if change is _LOST:
                    raise BackendUnavailable("the invalidation feed fell behind and dropped changes; watch again")
                yield change
        finally:
            watchers = self._watchers.get(namespace)
            if watchers is not None:
                watchers.discard(queue)
                if not watchers:
                    del self._watchers[namespace]
