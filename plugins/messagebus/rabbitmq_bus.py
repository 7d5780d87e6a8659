"""message-bus-rabbitmq: RabbitMQ (AMQP 0-9-1, aio-pika), with no broker plugin.

- Messages are published, persistent and with publisher confirms, to the topic exchange `<prefix>`
  with the subject as routing key (a filter's `>` is AMQP's `#`). Replies (_INBOX.x) go through the
  default exchange straight to the requester's own queue, `<prefix>.inbox.x`.
- A durable or queue group is a durable queue `<prefix>.<namespace>__d__<name>` bound with the filter;
  a queue group's members consume from the same queue, so each message goes to one of them. A plain
  subscription has an exclusive queue of its own that goes with it.
- RabbitMQ has no ack wait and no delayed redelivery, so this plugin does both: a delivery not settled
  within the ack wait, or nak'ed, is published again to its queue (with its delivery count in the
  `x-upf-deliveries` header) and the original acknowledged. A nak with a delay publishes it instead to
  `<queue>.delay.<ms>`, a queue whose message TTL dead-letters it back to the queue after the delay
  (x-message-ttl + x-dead-letter-exchange; the delay queue expires when unused).
- Acks are confirmed by a synchronous call on the same channel after basic.ack (a channel's methods
  are handled in order): once it answers, the broker has the ack.
- No replay: a queue only holds what arrived after it was made (no "replay" capability), and no
  sequences. A durable subscribed again with another subject gets a binding for that subject too.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import aio_pika
import aio_pika.exceptions
from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractQueue,
)

from plugins.messagebus.backend import AckTooLate, BusUnavailable, ConsumerSpec, Outgoing, Received
from plugins.messagebus.subjects import INBOX_PREFIX, is_inbox, matches

__all__ = ["RabbitBus"]

CAPABILITIES = frozenset({"queue-groups", "request-reply", "delayed-nak", "persistence"})
_ERRORS = (aio_pika.exceptions.AMQPError, OSError, asyncio.TimeoutError, RuntimeError)
_SUBJECT = "x-upf-subject"
_DELIVERIES = "x-upf-deliveries"  # deliveries before this copy was published again
_REPLY_TO = "x-upf-reply-to"
DELAY_QUEUE_IDLE_MS = 60_000  # a delay queue unused this long after its TTL goes away


class RabbitBus:
    name = "rabbitmq"
    capabilities = CAPABILITIES
    max_payload = 1024 * 1024

    def __init__(
        self, url: str, *, prefix: str = "upf.bus", timeout: float = 5.0, clock: Callable[[], float] = time.time
    ) -> None:
        self._url = url
        self._prefix = prefix
        self._timeout = timeout
        self._clock = clock
        self._connection: Any = None
        self._publisher: AbstractChannel | None = None
        self._exchange: AbstractExchange | None = None
        self._connecting = asyncio.Lock()
        self.declared: set[str] = set()  # queue names (tests delete them)

    async def _channel(self) -> tuple[Any, AbstractChannel, AbstractExchange]:
        """The connection, a confirming publisher channel, and the exchange; made again if lost."""
        async with self._connecting:
            if (
                self._connection is None
                or self._connection.is_closed
                or self._publisher is None
                or self._publisher.is_closed
            ):
                await self._drop()
                try:
                    self._connection = await aio_pika.connect(self._url, timeout=self._timeout)
                    self._publisher = await self._connection.channel(publisher_confirms=True)
                    self._exchange = await self._publisher.declare_exchange(
                        self._prefix, aio_pika.ExchangeType.TOPIC, durable=True
                    )
                except _ERRORS as exc:
                    await self._drop()
                    raise BusUnavailable(f"RabbitMQ cannot be reached ({_describe(exc)})") from None
            assert self._publisher is not None
            assert self._exchange is not None
            return self._connection, self._publisher, self._exchange

    async def _drop(self) -> None:
        connection, self._connection, self._publisher, self._exchange = self._connection, None, None, None
        if connection is not None:
            with contextlib.suppress(*_ERRORS):
                await connection.close()

    def queue_of(self, spec: ConsumerSpec) -> str | None:
        if is_inbox(spec.filter):
            return f"{self._prefix}.inbox.{spec.filter.removeprefix(INBOX_PREFIX)}"
        return f"{self._prefix}.{spec.name}" if spec.name else None

    async def publish(self, message: Outgoing) -> tuple[int, str]:
        _connection, publisher, exchange = await self._channel()
        message_id = uuid.uuid4().hex
        headers: dict[str, Any] = {**message.headers, _SUBJECT: message.subject}
        if message.reply_to:
            headers[_REPLY_TO] = message.reply_to
        amqp = aio_pika.Message(
            message.payload,
            headers=headers,
            message_id=message_id,
            timestamp=datetime.datetime.fromtimestamp(self._clock(), datetime.UTC),
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        )
        try:
            if is_inbox(message.subject):
                inbox = f"{self._prefix}.inbox.{message.subject.removeprefix(INBOX_PREFIX)}"
                await publisher.default_exchange.publish(amqp, inbox, timeout=self._timeout)
            else:
                await exchange.publish(amqp, message.subject, timeout=self._timeout)
        except _ERRORS as exc:
            raise BusUnavailable(f"publishing to RabbitMQ failed ({_describe(exc)})") from None
        return 0, message_id

    async def publish_many(self, messages: Sequence[Outgoing]) -> list[tuple[int, str]]:
        # One channel sends in call order; the publisher confirms are awaited together.
        return list(await asyncio.gather(*(self.publish(message) for message in messages)))

    async def republish(self, message: AbstractIncomingMessage, queue: str, deliveries: int, delay: float) -> None:
        """A copy of `message` into `queue` (after `delay` seconds), counting `deliveries` so far."""
        _connection, publisher, _exchange = await self._channel()
        headers = {**(message.headers or {}), _DELIVERIES: deliveries}
        copy = aio_pika.Message(
            message.body,
            headers=headers,
            message_id=message.message_id,
            timestamp=message.timestamp,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        )
        target = queue
        if delay > 0:
            milliseconds = max(int(delay * 1000), 1)
            target = f"{queue}.delay.{milliseconds}"
            await publisher.declare_queue(
                target,
                durable=True,
                arguments={
                    "x-message-ttl": milliseconds,
                    "x-dead-letter-exchange": "",
                    "x-dead-letter-routing-key": queue,
                    "x-expires": milliseconds + DELAY_QUEUE_IDLE_MS,
                },
            )
            self.declared.add(target)
        await publisher.default_exchange.publish(copy, target, timeout=self._timeout)

    async def consumer(self, spec: ConsumerSpec) -> _RabbitConsumer:
        connection, _publisher, _exchange = await self._channel()
        name = self.queue_of(spec)
        try:
            channel = await connection.channel()
            await channel.set_qos(prefetch_count=spec.max_in_flight)
            if name is None:
                queue = await channel.declare_queue(exclusive=True, auto_delete=True)
            elif is_inbox(spec.filter):
                queue = await channel.declare_queue(name, exclusive=True, auto_delete=True)
            else:
                queue = await channel.declare_queue(name, durable=True)
                self.declared.add(name)
            if not is_inbox(spec.filter):
                await queue.bind(self._prefix, _routing_key(spec.filter))
            consumer = _RabbitConsumer(self, channel, queue, spec)
            await consumer.start()
        except _ERRORS as exc:
            raise BusUnavailable(f"a RabbitMQ consumer cannot be made ({_describe(exc)})") from None
        return consumer

    async def close(self) -> None:
        await self._drop()

    async def destroy(self) -> None:
        """Delete this bus's exchange and queues (tests)."""
        _connection, publisher, _exchange = await self._channel()
        for name in sorted(self.declared):
            with contextlib.suppress(*_ERRORS):
                await publisher.queue_delete(name)
        with contextlib.suppress(*_ERRORS):
            await publisher.exchange_delete(self._prefix)


@dataclass(eq=False, slots=True)
class _Delivery:
    message: AbstractIncomingMessage
    count: int
    timer: asyncio.TimerHandle | None = None
    settled: bool = False


class _RabbitConsumer:
    def __init__(self, bus: RabbitBus, channel: AbstractChannel, queue: AbstractQueue, spec: ConsumerSpec) -> None:
        self._bus = bus
        self._channel = channel
        self._queue = queue
        self._spec = spec
        self._arrived: asyncio.Queue[AbstractIncomingMessage | None] = asyncio.Queue()
        self._tag: str | None = None
        self._expiring: set[asyncio.Task[None]] = set()
        self._unsettled: set[_Delivery] = set()
        self._unconfirmed: list[asyncio.Future[None]] = []  # acks sent, waiting for a basic.qos answer
        self._confirming: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._channel.close_callbacks.add(lambda *_: self._arrived.put_nowait(None))
        self._tag = await self._queue.consume(self._arrived.put, no_ack=False)

    async def next(self) -> Received:
        while True:
            message = await self._arrived.get()
            if message is None or self._channel.is_closed:
                self._arrived.put_nowait(None)
                raise BusUnavailable("the RabbitMQ channel closed; subscribe again")
            headers = dict(message.headers or {})
            subject = str(headers.pop(_SUBJECT, message.routing_key or ""))
            # AMQP's "#" also matches no word at all, NATS's ">" does not: those are not ours.
            if matches(self._spec.filter, subject):
                return self._received(message, headers, subject)
            await self._settle(_Delivery(message, 1), again_after=None)

    def _received(self, message: AbstractIncomingMessage, headers: dict[str, Any], subject: str) -> Received:
        reply_to = str(headers.pop(_REPLY_TO, ""))
        # Copies this plugin published again carry the count; the broker's own redelivery (after a
        # connection was lost with the message unacknowledged) adds one.
        count = int(headers.pop(_DELIVERIES, 0) or 0) + 1 + (1 if message.redelivered else 0)
        delivery = _Delivery(message, count)
        loop = asyncio.get_running_loop()
        delivery.timer = loop.call_later(self._spec.ack_wait, self._expire, delivery)
        self._unsettled.add(delivery)
        timestamp = message.timestamp.timestamp() if message.timestamp else 0.0
        text_headers = {str(k): v.decode() if isinstance(v, bytes) else str(v) for k, v in headers.items()}
        return Received(
            subject, message.body, text_headers, message.message_id or "", 0, timestamp, reply_to, count, delivery
        )

    def _expire(self, delivery: _Delivery) -> None:
        if delivery.settled:
            return
        task = asyncio.get_running_loop().create_task(self._resend(delivery))
        self._expiring.add(task)
        task.add_done_callback(self._expiring.discard)

    async def _resend(self, delivery: _Delivery) -> None:
        # The channel gone, the delivery went with it: the broker gives the message out again.
        with contextlib.suppress(BusUnavailable, AckTooLate):
            await self._settle(delivery, again_after=0.0)

    async def _settle(self, delivery: _Delivery, *, again_after: float | None) -> None:
        """Ack the delivery; with `again_after`, first publish a copy due after that many seconds."""
        if delivery.settled:
            raise AckTooLate("the ack wait ran out first: the message was sent again")
        if self._channel.is_closed:
            # The broker gives the message out again by itself; a copy now would be a second one.
            raise BusUnavailable("the RabbitMQ channel closed; the message comes again")
        delivery.settled = True
        self._unsettled.discard(delivery)
        if delivery.timer is not None:
            delivery.timer.cancel()
        try:
            if again_after is not None:
                await self._bus.republish(delivery.message, self._queue.name, delivery.count, again_after)
            await delivery.message.ack()
        except _ERRORS as exc:
            raise BusUnavailable(f"RabbitMQ did not take the ack ({_describe(exc)})") from None
        await self._confirmed()

    async def _confirmed(self) -> None:
        """Returns once the broker has handled the acks sent on this channel before the call.

        basic.ack has no answer; a basic.qos sent after it has, and the broker answers in order. Acks
        sent while one such round trip is under way share the next one: one at a time per ack made
        acknowledging as slow as the round trip (2,400 messages/s where the broker takes 8,000)."""
        confirmed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._unconfirmed.append(confirmed)
        if self._confirming is None or self._confirming.done():
            self._confirming = asyncio.create_task(self._confirm_rounds())
        await confirmed

    async def _confirm_rounds(self) -> None:
        while self._unconfirmed:
            waiting, self._unconfirmed = self._unconfirmed, []
            try:
                await self._channel.set_qos(prefetch_count=self._spec.max_in_flight)
            except BaseException as exc:
                failure = BusUnavailable(f"RabbitMQ did not confirm the ack ({_describe(exc)})")
                for confirmed in waiting + self._unconfirmed:
                    if not confirmed.done():
                        confirmed.set_exception(failure)
                self._unconfirmed = []
                if isinstance(exc, _ERRORS):
                    return  # the next ack starts another round
                raise
            for confirmed in waiting:
                if not confirmed.done():
                    confirmed.set_result(None)

    async def ack(self, handle: object) -> None:
        assert isinstance(handle, _Delivery)
        await self._settle(handle, again_after=None)

    async def nak(self, handle: object, delay: float) -> None:
        assert isinstance(handle, _Delivery)
        await self._settle(handle, again_after=delay)

    async def close(self) -> None:
        # With the channel gone the broker gives its unacknowledged messages out again by itself: a copy
        # published now by an ack wait running out would be a second one.
        for delivery in self._unsettled:
            delivery.settled = True
            if delivery.timer is not None:
                delivery.timer.cancel()
        self._unsettled.clear()
        for task in list(self._expiring):
            task.cancel()
        if self._confirming is not None:
            self._confirming.cancel()  # its waiters are told the ack was not confirmed
        # Closing the channel gives every unacknowledged message back to its queue.
        with contextlib.suppress(*_ERRORS):
            await self._channel.close()


def _routing_key(filter_: str) -> str:
    return "#" if filter_ == ">" else filter_.removesuffix(".>") + ".#" if filter_.endswith(".>") else filter_


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
