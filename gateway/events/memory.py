"""The in-memory bus: one gateway process, events kept in a bounded ring.

The ring holds the newest `max_messages` events (and, when `max_age` is set, drops older ones as
new ones arrive), so resuming after a recent id works and memory stays bounded. Subscribers are
cursors into the ring, not queues: publishing costs the same however many there are, and a
subscriber that falls more than the ring behind gets SubscriberLagged instead of holding memory.
Ids count from 1 with each process start: after a restart, an older client's id is refused as
unknown (it is newer than anything here) rather than silently meaning another event.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from gateway.events.bus import Event, EventIdTooOld, SubscriberLagged, UnknownEventId, parse_event_id
from gateway.events.topics import Pattern, check_topic, parse_pattern

__all__ = ["MemoryBus"]

_Entry = tuple[Event, tuple[str, ...]]  # the event and its topic's tokens, split once


class MemoryBus:
    def __init__(
        self, *, max_messages: int = 100_000, max_age: float | None = None, clock: Callable[[], float] = time.time
    ) -> None:
        if max_messages < 1:
            raise ValueError("max_messages must be at least 1")
        self._capacity = max_messages
        self._max_age = max_age
        self._clock = clock
        self._ring: list[_Entry | None] = []  # id's slot: (id - 1) % capacity; grows to the capacity
        self._first = 1  # the oldest retained id (== _next when empty)
        self._next = 1
        self._published = asyncio.Event()

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def status(self) -> Mapping[str, Any]:
        return {"bus": "memory", "connected": True, "lastId": str(self._next - 1)}

    async def publish(self, topic: str, data: bytes) -> str:
        return self.publish_nowait(topic, data)

    def publish_nowait(self, topic: str, data: bytes) -> str:
        check_topic(topic)
        event_id = self._next
        now = self._clock()
        entry = (Event(str(event_id), topic, bytes(data), now), tuple(topic.split(".")))
        if len(self._ring) < self._capacity:
            self._ring.append(entry)  # ids count from 1 without gaps: its slot, (id - 1) % capacity
        else:
            self._ring[(event_id - 1) % self._capacity] = entry
        self._next = event_id + 1
        self._first = max(self._first, self._next - self._capacity)
        if self._max_age is not None:
            horizon = now - self._max_age
            while self._first < event_id:
                oldest = self._entry(self._first)
                if oldest is None or oldest[0].time >= horizon:
                    break
                self._ring[(self._first - 1) % self._capacity] = None  # freed now, not when overwritten
                self._first += 1
        # Wakes every waiting subscriber; the ones woken keep their wake-up although it is cleared.
        self._published.set()
        self._published.clear()
        return str(event_id)

    async def last_id(self) -> str:
        return str(self._next - 1)

    async def subscribe(self, patterns: Sequence[str], from_id: str | None = None) -> _MemorySubscription:
        compiled = [parse_pattern(pattern) for pattern in patterns]
        after = parse_event_id(from_id)
        newest = self._next - 1
        if after is None:
            after = newest
        elif after > newest:
            raise UnknownEventId(
                f"event id {after} is newer than the newest event ({newest}); the bus may have restarted"
            )
        elif after < self._first - 1:
            raise EventIdTooOld(
                f"the events after id {after} are no longer retained (the oldest is {self._first})", self._first
            )
        return _MemorySubscription(self, compiled, after)

    def _entry(self, event_id: int) -> _Entry | None:
        return self._ring[(event_id - 1) % self._capacity]


class _MemorySubscription:
    def __init__(self, bus: MemoryBus, patterns: list[Pattern], after: int) -> None:
        self._bus = bus
        self._patterns = patterns
        self._cursor = after  # the last id looked at
        self._closed = False

    def __aiter__(self) -> _MemorySubscription:
        return self

    async def __anext__(self) -> Event:
        bus = self._bus
        while not self._closed:
            while self._cursor + 1 < bus._next:
                event_id = self._cursor + 1
                if event_id < bus._first:
                    raise SubscriberLagged(
                        f"the subscriber fell behind: events after id {self._cursor} were dropped from the "
                        f"in-memory ring before it read them"
                    )
                self._cursor = event_id
                entry = bus._entry(event_id)
                assert entry is not None  # ids from _first on are in the ring
                event, tokens = entry
                if any(pattern.matches_tokens(tokens) for pattern in self._patterns):
                    return event
            await bus._published.wait()
        raise StopAsyncIteration

    async def position(self) -> str:
        """Just before the first matching event not read yet (the newest id when there is none)."""
        bus = self._bus
        for event_id in range(max(self._cursor + 1, bus._first), bus._next):
            entry = bus._entry(event_id)
            assert entry is not None
            if any(pattern.matches_tokens(entry[1]) for pattern in self._patterns):
                return str(event_id - 1)
        return str(max(self._cursor, bus._next - 1))

    async def close(self) -> None:
        self._closed = True
