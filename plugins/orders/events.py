"""`OrderEvents`: where order changes go, and where WatchOrders reads them.

The seed publishes `order.created` / `order.updated` on IMessageBus: `BusOrderEvents` does, and relays
what the bus carries to this replica's watchers. `InProcessOrderEvents` is the feed of one process
(what the relay feeds, and the whole story where no bus is wanted, as in unit tests).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Protocol

from google.protobuf.message import DecodeError
from upf.orders.v1 import orders_pb2 as pb

from plugins.sdk import Backoff, DependencyUnavailable
from plugins.sdk.messagebus import Message, MessageBusClient, MessageBusError

__all__ = ["TOPICS", "BusOrderEvents", "InProcessOrderEvents", "OrderEvents", "Overflow"]

logger = logging.getLogger(__name__)

_PROTOBUF = "application/x-protobuf; messageType=upf.orders.v1.WatchOrdersResponse"

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


class BusOrderEvents:
    """Order changes on IMessageBus (the seed's `order.created` / `order.updated`), so that every
    interested plugin hears them and every replica's WatchOrders sees every replica's changes.

    A relay (`relay_forever`, run beside the plugin) subscribes to `order.*` and hands each change to
    this replica's watchers through the in-process feed. While no relay subscription is live (no bus
    plugin, the bus down, the first moments after start) a change is published to this replica's
    watchers directly instead, so a single replica works the same with or without a bus; it is then
    not seen by other replicas or plugins, which is logged.
    """

    def __init__(
        self,
        bus: Callable[[], Awaitable[MessageBusClient]],
        *,
        feed: InProcessOrderEvents | None = None,
        backoff: Backoff | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._bus = bus
        self._feed = feed or InProcessOrderEvents()
        self._backoff = backoff or Backoff(0.2, 5.0)
        self._sleep = sleep
        self.relaying = asyncio.Event()  # set while the relay's subscription is live

    async def publish(self, change: pb.WatchOrdersResponse) -> None:
        if self.relaying.is_set():
            try:
                bus = await self._bus()
                await bus.publish(TOPICS[change.type], change.SerializeToString(), {"content-type": _PROTOBUF})
                return
            except (DependencyUnavailable, MessageBusError) as exc:
                logger.warning("order change not published on the message bus (%s); this replica's only", exc)
        await self._feed.publish(change)

    def subscribe(self) -> AbstractAsyncContextManager[AsyncIterator[pb.WatchOrdersResponse]]:
        return self._feed.subscribe()

    async def relay_forever(self) -> None:
        """Until cancelled: bus -> this replica's watchers, subscribing again after a failure."""
        while True:
            try:
                bus = await self._bus()
                async with bus.subscribe("order.*") as messages:
                    self.relaying.set()
                    self._backoff.reset()
                    async for message in messages:
                        await self._relay(message)
            except (DependencyUnavailable, MessageBusError) as exc:
                logger.info("order events: no message bus subscription (%s); retrying", exc)
            finally:
                self.relaying.clear()
            await self._sleep(self._backoff.next())

    async def _relay(self, message: Message) -> None:
        try:
            change = pb.WatchOrdersResponse.FromString(message.payload)
        except DecodeError:
            logger.warning("ignored a message on %s that is not an order change", message.subject)
        else:
            await self._feed.publish(change)
        await message.ack()
