"""`OrderEvents`: where order changes go, and where WatchOrders reads them.

The seed publishes `order.created` / `order.updated` on IMessageBus. The message-bus plugins are not
there yet, so `InProcessOrderEvents` serves WatchOrders from this process's own changes. It is behind a
two-method interface so that an IMessageBus implementation (publish to the topics, subscribe for
WatchOrders, which then also sees other replicas' changes) replaces it without touching the service.
Until then a watcher sees the changes made by the replica it is connected to.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Protocol

from upf.orders.v1 import orders_pb2 as pb

__all__ = ["TOPICS", "InProcessOrderEvents", "OrderEvents", "Overflow"]

# The topic each change type is published on, once a message bus carries them.
TOPICS = {pb.ORDER_CHANGE_TYPE_CREATED: "order.created", pb.ORDER_CHANGE_TYPE_UPDATED: "order.updated"}


class Overflow(Exception):
    """A subscriber read too slowly and missed changes; it must list again and watch anew."""


class OrderEvents(Protocol):
    async def publish(self, change: pb.WatchOrdersResponse) -> None: ...

    def subscribe(self) -> AbstractAsyncContextManager[AsyncIterator[pb.WatchOrdersResponse]]:
        """`async with events.subscribe() as changes: async for change in changes: ...`; subscribed
        when the block is entered, so nothing published after that is missed."""
        ...


class _Subscriber:
    def __init__(self, limit: int) -> None:
        self.queue: asyncio.Queue[pb.WatchOrdersResponse | None] = asyncio.Queue(limit + 1)
        self.limit = limit
        self.overflowed = False

    def put(self, change: pb.WatchOrdersResponse) -> None:
        if self.overflowed:
            return
        if self.queue.qsize() >= self.limit:
            # Dropping a change silently would leave the watcher with a wrong picture; end its stream.
            self.overflowed = True
            self.queue.put_nowait(None)
            return
        self.queue.put_nowait(change)

    async def changes(self) -> AsyncIterator[pb.WatchOrdersResponse]:
        while True:
            change = await self.queue.get()
            if change is None:
                raise Overflow(f"the watcher fell more than {self.limit} changes behind")
            yield change


class InProcessOrderEvents:
    """Fan-out to this process's subscribers, in publish order; each has a bounded queue (`limit`)."""

    def __init__(self, limit: int = 1000) -> None:
        self._limit = limit
        self._subscribers: set[_Subscriber] = set()

    async def publish(self, change: pb.WatchOrdersResponse) -> None:
        for subscriber in list(self._subscribers):
            subscriber.put(change)

    @asynccontextmanager
    async def subscribe(self) -> AsyncIterator[AsyncIterator[pb.WatchOrdersResponse]]:
        subscriber = _Subscriber(self._limit)
        self._subscribers.add(subscriber)
        try:
            yield subscriber.changes()
        finally:
            self._subscribers.discard(subscriber)

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)
