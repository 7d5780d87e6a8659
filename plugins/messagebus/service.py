"""The upf.messagebus.v1.MessageBus servicer: one for every backend.

It checks what callers send (INVALID_ARGUMENT naming the field), keeps each caller's durables and queue
groups in the caller's namespace (its verified plugin id), and maps the backend's errors to gRPC
statuses: BusUnavailable -> UNAVAILABLE, Unsupported -> UNIMPLEMENTED, ConsumerConflict ->
FAILED_PRECONDITION; anything else is logged here and answered INTERNAL without its trace.

Subjects are global on purpose: an event (order.created) is meant to reach every plugin that cares,
whoever published it. What is private is where a plugin consumes from: its durables and queue groups,
so plugin B can neither steal nor acknowledge messages from plugin A's durable.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Any, NoReturn, TypeAlias

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from upf.messagebus.v1 import messagebus_pb2 as pb, messagebus_pb2_grpc

from common.tasks import cancel_and_wait
from plugins.messagebus.backend import (
    AckTooLate,
    Backend,
    BusUnavailable,
    Consumer,
    ConsumerConflict,
    ConsumerSpec,
    Deliver,
    Outgoing,
    Received,
    Unsupported,
)
from plugins.messagebus.subjects import (
    INBOX_PREFIX,
    InvalidInput,
    check_filter,
    check_name,
    check_subject,
    consumer_name,
)

__all__ = ["MessageBusService"]

logger = logging.getLogger(__name__)

_Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"
Namespacer = Callable[[_Context], Awaitable[str]]

MAX_HEADERS = 64
MAX_HEADER_BYTES = 16 * 1024
DEFAULT_ACK_WAIT = 30.0
MAX_ACK_WAIT = 12 * 3600.0
DEFAULT_IN_FLIGHT = 256
MAX_IN_FLIGHT = 10_000
MAX_BATCH = 1000  # messages in one PublishBatch
DEFAULT_REQUEST_TIMEOUT = 5.0
_RESERVED_HEADERS = ("upf-", "x-upf-")  # where backends keep a message's reply subject and counts
SETTLING_AT_ONCE = 64  # acks and naks of one subscription on their way to the broker at a time
_CLOSE_TIMEOUT = 5.0  # seconds a stream's consumer may take to close (unsubscribe) before it is left
MAX_REQUEST_TIMEOUT = 300.0
_POLICIES = {
    pb.DELIVER_POLICY_UNSPECIFIED: Deliver.NEW,
    pb.DELIVER_POLICY_NEW: Deliver.NEW,
    pb.DELIVER_POLICY_ALL: Deliver.ALL,
    pb.DELIVER_POLICY_BY_SEQUENCE: Deliver.BY_SEQUENCE,
    pb.DELIVER_POLICY_BY_TIME: Deliver.BY_TIME,
}


class MessageBusService(messagebus_pb2_grpc.MessageBusServicer):
    def __init__(self, backend: Backend, namespace_of: Namespacer) -> None:
        self._backend = backend
        self._namespace_of = namespace_of

    async def Publish(self, request: pb.PublishRequest, context: _Context) -> pb.PublishResponse:
        await self._namespace_of(context)  # only registered plugins publish
        async with _statuses(context):
            message = self._outgoing(request.subject, request.payload, request.headers, request.reply_to)
            sequence, message_id = await self._backend.publish(message)
        return pb.PublishResponse(sequence=sequence, id=message_id)

    async def PublishBatch(self, request: pb.PublishBatchRequest, context: _Context) -> pb.PublishBatchResponse:
        await self._namespace_of(context)
        async with _statuses(context):
            if len(request.messages) > MAX_BATCH:
                raise InvalidInput("messages", f"{len(request.messages)} messages, more than {MAX_BATCH} in one call")
            batch = []
            for index, item in enumerate(request.messages):
                try:
                    batch.append(self._outgoing(item.subject, item.payload, item.headers, item.reply_to))
                except InvalidInput as exc:
                    raise InvalidInput(f"messages[{index}].{exc.field}", str(exc).split(": ", 1)[1]) from None
            results = await self._backend.publish_many(batch)
        return pb.PublishBatchResponse(results=[pb.PublishResponse(sequence=s, id=i) for s, i in results])

    async def Subscribe(
        self, request_iterator: AsyncIterator[pb.SubscribeRequest], context: _Context
    ) -> AsyncIterator[pb.SubscribeResponse]:
        async with contextlib.aclosing(self._subscribe(request_iterator, context, queue=False)) as responses:
            async for response in responses:
                yield response

    async def SubscribeQueue(
        self, request_iterator: AsyncIterator[pb.SubscribeRequest], context: _Context
    ) -> AsyncIterator[pb.SubscribeResponse]:
        async with contextlib.aclosing(self._subscribe(request_iterator, context, queue=True)) as responses:
            async for response in responses:
                yield response

    async def Request(self, request: pb.RequestRequest, context: _Context) -> pb.RequestResponse:
        await self._namespace_of(context)
        async with _statuses(context):
            timeout = request.timeout or DEFAULT_REQUEST_TIMEOUT
            if not 0 < timeout <= MAX_REQUEST_TIMEOUT:
                raise InvalidInput("timeout", f"must be more than 0 and at most {MAX_REQUEST_TIMEOUT:g} seconds")
            inbox = INBOX_PREFIX + secrets.token_hex(12)
            message = self._outgoing(request.subject, request.payload, request.headers, inbox)
            # The reply consumer exists before the request is published, so a fast reply is not missed.
            spec = ConsumerSpec(inbox, None, False, Deliver.NEW, 0, 0.0, timeout + 1, 1)
            consumer = await self._backend.consumer(spec)
            try:
                await self._backend.publish(message)
                try:
                    reply = await asyncio.wait_for(consumer.next(), timeout)
                except TimeoutError:
                    await context.abort(
                        grpc.StatusCode.DEADLINE_EXCEEDED,
                        f'no reply on "{request.subject}" within {timeout:g} s: is anyone subscribed to it?',
                    )
                await consumer.ack(reply.handle)
            finally:
                await _close(consumer)
        return pb.RequestResponse(reply=_message(reply))

    async def GetCapabilities(
        self, request: pb.GetCapabilitiesRequest, context: _Context
    ) -> pb.GetCapabilitiesResponse:
        return pb.GetCapabilitiesResponse(
            backend=self._backend.name,
            capabilities=sorted(self._backend.capabilities),
            max_payload_bytes=self._backend.max_payload,
        )

    def _outgoing(self, subject: str, payload: bytes, headers: Any, reply_to: str) -> Outgoing:
        check_subject(subject)
        if reply_to:
            check_subject(reply_to, "reply_to")
        if len(payload) > self._backend.max_payload:
            raise InvalidInput(
                "payload", f"{len(payload)} bytes, more than this bus takes ({self._backend.max_payload})"
            )
        headers = dict(headers)
        if len(headers) > MAX_HEADERS:
            raise InvalidInput("headers", f"{len(headers)} headers, more than {MAX_HEADERS}")
        if sum(len(k) + len(v) for k, v in headers.items()) > MAX_HEADER_BYTES:
            raise InvalidInput("headers", f"more than {MAX_HEADER_BYTES} bytes in all")
        for name in headers:
            if not name or not name.isascii() or not name.replace("-", "").replace("_", "").isalnum():
                raise InvalidInput("headers", f'name "{name}" may only hold ASCII letters, digits, "-" and "_"')
            if name.lower().startswith(_RESERVED_HEADERS):
                raise InvalidInput("headers", f'name "{name}": names starting with upf- are the bus\'s own')
        return Outgoing(subject, payload, headers, reply_to)

    def _spec(self, namespace: str, start: pb.SubscribeStart, queue: bool) -> ConsumerSpec:
        check_filter(start.subject)
        name: str | None = None
        if queue:
            if not start.queue:
                raise InvalidInput("start.queue", "empty; SubscribeQueue needs a queue group name")
            name = consumer_name(namespace, "q", check_name(start.queue, "start.queue"))
        elif start.queue:
            raise InvalidInput("start.queue", "only for SubscribeQueue")
        elif start.durable:
            name = consumer_name(namespace, "d", check_name(start.durable, "start.durable"))
        if start.deliver_policy not in _POLICIES:
            raise InvalidInput("start.deliver_policy", f"unknown value {start.deliver_policy}")
        deliver = _POLICIES[start.deliver_policy]
        if deliver is Deliver.BY_SEQUENCE and start.start_sequence < 1:
            raise InvalidInput("start.start_sequence", "must be 1 or more with DELIVER_POLICY_BY_SEQUENCE")
        if deliver is Deliver.BY_TIME and not start.HasField("start_time"):
            raise InvalidInput("start.start_time", "required with DELIVER_POLICY_BY_TIME")
        if deliver is not Deliver.NEW and "replay" not in self._backend.capabilities:
            raise Unsupported(
                f"the {self._backend.name} bus cannot replay stored messages (deliver policy {deliver.value})"
            )
        ack_wait = start.ack_wait or DEFAULT_ACK_WAIT
        if not 0 < ack_wait <= MAX_ACK_WAIT:
            raise InvalidInput("start.ack_wait", f"must be more than 0 and at most {MAX_ACK_WAIT:g} seconds")
        in_flight = start.max_in_flight or DEFAULT_IN_FLIGHT
        if in_flight > MAX_IN_FLIGHT:
            raise InvalidInput("start.max_in_flight", f"at most {MAX_IN_FLIGHT}")
        start_time = start.start_time.ToNanoseconds() / 1e9 if start.HasField("start_time") else 0.0
        return ConsumerSpec(
            start.subject, name, queue, deliver, start.start_sequence, start_time, ack_wait, in_flight
        )  # fmt: skip

    async def _subscribe(
        self, requests: AsyncIterator[pb.SubscribeRequest], context: _Context, *, queue: bool
    ) -> AsyncGenerator[pb.SubscribeResponse, None]:
        namespace = await self._namespace_of(context)
        async with _statuses(context):
            first = await anext(requests, None)
            if first is None or first.WhichOneof("kind") != "start":
                raise InvalidInput("start", "the first message of a subscription must be start")
            consumer = await self._backend.consumer(self._spec(namespace, first.start, queue))
        session = _Session(consumer, requests)
        try:
            yield pb.SubscribeResponse(ready=pb.Ready())
            async with _statuses(context):
                async for response in session.run():
                    yield response
        finally:
            await session.close()


class _Session:
    """One subscription stream: deliveries down, acks and naks up, each answered with an AckResult."""

    def __init__(self, consumer: Consumer, requests: AsyncIterator[pb.SubscribeRequest]) -> None:
        self._consumer = consumer
        self._requests = requests
        self._handles: dict[int, object] = {}
        self._next_id = 0
        # Acks are answered in the same stream as deliveries; a bounded queue lets a slow reader
        # slow the broker down rather than fill memory.
        self._out: asyncio.Queue[pb.SubscribeResponse | BaseException | None] = asyncio.Queue(256)
        self._tasks: list[asyncio.Task[None]] = []
        self._settling = asyncio.Semaphore(SETTLING_AT_ONCE)

    async def run(self) -> AsyncIterator[pb.SubscribeResponse]:
        self._tasks = [asyncio.create_task(self._deliver()), asyncio.create_task(self._settle())]
        while True:
            item = await self._out.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    async def _deliver(self) -> None:
        try:
            while True:
                received = await self._consumer.next()
                self._next_id += 1
                self._handles[self._next_id] = received.handle
                delivery = pb.Delivery(
                    message=_message(received), ack_id=self._next_id, delivery_count=received.delivery_count
                )
                await self._out.put(pb.SubscribeResponse(delivery=delivery))
        except Exception as exc:
            await self._out.put(exc)

    async def _settle(self) -> None:
        # Acks are settled concurrently (each is a round trip to the broker), a bounded number at a time.
        running: set[asyncio.Task[None]] = set()
        try:
            async for request in self._requests:
                kind = request.WhichOneof("kind")
                if kind == "start":
                    raise InvalidInput("start", "sent twice; a stream is one subscription")
                if kind == "nak" and request.nak.delay < 0:
                    raise InvalidInput("nak.delay", "must not be negative")
                await self._settling.acquire()
                task = asyncio.create_task(self._settle_one(request))
                running.add(task)
                task.add_done_callback(running.discard)
            # The caller closed its side (or the call is gone): the subscription ends, and nothing more
            # is taken from the broker for it. Left running until the stream's clean-up, a blocked
            # read could take messages for a subscriber that will never see them (they would wait out
            # the ack wait: message-bus-redis consumed 170 messages/s instead of ~6,000 in bench.messagebus).
            await cancel_and_wait(self._tasks[0])
            await asyncio.gather(*running)
            await self._out.put(None)
        except Exception as exc:
            await self._out.put(exc)
        finally:
            for task in running:
                task.cancel()

    async def _settle_one(self, request: pb.SubscribeRequest) -> None:
        try:
            kind = request.WhichOneof("kind")
            ack_id = request.ack.ack_id if kind == "ack" else request.nak.ack_id
            handle = self._handles.pop(ack_id, None)
            if handle is None:
                result = pb.AckResult(ack_id=ack_id, ok=False, error="unknown ack_id (already settled?)")
            elif kind == "ack":
                try:
                    await self._consumer.ack(handle)
                    result = pb.AckResult(ack_id=ack_id, ok=True)
                except AckTooLate as exc:
                    result = pb.AckResult(ack_id=ack_id, ok=False, error=str(exc))
            else:
                await self._consumer.nak(handle, request.nak.delay)
                result = pb.AckResult(ack_id=ack_id, ok=True)
            await self._out.put(pb.SubscribeResponse(ack_result=result))
        except Exception as exc:
            await self._out.put(exc)
        finally:
            self._settling.release()

    async def close(self) -> None:
        for task in self._tasks:
            await cancel_and_wait(task)
        # What the subscriber received and did not settle goes back at once, rather than after the ack
        # wait: another member of the queue group, or the durable's next subscriber, gets it now.
        try:
            async with asyncio.timeout(5.0):
                for handle in self._handles.values():
                    await self._consumer.nak(handle, 0.0)
        except Exception:  # the broker is away: the ack wait brings them back instead
            logger.info("unsettled messages are left to their ack wait")
        await _close(self._consumer)


async def _close(consumer: Consumer) -> None:
    try:
        # Bounded: a broker that is reconnecting may not answer an unsubscribe for long.
        async with asyncio.timeout(_CLOSE_TIMEOUT):
            await consumer.close()
    except Exception:  # the stream is over either way; the broker cleans up after its timeouts
        logger.warning("closing a consumer failed", exc_info=True)


def _message(received: Received) -> pb.Message:
    timestamp = Timestamp()
    timestamp.FromNanoseconds(int(received.timestamp * 1e9))
    return pb.Message(
        subject=received.subject,
        payload=received.payload,
        headers=dict(received.headers),
        id=received.id,
        sequence=received.sequence,
        timestamp=timestamp,
        reply_to=received.reply_to,
    )


class _statuses(contextlib.AbstractAsyncContextManager[None]):
    """Backend and input errors as gRPC statuses, with messages a caller can act on and no traces."""

    def __init__(self, context: _Context) -> None:
        self._context = context

    async def __aexit__(self, kind: Any, exc: BaseException | None, traceback: Any) -> bool:
        if exc is None or not isinstance(exc, Exception) or _is_abort(exc):
            return False
        if isinstance(exc, InvalidInput):
            await self._abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        if isinstance(exc, BusUnavailable):
            await self._abort(grpc.StatusCode.UNAVAILABLE, f"the message bus is unavailable: {exc}")
        if isinstance(exc, Unsupported):
            await self._abort(grpc.StatusCode.UNIMPLEMENTED, str(exc))
        if isinstance(exc, ConsumerConflict):
            await self._abort(grpc.StatusCode.FAILED_PRECONDITION, f"the durable or queue group: {exc}")
        logger.error("message bus call failed", exc_info=exc)
        await self._abort(grpc.StatusCode.INTERNAL, "internal error in the message bus (logged there)")
        return False

    async def _abort(self, code: grpc.StatusCode, details: str) -> NoReturn:
        await self._context.abort(code, details)
        raise AssertionError("context.abort returned")  # pragma: no cover


def _is_abort(exc: BaseException) -> bool:
    # context.abort raises an internal exception that must travel on untouched.
    return type(exc).__name__ == "AbortError" or isinstance(exc, asyncio.CancelledError)
