"""What a message-bus backend provides to the service (service.py), and the errors it may raise.

A backend stores published messages and hands them to consumers at least once: a delivered message
that is not acknowledged within the consumer's ack wait, or that is nak'ed, comes again with a higher
delivery count. The service does the rest (validation, namespaces, the gRPC streams) the same way for
every backend, so that the four plugins behave alike.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

__all__ = [
    "AckTooLate",
    "Backend",
    "BusUnavailable",
    "Consumer",
    "ConsumerConflict",
    "ConsumerSpec",
    "Deliver",
    "Outgoing",
    "Received",
    "Unsupported",
]


class BusUnavailable(Exception):
    """The broker cannot be reached now; the call may be retried (the backend reconnects by itself)."""


class AckTooLate(Exception):
    """The delivery was already given up on (its ack wait ran out): the message comes again."""


class Unsupported(Exception):
    """The backend lacks the capability the call needs; the message names it."""


class ConsumerConflict(Exception):
    """A durable or queue group exists with settings this subscription contradicts (another subject)."""


class Deliver(enum.Enum):
    NEW = "new"
    ALL = "all"
    BY_SEQUENCE = "by-sequence"
    BY_TIME = "by-time"


@dataclass(frozen=True, slots=True)
class Outgoing:
    subject: str
    payload: bytes
    headers: Mapping[str, str] = field(default_factory=dict)
    reply_to: str = ""


@dataclass(frozen=True, slots=True)
class Received:
    subject: str
    payload: bytes
    headers: Mapping[str, str]
    id: str
    sequence: int  # 0 when the backend has none
    timestamp: float  # seconds since the epoch, when published
    reply_to: str
    delivery_count: int
    handle: object  # what the backend needs to ack or nak this delivery


@dataclass(frozen=True, slots=True)
class ConsumerSpec:
    filter: str
    # The namespaced durable or queue-group name (subjects.consumer_name); None: ends with the stream.
    name: str | None
    queue: bool
    deliver: Deliver
    start_sequence: int
    start_time: float
    ack_wait: float
    max_in_flight: int


class Consumer(Protocol):
    async def next(self) -> Received:
        """The next delivery (new or again); waits for one. Raises BusUnavailable."""
        ...

    async def ack(self, handle: object) -> None:
        """Returns once the broker has recorded the ack: the message is not delivered again."""
        ...

    async def nak(self, handle: object, delay: float) -> None: ...

    async def close(self) -> None:
        """Stop consuming; a durable's unacknowledged messages come again after their ack wait."""
        ...


class Backend(Protocol):
    name: str
    capabilities: frozenset[str]
    max_payload: int

    async def publish(self, message: Outgoing) -> tuple[int, str]:
        """Store the message; (sequence, id) once the broker confirmed it. Raises BusUnavailable."""
        ...

    async def publish_many(self, messages: Sequence[Outgoing]) -> list[tuple[int, str]]:
        """Store the messages in their order (pipelined where the broker allows); as publish()."""
        ...

    async def consumer(self, spec: ConsumerSpec) -> Consumer:
        """A consumer that receives what is published from the moment this returns (and what its
        deliver policy or durable position adds). Raises BusUnavailable, Unsupported, ConsumerConflict."""
        ...

    async def close(self) -> None: ...
