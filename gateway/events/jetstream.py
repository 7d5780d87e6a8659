"""The NATS JetStream bus: events in a stream, so a client that reconnects misses none.

- One stream (`stream`, subjects `<subjectPrefix>.>`), created at start when missing; when it
  exists, its subjects and limits (maxAge, maxMessages, maxBytes) are brought to the settings. A
  topic `order.created` is the subject `<subjectPrefix>.order.created`; the event id is the stream
  sequence, so ids are shared by every gateway on the stream and survive restarts.
- A subscription is an ordered consumer of our own making, the JetStream way to read a stream
  in order exactly once without acks: an ephemeral push consumer (AckNone, memory storage, flow
  control, idle heartbeats) that starts at a stream sequence (DeliverPolicy BY_START_SEQUENCE at
  last id + 1). It is replaced by a new one starting after the last sequence handed out when
  anything looks wrong: a gap in the consumer sequence (a message lost in transit, e.g. across a
  reconnect), a heartbeat that reports more messages than arrived, no message nor heartbeat for
  three heartbeat intervals (NATS was away, or the consumer was deleted). Sequences at or below the
  last one handed out are skipped, so a replacement never repeats an event.
  Why not nats-py's `ordered_consumer=True`: its reset restarts from the last sequence *it* saw,
  which is 0 (the whole stream) until the first message arrives, and it reports failures to the
  connection's error callback rather than to the subscriber.
- Flow-control requests are answered when the iterator reaches them, i.e. once everything before
  them was consumed: the server never runs more than its window ahead of the subscriber.
- One filter subject per consumer (nats-server 2.9 takes no more): for several patterns, their
  longest common literal prefix then `>` (topics/common_filter); the iterator filters the rest.
- NATS unreachable at start: the gateway starts anyway, status() says so and why, publish and
  subscribe raise BusUnavailable, and the connection keeps being retried; once up, nats-py
  reconnects by itself and subscriptions carry on from their last sequence.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription as NatsSubscription
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)

from gateway.events.bus import (
    BusUnavailable,
    Event,
    EventIdTooOld,
    UnknownEventId,
    parse_event_id,
)
from gateway.events.topics import Pattern, check_topic, common_filter, parse_pattern

__all__ = ["JetStreamBus", "StreamMissing"]

logger = logging.getLogger(__name__)

_NATS_ERRORS = (nats.errors.Error, OSError, asyncio.TimeoutError)
# Per subscription, in nats-py, before it drops messages (a dropped message is a gap: the consumer
# is replaced, nothing is lost). Flow control keeps it far below this in practice.
_PENDING_MESSAGES = 8192
_PENDING_BYTES = 32 * 1024 * 1024


class StreamMissing(BusUnavailable):
    """The stream was deleted under the gateway: retrying will not bring it back."""


class JetStreamBus:
    def __init__(
        self,
        *,
        url: str,
        stream: str,
        subject_prefix: str,
        max_age: float | None = None,
        max_messages: int | None = None,
        max_bytes: int | None = None,
        storage: Literal["file", "memory"] = "file",
        consumer_heartbeat: float = 5.0,
        connect_timeout: float = 2.0,
        reconnect_wait: float = 1.0,
        request_timeout: float = 5.0,
    ) -> None:
        self.url = url
        self.stream = stream
        self.prefix = subject_prefix
        self._config = StreamConfig(
            name=stream,
            subjects=[f"{subject_prefix}.>"],
            retention=RetentionPolicy.LIMITS,
            discard=DiscardPolicy.OLD,
            max_age=max_age or 0,  # 0: no limit
            max_msgs=max_messages or -1,
            max_bytes=max_bytes or -1,
            storage=StorageType(storage),
        )
        self.consumer_heartbeat = consumer_heartbeat
        self._connect_timeout = connect_timeout
        self._reconnect_wait = reconnect_wait
        self.request_timeout = request_timeout
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        self._ready = False  # connected, and the stream is there
        self._error: str | None = "not connected yet"
        self._starting: asyncio.Task[None] | None = None
        self._closing = False

    # Life cycle ---------------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect in the background; wait briefly, so a gateway next to a running NATS starts ready."""
        self._starting = asyncio.create_task(self._connect())
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._connect_timeout + 1.0):
                await asyncio.shield(self._starting)
        if not self._ready:
            logger.error(
                "events: the message bus (NATS JetStream at %s) is unavailable: %s; retrying in the background",
                self.url,
                self._error,
            )

    async def close(self) -> None:
        self._closing = True
        if self._starting is not None and not self._starting.done():
            self._starting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._starting
        self._ready = False
        if self._nc is not None:
            with contextlib.suppress(*_NATS_ERRORS):
                await self._nc.close()

    def status(self) -> Mapping[str, Any]:
        status: dict[str, Any] = {"bus": "nats", "url": self.url, "stream": self.stream, "connected": self.ready}
        if not self.ready and self._error:
            status["error"] = self._error
        return status

    @property
    def ready(self) -> bool:
        return self._ready and self._nc is not None and self._nc.is_connected

    async def _connect(self) -> None:
        async def on_error(exc: Exception) -> None:
            if isinstance(exc, nats.errors.SlowConsumerError):
                return  # a gap the subscription repairs by itself
            self._error = _describe(exc)
            logger.debug("events: NATS: %s", self._error)

        async def on_disconnected() -> None:
            if not self._closing:
                logger.warning("events: disconnected from NATS at %s; reconnecting", self.url)

        async def on_reconnected() -> None:
            self._error = None
            logger.info("events: reconnected to NATS at %s", self.url)

        # nats-py retries the first connection too, for ever with max_reconnect_attempts=-1.
        nc = await nats.connect(
            self.url,
            name="upf-gateway-events",
            connect_timeout=max(1, round(self._connect_timeout)),
            reconnect_time_wait=self._reconnect_wait,
            max_reconnect_attempts=-1,
            allow_reconnect=True,
            error_cb=on_error,
            disconnected_cb=on_disconnected,
            reconnected_cb=on_reconnected,
        )
        self._nc = nc
        self._js = nc.jetstream(timeout=self.request_timeout)
        delay = self._reconnect_wait
        while True:
            try:
                await self._ensure_stream(self._js)
                break
            except _NATS_ERRORS as exc:
                self._error = f"the stream {self.stream} cannot be used: {_describe(exc)}"
                logger.error("events: %s; retrying in %.0f s", self._error, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
        self._error = None
        self._ready = True
        logger.info("events: connected to NATS JetStream at %s, stream %s", self.url, self.stream)

    async def _ensure_stream(self, js: JetStreamContext) -> None:
        try:
            info = await js.stream_info(self.stream)
        except nats.js.errors.NotFoundError:
            await js.add_stream(self._config)
            logger.info("events: created the JetStream stream %s for %s", self.stream, self._config.subjects)
            return
        current = info.config
        wanted = self._config
        subjects = list(current.subjects or [])
        missing = [subject for subject in wanted.subjects or [] if subject not in subjects]
        limits = ("max_age", "max_msgs", "max_bytes")
        if missing or any(getattr(current, name) != getattr(wanted, name) for name in limits):
            updated = dataclasses.replace(
                current,
                subjects=subjects + missing,
                max_age=wanted.max_age,
                max_msgs=wanted.max_msgs,
                max_bytes=wanted.max_bytes,
            )
            await js.update_stream(updated)
            logger.info("events: updated the JetStream stream %s to the configured subjects and limits", self.stream)

    def _connection(self) -> tuple[Client, JetStreamContext]:
        if not self.ready or self._nc is None or self._js is None:
            why = self._error or "reconnecting"
            raise BusUnavailable(f"the message bus (NATS at {self.url}) is unavailable: {why}")
        return self._nc, self._js

    # The bus --------------------------------------------------------------------------------------

    def subject(self, topic: str) -> str:
        return f"{self.prefix}.{topic}"

    async def publish(self, topic: str, data: bytes) -> str:
        check_topic(topic)
        _, js = self._connection()
        try:
            ack = await js.publish(self.subject(topic), data, stream=self.stream)
        except nats.errors.MaxPayloadError as exc:
            raise ValueError(f"the event is too large for NATS: {exc}") from None
        except _NATS_ERRORS as exc:
            raise BusUnavailable(f"the message bus did not store the event: {_describe(exc)}") from None
        return str(ack.seq)

    async def _bounds(self) -> tuple[int, int]:
        """The oldest and newest sequence in the stream (first is last + 1 when it is empty)."""
        _, js = self._connection()
        try:
            state = (await js.stream_info(self.stream)).state
        except _NATS_ERRORS as exc:
            raise BusUnavailable(f"the message bus did not answer: {_describe(exc)}") from None
        return max(state.first_seq, 1), state.last_seq

    async def last_id(self) -> str:
        return str((await self._bounds())[1])

    async def subscribe(self, patterns: Sequence[str], from_id: str | None = None) -> _OrderedSubscription:
        compiled = [parse_pattern(pattern) for pattern in patterns]
        after = parse_event_id(from_id)
        first, last = await self._bounds()
        if after is None:
            after = last
        elif after > last:
            raise UnknownEventId(f"event id {after} is newer than the newest event ({last})")
        elif after < first - 1:
            raise EventIdTooOld(f"the events after id {after} are no longer retained (the oldest is {first})", first)
        subscription = _OrderedSubscription(self, compiled, after)
        await subscription.open()
        return subscription


class _OrderedSubscription:
    """Events after `after` matching `patterns`, in order, each once, across consumer replacements."""

    def __init__(self, bus: JetStreamBus, patterns: list[Pattern], after: int) -> None:
        self._bus = bus
        self._patterns = patterns
        self._last = after  # the last stream sequence handled (handed out or skipped)
        common = common_filter(patterns)
        self._filter = bus.subject(common) if common is not None else f"{bus.prefix}.>"
        self._skip = len(bus.prefix) + 1
        self._sub: NatsSubscription | None = None
        # Messages of the current consumer, put here by nats-py's callback: waiting on an
        # asyncio.Queue directly (not nats-py's next_msg, a task in a task under wait_for) keeps a
        # cancellation from being lost when a message arrives at the same moment (Python 3.11).
        self._messages: asyncio.Queue[Msg] = asyncio.Queue()
        self._consumer: str | None = None
        self._delivered = 0  # consumer sequence of the last message from the current consumer
        self._closed = False
        # No message nor heartbeat for this long: the consumer is gone (or NATS was); replace it.
        self._silence = 3 * bus.consumer_heartbeat

    def __aiter__(self) -> _OrderedSubscription:
        return self

    async def open(self) -> None:
        nc, js = self._bus._connection()
        inbox = nc.new_inbox()
        messages: asyncio.Queue[Msg] = asyncio.Queue()  # bounded by flow control: see the module doc

        async def deliver(msg: Msg) -> None:
            messages.put_nowait(msg)

        sub = await nc.subscribe(
            inbox, cb=deliver, pending_msgs_limit=_PENDING_MESSAGES, pending_bytes_limit=_PENDING_BYTES
        )
        config = ConsumerConfig(
            deliver_subject=inbox,
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=self._last + 1,
            filter_subject=self._filter,
            ack_policy=AckPolicy.NONE,
            max_deliver=1,
            flow_control=True,
            idle_heartbeat=self._bus.consumer_heartbeat,
            mem_storage=True,
            num_replicas=1,
            # The server deletes a consumer nobody listens to after this; ours are replaced, not reused.
            inactive_threshold=max(10.0, self._silence),
        )
        try:
            info = await js.add_consumer(self._bus.stream, config)
        except nats.js.errors.NotFoundError:
            await _quietly(sub.unsubscribe())
            raise StreamMissing(f"the stream {self._bus.stream} does not exist") from None
        except _NATS_ERRORS as exc:
            await _quietly(sub.unsubscribe())
            raise BusUnavailable(f"the message bus did not start a consumer: {_describe(exc)}") from None
        except BaseException:  # cancelled: leave no subscription behind (the server drops the consumer)
            await _quietly(sub.unsubscribe())
            raise
        self._sub, self._messages, self._consumer, self._delivered = sub, messages, info.name, 0

    async def _replace(self, why: str) -> None:
        logger.info("events: replacing the consumer of %s after sequence %d: %s", self._filter, self._last, why)
        await self._drop()
        delay = 0.25
        while not self._closed:
            if self._bus._closing:
                raise BusUnavailable("the message bus was closed")
            try:
                await self.open()
                return
            except StreamMissing:
                raise
            except BusUnavailable as exc:
                logger.debug("events: %s; retrying in %.2f s", exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    async def _drop(self) -> None:
        sub, consumer = self._sub, self._consumer
        self._sub = self._consumer = None
        if sub is not None:
            await _quietly(sub.unsubscribe())
        if consumer is not None and self._bus.ready:
            # Tidy at once (the server would after inactive_threshold), but never wait long for it.
            _, js = self._bus._connection()
            await _quietly(js.delete_consumer(self._bus.stream, consumer), timeout=1.0)

    async def __anext__(self) -> Event:
        while not self._closed:
            if self._sub is None:
                await self._replace("no consumer")
                continue
            try:
                async with asyncio.timeout(self._silence):
                    msg = await self._messages.get()
            except TimeoutError:
                await self._replace(f"no message nor heartbeat for {self._silence:g} s")
                continue
            event = await self._take(msg)
            if event is not None:
                return event
        raise StopAsyncIteration

    async def _take(self, msg: Msg) -> Event | None:
        headers = msg.headers
        status = headers.get("Status") if headers else None
        if status is not None:
            assert headers is not None
            if status != "100":  # e.g. 409 "Consumer Deleted"
                await self._replace(f"status {status} {headers.get('Description', '')}".strip())
                return None
            # Flow control (it has a reply subject) or an idle heartbeat, which may name a flow
            # control request the server is stalled on. Everything before it has been consumed.
            for reply in (msg.reply, headers.get("Nats-Consumer-Stalled")):
                if reply:
                    await self._answer(reply)
            last = headers.get("Nats-Last-Consumer")
            if last is not None and last.isdigit() and int(last) != self._delivered:
                await self._replace(f"the heartbeat reports message {last}, the last here is {self._delivered}")
            return None
        try:
            metadata = msg.metadata
        except nats.errors.NotJSMessageError:
            return None
        if metadata.sequence.consumer != self._delivered + 1:
            await self._replace(f"message {metadata.sequence.consumer} after {self._delivered}: some were lost")
            return None
        self._delivered += 1
        sequence = metadata.sequence.stream
        if sequence <= self._last:
            return None
        self._last = sequence
        topic = msg.subject[self._skip :]
        tokens = topic.split(".")
        if not any(pattern.matches_tokens(tokens) for pattern in self._patterns):
            return None
        return Event(str(sequence), topic, msg.data, metadata.timestamp.timestamp())

    async def position(self) -> str:
        """The last sequence handed out; or the stream's newest when the consumer is idle and drained.

        Idle and drained: the server has nothing matching left to deliver (num_pending 0) and every
        message it delivered was taken here. Then nothing matching came up to the newest sequence
        read *before* asking, and a replacement need not scan those events again.
        """
        consumer = self._consumer
        if self._sub is None or consumer is None or not self._messages.empty():
            return str(self._last)
        try:
            _, js = self._bus._connection()
            newest = (await js.stream_info(self._bus.stream)).state.last_seq
            info = await js.consumer_info(self._bus.stream, consumer)
        except (*_NATS_ERRORS, BusUnavailable):
            return str(self._last)
        if info.num_pending == 0 and info.delivered.consumer_seq == self._delivered and self._messages.empty():
            return str(max(self._last, newest))
        return str(self._last)

    async def _answer(self, reply: str) -> None:
        with contextlib.suppress(*_NATS_ERRORS, BusUnavailable):
            await self._bus._connection()[0].publish(reply)

    async def close(self) -> None:
        self._closed = True
        await self._drop()


async def _quietly(operation: Any, timeout: float | None = None) -> None:
    """Best effort: a failure here changes nothing the caller could act on."""
    with contextlib.suppress(*_NATS_ERRORS, BusUnavailable):
        async with asyncio.timeout(timeout):
            await operation


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    name = type(exc).__name__
    return f"{name}: {text}" if text else name
