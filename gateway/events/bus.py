"""The gateway's internal message bus interface, until the IMessageBus plugin exists.

    id = await bus.publish("order.created", b'{"order": 7}')
    subscription = await bus.subscribe(["order.*", "user.42"], from_id=id)   # events after `id`
    async for event in subscription: ...                                      # Event(id, topic, data, time)
    await subscription.close()

- Topics and patterns: gateway/events/topics.py (NATS style: `*` one token, `>` the rest; `#` is
  read as `>`).
- Event ids are decimal strings of a number that grows with every event the bus stores (the
  JetStream stream sequence; a counter in memory). A subscriber never sees an id twice, and sees
  ids in increasing order.
- `subscribe(patterns, from_id)`: with `from_id`, every retained event after that id that matches,
  then live events; without, live events only. `subscribe` itself checks the id: EventIdTooOld when
  events after it are no longer retained, UnknownEventId when the bus never stored that id.
  Iterating raises BusUnavailable (NATS gone for good, stream deleted) or SubscriberLagged (the
  memory bus evicted events this subscriber had not read yet). `position()` says where a
  subscription stands, for replacing it without a gap or a repeat.
- `last_id()`: the newest id ("0" before the first event): "everything from now on" is
  `subscribe(patterns, await bus.last_id())`, without the gap between asking and subscribing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = [
    "BusError",
    "BusUnavailable",
    "Event",
    "EventIdTooOld",
    "MessageBus",
    "SubscriberLagged",
    "Subscription",
    "UnknownEventId",
    "parse_event_id",
]


@dataclass(frozen=True, slots=True)
class Event:
    id: str
    topic: str
    data: bytes
    time: float  # unix seconds, when the bus stored it


class BusError(Exception):
    """The bus cannot do what was asked; the message says why, for the client."""


class BusUnavailable(BusError):
    pass


class UnknownEventId(BusError):
    pass


class EventIdTooOld(BusError):
    def __init__(self, message: str, oldest: int) -> None:
        super().__init__(message)
        self.oldest = oldest  # the oldest id still retained: resuming after `oldest - 1` works


class SubscriberLagged(BusError):
    pass


def parse_event_id(value: str | None) -> int | None:
    """The number of an event id; UnknownEventId when it is not one."""
    if value is None:
        return None
    if not isinstance(value, str) or not value.isascii() or not value.isdigit() or len(value) > 19:
        raise UnknownEventId(f"{str(value)[:40]!r} is not an event id (a decimal number)")
    return int(value)


class Subscription(Protocol):
    def __aiter__(self) -> Subscription: ...

    async def __anext__(self) -> Event: ...

    async def position(self) -> str:
        """An id through which every event was considered: subscribing again after it, with the
        same patterns, neither repeats nor misses one. At least the last id handed out; further
        when the bus can tell that nothing matching came since (so a replacement starts late)."""

    async def close(self) -> None: ...


class MessageBus(Protocol):
    async def start(self) -> None:
        """Connect (a bus that cannot yet keeps trying in the background: see status())."""

    async def close(self) -> None: ...

    def status(self) -> Mapping[str, Any]:
        """What /readyz shows: the kind of bus, whether it is connected, and the last error."""

    async def publish(self, topic: str, data: bytes) -> str: ...

    async def last_id(self) -> str: ...

    async def subscribe(self, patterns: Sequence[str], from_id: str | None = None) -> Subscription: ...
