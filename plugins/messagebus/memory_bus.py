"""message-bus-memory: the embedded default, in this process's memory.

The same semantics as the brokers (a log with sequences, durable and queue-group consumers with a
position and pending deliveries, ack wait, delayed nak), but nothing survives the process: no
"persistence" capability. The log keeps the newest `max_messages`.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import cast

from plugins.messagebus.backend import ConsumerConflict, ConsumerSpec, Deliver, Outgoing, Received
from plugins.messagebus.subjects import matches

__all__ = ["MemoryBus"]

CAPABILITIES = frozenset({"queue-groups", "request-reply", "replay", "sequence", "delayed-nak"})


@dataclass(frozen=True, slots=True)
class _Stored:
    sequence: int
    timestamp: float
    message: Outgoing


@dataclass(slots=True)
class _Pending:
    deadline: float  # delivered again from then on
    count: int  # deliveries so far


@dataclass(eq=False, slots=True)
class _State:
    """A consumer's position and unacknowledged deliveries; shared by a queue group's members."""

    filter: str
    cursor: int  # the last sequence looked at
    ack_wait: float
    max_in_flight: int
    pending: dict[int, _Pending] = field(default_factory=dict)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    members: int = 0


class MemoryBus:
    name = "memory"
    capabilities = CAPABILITIES

    def __init__(
        self, *, max_messages: int = 100_000, max_payload: int = 1024 * 1024, clock: Callable[[], float] = time.time
    ) -> None:
        self.max_payload = max_payload
        self._max_messages = max_messages
        self._clock = clock
        self._log: list[_Stored] = []
        self._sequence = 0
        self._states: dict[str, _State] = {}  # durable and queue-group consumers by name
        self._live: set[_State] = set()

    async def publish(self, message: Outgoing) -> tuple[int, str]:
        self._sequence += 1
        self._log.append(_Stored(self._sequence, self._clock(), message))
        if len(self._log) > self._max_messages:
            del self._log[: len(self._log) - self._max_messages]
        for state in self._live:
            state.wake.set()
        return self._sequence, str(self._sequence)

    async def publish_many(self, messages: Sequence[Outgoing]) -> list[tuple[int, str]]:
        return [await self.publish(message) for message in messages]

    async def consumer(self, spec: ConsumerSpec) -> _MemoryConsumer:
        state = self._states.get(spec.name) if spec.name else None
        if state is not None and state.filter != spec.filter:
            raise ConsumerConflict(f'it exists with the subject "{state.filter}"')
        if state is None:
            state = _State(spec.filter, self._start(spec), spec.ack_wait, spec.max_in_flight)
            if spec.name:
                self._states[spec.name] = state
        state.members += 1
        self._live.add(state)
        return _MemoryConsumer(self, state)

    def _start(self, spec: ConsumerSpec) -> int:
        if spec.deliver is Deliver.ALL:
            return 0
        if spec.deliver is Deliver.BY_SEQUENCE:
            return max(spec.start_sequence - 1, 0)
        if spec.deliver is Deliver.BY_TIME:
            index = bisect.bisect_left([s.timestamp for s in self._log], spec.start_time)
            return self._log[index].sequence - 1 if index < len(self._log) else self._sequence
        return self._sequence

    def _stored(self, sequence: int) -> _Stored | None:
        if not self._log or sequence < self._log[0].sequence:
            return None  # trimmed
        index = sequence - self._log[0].sequence
        return self._log[index] if index < len(self._log) else None

    def _release(self, state: _State) -> None:
        state.members -= 1
        if state.members == 0:
            # A durable keeps its pending deliveries: they are due after their ack wait, as with a broker.
            self._live.discard(state)

    async def close(self) -> None:
        self._states.clear()


class _MemoryConsumer:
    def __init__(self, bus: MemoryBus, state: _State) -> None:
        self._bus = bus
        self._state = state

    async def next(self) -> Received:
        state, clock = self._state, self._bus._clock
        while True:
            # Cleared before looking, so that a publish while we look is not missed.
            state.wake.clear()
            now = clock()
            # Due again: unacknowledged past the ack wait, or nak'ed and its delay over.
            for sequence, pending in sorted(state.pending.items()):
                if pending.deadline <= now:
                    stored = self._bus._stored(sequence)
                    if stored is None:
                        del state.pending[sequence]
                        continue
                    pending.count += 1
                    pending.deadline = now + state.ack_wait
                    return self._received(stored, pending.count)
            if len(state.pending) < state.max_in_flight:
                while state.cursor < self._bus._sequence:
                    state.cursor += 1
                    stored = self._bus._stored(state.cursor)
                    if stored is not None and matches(state.filter, stored.message.subject):
                        state.pending[stored.sequence] = _Pending(now + state.ack_wait, 1)
                        return self._received(stored, 1)
            deadlines = [p.deadline for p in state.pending.values()]
            timeout = max(min(deadlines) - now, 0.001) if deadlines else None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(state.wake.wait(), timeout)

    def _received(self, stored: _Stored, count: int) -> Received:
        m = stored.message
        return Received(
            m.subject, m.payload, dict(m.headers), str(stored.sequence), stored.sequence, stored.timestamp,
            m.reply_to, count, (stored.sequence, count),
        )  # fmt: skip

    async def ack(self, handle: object) -> None:
        sequence = _sequence_of(handle)
        self._state.pending.pop(sequence, None)
        self._state.wake.set()

    async def nak(self, handle: object, delay: float) -> None:
        sequence = _sequence_of(handle)
        pending = self._state.pending.get(sequence)
        if pending is not None:
            pending.deadline = self._bus._clock() + delay
            self._state.wake.set()

    async def close(self) -> None:
        self._bus._release(self._state)


def _sequence_of(handle: object) -> int:
    sequence, _count = cast(tuple[int, int], handle)  # what _received made
    return sequence
