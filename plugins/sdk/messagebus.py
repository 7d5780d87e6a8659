"""A typed async client of IMessageBus (proto/upf/messagebus/v1/messagebus.proto).

    bus = await plugin.message_bus()                  # or MessageBusClient(channel)
    await bus.publish("order.created", b'{"id": 7}')
    await bus.publish_batch([Outgoing("order.created", b'{"id": 8}'), Outgoing("order.paid", b"8")])
    async with bus.subscribe("order.*", durable="billing") as messages:
        async for message in messages:
            ...
            await message.ack()                       # returns once the bus recorded it
    reply = await bus.request("price.quote", b"7", timeout=2.0)
    await bus.reply(message, b"42")                   # answer a request delivered to a subscriber

Delivery is at least once: a message not acknowledged within `ack_wait` seconds, or nak'ed, comes
again with `delivery_count` one higher. Errors are MessageBusError subclasses, never raw gRPC errors.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from upf.messagebus.v1 import messagebus_pb2 as pb, messagebus_pb2_grpc

__all__ = [
    "BusUnavailable",
    "Capabilities",
    "Deliver",
    "InvalidMessage",
    "Message",
    "MessageBusClient",
    "MessageBusError",
    "NoReply",
    "NotSupported",
    "Outgoing",
    "Published",
    "Subscription",
]


class MessageBusError(Exception):
    """The bus refused or failed a call; `code` is the gRPC status."""

    def __init__(self, message: str, code: grpc.StatusCode = grpc.StatusCode.UNKNOWN) -> None:
        super().__init__(message)
        self.code = code


class InvalidMessage(MessageBusError, ValueError):
    """INVALID_ARGUMENT: a subject, name, size or option was refused; the message names the field."""


class BusUnavailable(MessageBusError):
    """UNAVAILABLE: the bus plugin or its broker cannot be reached now; retry later."""


class NotSupported(MessageBusError):
    """UNIMPLEMENTED: this bus lacks the capability (see capabilities())."""


class NoReply(MessageBusError, TimeoutError):
    """DEADLINE_EXCEEDED: a request got no reply within its timeout."""


_ERRORS: dict[grpc.StatusCode, type[MessageBusError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidMessage,
    grpc.StatusCode.UNAVAILABLE: BusUnavailable,
    grpc.StatusCode.UNIMPLEMENTED: NotSupported,
    grpc.StatusCode.DEADLINE_EXCEEDED: NoReply,
}


def _error(exc: grpc.aio.AioRpcError) -> MessageBusError:
    return _ERRORS.get(exc.code(), MessageBusError)(exc.details() or exc.code().name, exc.code())


@dataclass(frozen=True, slots=True)
class Deliver:
    """Where a new consumer starts: `Deliver.new()`, `.all()`, `.from_sequence(n)`, `.from_time(t)`."""

    policy: int = pb.DELIVER_POLICY_NEW
    sequence: int = 0
    time: datetime.datetime | None = None

    @classmethod
    def new(cls) -> Deliver:
        return cls()

    @classmethod
    def all(cls) -> Deliver:
        return cls(pb.DELIVER_POLICY_ALL)

    @classmethod
    def from_sequence(cls, sequence: int) -> Deliver:
        return cls(pb.DELIVER_POLICY_BY_SEQUENCE, sequence=sequence)

    @classmethod
    def from_time(cls, time: datetime.datetime) -> Deliver:
        return cls(pb.DELIVER_POLICY_BY_TIME, time=time)


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A message for publish_batch()."""

    subject: str
    payload: bytes = b""
    headers: Mapping[str, str] = field(default_factory=dict)
    reply_to: str = ""


@dataclass(frozen=True, slots=True)
class Published:
    sequence: int
    id: str


@dataclass(frozen=True, slots=True)
class Capabilities:
    backend: str
    capabilities: frozenset[str]
    max_payload_bytes: int


@dataclass(eq=False, slots=True)
class Message:
    subject: str
    payload: bytes
    headers: dict[str, str]
    id: str
    sequence: int
    timestamp: datetime.datetime
    reply_to: str
    delivery_count: int = 1
    ack_id: int = 0
    _subscription: Subscription | None = field(default=None, repr=False)

    async def ack(self) -> None:
        """Acknowledge; returns once the bus recorded it (the message will not come again)."""
        await self._settle(pb.SubscribeRequest(ack=pb.Ack(ack_id=self.ack_id)))

    async def nak(self, delay: float = 0.0) -> None:
        """Give the message back: it comes again after `delay` seconds."""
        await self._settle(pb.SubscribeRequest(nak=pb.Nak(ack_id=self.ack_id, delay=delay)))

    async def _settle(self, request: pb.SubscribeRequest) -> None:
        if self._subscription is None:
            raise MessageBusError("this message was not delivered by a subscription (a reply?)")
        await self._subscription._settle(self.ack_id, request)


def _from_pb(message: pb.Message, subscription: Subscription | None = None, delivery: Any = None) -> Message:
    return Message(
        subject=message.subject,
        payload=message.payload,
        headers=dict(message.headers),
        id=message.id,
        sequence=message.sequence,
        timestamp=message.timestamp.ToDatetime(tzinfo=datetime.UTC),
        reply_to=message.reply_to,
        delivery_count=delivery.delivery_count if delivery is not None else 1,
        ack_id=delivery.ack_id if delivery is not None else 0,
        _subscription=subscription,
    )


class Subscription:
    """An open subscription: an async iterator of Messages, closed by `async with` or `close()`."""

    def __init__(self, call: Any, start: pb.SubscribeStart) -> None:
        self._call = call
        self._start = start
        self._writing = asyncio.Lock()  # grpc.aio allows one write at a time
        self._messages: asyncio.Queue[Message | MessageBusError | None] = asyncio.Queue()
        self._settled: dict[int, asyncio.Future[None]] = {}
        self._ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._reader: asyncio.Task[None] | None = None
        self._ended: MessageBusError | None = None

    async def open(self) -> Subscription:
        """Start the subscription; returns once the consumer exists (later publishes are delivered)."""
        self._reader = asyncio.create_task(self._read())
        try:
            await self._write(pb.SubscribeRequest(start=self._start))
            await self._ready
        except BaseException:
            await self.close()
            raise
        return self

    async def __aenter__(self) -> Subscription:
        return await self.open()

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    def __aiter__(self) -> AsyncIterator[Message]:
        return self

    async def __anext__(self) -> Message:
        item = await self._messages.get()
        if item is None:
            self._messages.put_nowait(None)
            raise StopAsyncIteration
        if isinstance(item, MessageBusError):
            self._messages.put_nowait(item)
            raise item
        return item

    async def close(self) -> None:
        """End the subscription; a durable keeps its place and its unacknowledged messages."""
        self._call.cancel()
        if self._reader is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        if self._ready.done() and not self._ready.cancelled():
            self._ready.exception()  # seen: the caller got it from open() or the iterator

    async def _settle(self, ack_id: int, request: pb.SubscribeRequest) -> None:
        if self._ended is not None:
            raise self._ended
        done = self._settled[ack_id] = asyncio.get_running_loop().create_future()
        try:
            await self._write(request)
        except BaseException:
            self._settled.pop(ack_id, None)
            done.cancel()
            raise
        await done

    async def _write(self, request: pb.SubscribeRequest) -> None:
        async with self._writing:
            try:
                await self._call.write(request)
            except grpc.aio.AioRpcError as exc:
                raise _error(exc) from None
            except asyncio.InvalidStateError:
                # The call is over; the reader is about to say why.
                if self._reader is not None:
                    await asyncio.wait({self._reader}, timeout=5.0)
                raise self._ended or BusUnavailable("the subscription has ended") from None

    async def _read(self) -> None:
        ended: MessageBusError | None = None
        try:
            async for response in self._call:
                kind = response.WhichOneof("kind")
                if kind == "delivery":
                    delivery = response.delivery
                    self._messages.put_nowait(_from_pb(delivery.message, self, delivery))
                elif kind == "ack_result":
                    result = response.ack_result
                    done = self._settled.pop(result.ack_id, None)
                    if done is not None and not done.done():
                        if result.ok:
                            done.set_result(None)
                        else:
                            done.set_exception(MessageBusError(result.error or "not settled"))
                elif kind == "ready" and not self._ready.done():
                    self._ready.set_result(None)
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.CANCELLED:
                ended = _error(exc)
        except asyncio.CancelledError:
            pass
        self._ended = ended or MessageBusError("the subscription has ended", grpc.StatusCode.CANCELLED)
        for done in self._settled.values():
            if not done.done():
                done.set_exception(self._ended)
        self._settled.clear()
        if not self._ready.done():
            self._ready.set_exception(self._ended)
        self._messages.put_nowait(ended)


class MessageBusClient:
    def __init__(self, channel: grpc.aio.Channel, *, timeout: float = 10.0) -> None:
        self._stub = messagebus_pb2_grpc.MessageBusStub(channel)
        self._timeout = timeout  # deadline of each unary call

    async def publish(
        self, subject: str, payload: bytes = b"", headers: Mapping[str, str] | None = None, *, reply_to: str = ""
    ) -> Published:
        request = pb.PublishRequest(subject=subject, payload=payload, headers=dict(headers or {}), reply_to=reply_to)
        try:
            reply = await self._stub.Publish(request, timeout=self._timeout)
        except grpc.aio.AioRpcError as exc:
            raise _error(exc) from None
        return Published(reply.sequence, reply.id)

    async def publish_batch(self, messages: Sequence[Outgoing]) -> list[Published]:
        """Several messages in one call, stored in their order; cheaper per message than publish()."""
        request = pb.PublishBatchRequest(
            messages=[
                pb.PublishRequest(subject=m.subject, payload=m.payload, headers=dict(m.headers), reply_to=m.reply_to)
                for m in messages
            ]
        )
        try:
            reply = await self._stub.PublishBatch(request, timeout=self._timeout)
        except grpc.aio.AioRpcError as exc:
            raise _error(exc) from None
        return [Published(result.sequence, result.id) for result in reply.results]

    def subscribe(
        self,
        subject: str,
        *,
        durable: str = "",
        deliver: Deliver = Deliver(),
        ack_wait: float = 30.0,
        max_in_flight: int = 256,
    ) -> Subscription:
        """Use as `async with bus.subscribe(...) as messages` (or `await ....open()`)."""
        start = _start(subject, deliver, ack_wait, max_in_flight, durable=durable)
        return Subscription(self._stub.Subscribe(), start)  # type: ignore[call-arg]  # written to, no iterator

    def subscribe_queue(
        self,
        subject: str,
        queue: str,
        *,
        deliver: Deliver = Deliver(),
        ack_wait: float = 30.0,
        max_in_flight: int = 256,
    ) -> Subscription:
        """Members of one queue group share the messages: each goes to exactly one of them."""
        start = _start(subject, deliver, ack_wait, max_in_flight, queue=queue)
        return Subscription(self._stub.SubscribeQueue(), start)  # type: ignore[call-arg]  # written to

    async def request(
        self, subject: str, payload: bytes = b"", headers: Mapping[str, str] | None = None, *, timeout: float = 5.0
    ) -> Message:
        """Publish and wait for the first reply; NoReply after `timeout` seconds."""
        request = pb.RequestRequest(subject=subject, payload=payload, headers=dict(headers or {}), timeout=timeout)
        try:
            reply = await self._stub.Request(request, timeout=timeout + self._timeout)
        except grpc.aio.AioRpcError as exc:
            raise _error(exc) from None
        return _from_pb(reply.reply)

    async def reply(
        self, request: Message, payload: bytes = b"", headers: Mapping[str, str] | None = None
    ) -> Published:
        """Answer a request delivered to a subscriber (published to its reply_to)."""
        if not request.reply_to:
            raise InvalidMessage("this message asks for no reply (reply_to is empty)", grpc.StatusCode.INVALID_ARGUMENT)
        return await self.publish(request.reply_to, payload, headers)

    async def capabilities(self) -> Capabilities:
        try:
            reply = await self._stub.GetCapabilities(pb.GetCapabilitiesRequest(), timeout=self._timeout)
        except grpc.aio.AioRpcError as exc:
            raise _error(exc) from None
        return Capabilities(reply.backend, frozenset(reply.capabilities), reply.max_payload_bytes)


def _start(
    subject: str, deliver: Deliver, ack_wait: float, max_in_flight: int, *, durable: str = "", queue: str = ""
) -> pb.SubscribeStart:
    start = pb.SubscribeStart(
        subject=subject,
        durable=durable,
        queue=queue,
        deliver_policy=deliver.policy,  # type: ignore[arg-type]  # one of the enum's values
        start_sequence=deliver.sequence,
        ack_wait=ack_wait,
        max_in_flight=max_in_flight,
    )
    if deliver.time is not None:
        timestamp = Timestamp()
        timestamp.FromDatetime(deliver.time)
        start.start_time.CopyFrom(timestamp)
    return start
