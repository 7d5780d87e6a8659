"""The call objects of common.rpc.Channel: grpc.aio's four kinds, on one HTTP/2 stream each.

A call opens its stream when first used: a unary-response call when awaited (in the awaiting task,
with no task of its own: grpc.aio starts one per call), a streaming one when first read or written,
a call with a request iterator at once (a task consumes the iterator). Until then nothing has
been sent, so a call made and dropped costs nothing. The first caller opens the stream, others
that need it meanwhile wait for it. A local cancel (`cancel()`, or cancelling the task that awaits
or reads) resets the stream (RST_STREAM CANCEL) and makes the call raise CancelledError, as
grpc.aio's do; every other ending is a status, raised as grpc.aio.AioRpcError unless OK.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterable, Callable, Generator, Iterable
from typing import TYPE_CHECKING, Any, Final

import grpc

from common.http2.client import Http2Stream, StreamError
from common.rpc.status import CallFailed, Metadatum, Status, response_metadata, status_of

if TYPE_CHECKING:
    from common.rpc.channel import Channel

__all__ = [
    "Deserializer",
    "RequestIterable",
    "Serializer",
    "StreamStreamCall",
    "StreamUnaryCall",
    "UnaryStreamCall",
    "UnaryUnaryCall",
    "retrieve",
]

Serializer = Callable[[Any], bytes] | None
Deserializer = Callable[[bytes], Any] | None
RequestIterable = AsyncIterable[Any] | Iterable[Any]

_PREFIX = struct.Struct(">BI")  # a gRPC message's compressed flag and length
_CANCELLED_DETAILS: Final = "Locally cancelled by application!"  # grpc.aio's words
_EOF: Any = grpc.aio.EOF  # type: ignore[attr-defined]  # grpc-stubs does not know the end-of-stream marker


def retrieve(task: asyncio.Future[Any]) -> None:
    # What the task ended with reaches its callers another way (the call's status, a shared await).
    if not task.cancelled():
        task.exception()


class _Call:
    """What the four kinds of call share: starting the stream, its status, cancelling it."""

    def __init__(
        self,
        channel: Channel,
        method: bytes,
        serializer: Serializer,
        deserializer: Deserializer,
        timeout: float | None,
        metadata: Iterable[Metadatum] | None,
        credentials: grpc.CallCredentials | None,
        wait_for_ready: bool | None,
    ) -> None:
        if credentials is not None:
            raise ValueError("call credentials need a secure channel; common.rpc.Channel is plaintext")
        self._channel = channel
        self._loop = asyncio.get_running_loop()
        self._method = method
        self._serializer = serializer
        self._deserializer = deserializer
        self._deadline = None if timeout is None else self._loop.time() + timeout
        self._metadata = metadata
        self._wait_for_ready = bool(wait_for_ready)
        self._stream: Http2Stream | None = None
        self._starting: asyncio.Future[None] | None = None  # while the first caller opens the stream
        self._status: Status | None = None
        self._ended: asyncio.Future[None] | None = None  # made when someone waits for the status
        self._callbacks: list[Callable[[Any], None]] = []
        self._cancelled = False

    def __del__(self) -> None:
        # A call dropped while its stream is open (a loop left early, no cancel()) would hold the
        # server's side open until the deadline: reset it, as grpc.aio does on garbage collection.
        stream = getattr(self, "_stream", None)  # None as well when __init__ failed
        if stream is not None and not stream.ended and not self._loop.is_closed():
            stream.cancel("Cancelled upon garbage collection!")

    # --- grpc.aio.RpcContext / Call ---------------------------------------------------------

    def cancelled(self) -> bool:
        return self._cancelled

    def done(self) -> bool:
        if self._status is None and self._stream is not None and self._stream.ended:
            self._settle()
        return self._status is not None

    def time_remaining(self) -> float | None:
        return None if self._deadline is None else max(0.0, self._deadline - self._loop.time())

    def cancel(self) -> bool:
        if self.done():
            return False
        self._cancelled = True
        if self._stream is not None:
            self._stream.cancel(_CANCELLED_DETAILS)  # RST_STREAM CANCEL: the server sees the call end
        self._finish(Status(grpc.StatusCode.CANCELLED, _CANCELLED_DETAILS))
        return True

    def add_done_callback(self, callback: Callable[[Any], None]) -> None:
        if self.done():
            callback(self)
            return
        self._callbacks.append(callback)
        self._watch_end()

    async def initial_metadata(self) -> grpc.aio.Metadata:
        if self._status is None:
            await self._run_to_end()
            stream = self._stream
            if stream is not None:
                await stream.wait_for_headers()
                if stream.headers is not None:
                    return response_metadata(stream.headers)
        return (await self._wait_done()).initial

    async def trailing_metadata(self) -> grpc.aio.Metadata:
        return (await self._wait_done()).trailing

    async def code(self) -> grpc.StatusCode:
        return (await self._wait_done()).code

    async def details(self) -> str:
        return (await self._wait_done()).details

    async def wait_for_connection(self) -> None:
        await self._started()

    # --- the call's life --------------------------------------------------------------------

    async def _started(self) -> Http2Stream:
        """The call's stream, opened by the first caller (the others wait for it)."""
        return self._stream or await self._start(None)

    async def _start(self, body: bytes | None) -> Http2Stream:
        """Open the stream: HEADERS, and the whole request with END_STREAM when `body` is given."""
        if self._stream is not None:
            return self._stream
        if self._status is not None:
            raise self._failure()
        if self._starting is not None:
            await asyncio.shield(self._starting)
            if self._stream is None:
                raise self._failure()
            return self._stream
        starting = self._starting = self._loop.create_future()
        try:
            stream = await self._open(body)
            if self._callbacks or self._ended is not None:
                self._watch_end()
            return stream
        except CallFailed as exc:
            self._finish(Status(exc.code, exc.details))
            raise self._failure() from None
        except asyncio.CancelledError:
            self.cancel()
            raise
        finally:
            starting.set_result(None)

    async def _open(self, body: bytes | None) -> Http2Stream:
        channel, deadline = self._channel, self._deadline
        if deadline is not None and deadline <= self._loop.time():
            raise CallFailed(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")
        connection = channel.ready_connection
        if connection is None:
            connection = await self._before_deadline(channel.connection(deadline, wait_for_ready=self._wait_for_ready))
        target = (channel.authority, self._method)
        fields = channel.request_fields(self._metadata, self.time_remaining())
        # A small request goes out with its HEADERS in one write; anything else, after them.
        stream = None if body is None else connection.open_unary(target, fields, body)
        unsent = body if stream is None else None
        if stream is None:
            try:
                stream = await self._before_deadline(connection.open_stream(target, fields))
            except StreamError as exc:  # the connection was lost or is going away: no stream was opened
                raise CallFailed(exc.code, exc.message) from None
        self._stream = stream
        if deadline is not None:
            stream.set_deadline(max(0.0, deadline - self._loop.time()))
        if self._status is not None:  # cancelled while the stream was opening
            stream.cancel(_CANCELLED_DETAILS)
        elif unsent is not None:
            await stream.send(unsent, end_stream=True)
        return stream

    async def _before_deadline(self, step: Any) -> Any:
        if self._deadline is None:
            return await step
        try:
            async with asyncio.timeout_at(self._deadline):
                return await step
        except TimeoutError:
            raise CallFailed(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded") from None

    async def _read(self, stream: Http2Stream) -> bytes | None:
        """The next response message (prefix included), or None at the end."""
        try:
            return await stream.read()
        except asyncio.CancelledError:
            self.cancel()  # the awaiting task was cancelled: so is the call
            raise

    def _decode(self, frame: bytes) -> Any:
        payload = frame[_PREFIX.size :]
        if self._deserializer is None:
            return payload
        try:
            return self._deserializer(payload)
        except Exception as exc:
            raise self._break(f"Exception deserializing response: {exc}") from None

    def _break(self, details: str) -> BaseException:
        """The response makes no sense: the call ends INTERNAL (its stream reset if still open)."""
        if self._stream is not None:
            self._stream.cancel(details)
        status = Status(grpc.StatusCode.INTERNAL, details)
        if self._status is None:
            self._finish(status)
        else:
            self._status = status
        return self._failure()

    def _encode(self, request: Any) -> bytes:
        payload = request if self._serializer is None else self._serializer(request)
        return _PREFIX.pack(0, len(payload)) + payload

    def _settle(self) -> Status:
        """The status of a call whose stream has ended."""
        if self._status is None:
            assert self._stream is not None
            self._finish(status_of(self._stream))
        assert self._status is not None
        return self._status

    def _finish(self, status: Status) -> None:
        if self._status is not None:
            return
        self._status = status
        if self._ended is not None and not self._ended.done():
            self._ended.set_result(None)
        callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            # Not from here: this may run inside the connection's data_received, which a callback must not break.
            self._loop.call_soon(callback, self)

    def _watch_end(self) -> None:
        """Settle the status as soon as the stream ends, whether or not anyone reads it."""
        stream = self._stream
        if stream is not None:
            stream.on_writable = self._on_stream_event

    def _on_stream_event(self) -> None:
        stream = self._stream
        if stream is not None and stream.ended:
            self._settle()

    async def _wait_done(self) -> Status:
        if self._status is None:
            await self._run_to_end()
        if self._status is None:
            if self._ended is None:
                self._ended = self._loop.create_future()
            self._watch_end()
            self.done()  # the stream may have ended already
            if self._status is None:
                await self._ended
        assert self._status is not None
        return self._status

    async def _run_to_end(self) -> None:
        """Make sure the call runs (it may not have started yet); its status comes when it ends."""
        try:
            await self._started()
        except (grpc.aio.AioRpcError, asyncio.CancelledError):
            if self._status is None:
                raise

    def _failure(self) -> BaseException:
        status = self._status
        assert status is not None
        if self._cancelled:
            return asyncio.CancelledError()
        return grpc.aio.AioRpcError(status.code, status.initial, status.trailing, status.details, None)

    def _outcome(self) -> Status:
        """The status once the response has been read to its end; raises it unless it is OK."""
        status = self._settle()
        if status.code is not grpc.StatusCode.OK:
            raise self._failure()
        return status


class _UnaryResponse(_Call):
    """A call with one response message: run to its end by the first await, in the awaiting task."""

    _response: Any = None
    _running = False

    def __await__(self) -> Generator[Any, None, Any]:
        if self._running or self._status is not None:
            return self._again().__await__()
        self._running = True
        return self._respond().__await__()

    async def _respond(self) -> Any:
        stream = await self._started()
        response = None
        count = 0
        while (frame := await self._read(stream)) is not None:
            response = frame
            count += 1
        self._outcome()
        if count != 1 or response is None:
            raise self._break(f"the server answered {count} messages instead of 1")
        self._response = self._decode(response)
        return self._response

    async def initial_metadata(self) -> grpc.aio.Metadata:
        return (await self._wait_done()).initial

    async def _again(self) -> Any:
        await self._wait_done()
        if self._status is not None and self._status.code is not grpc.StatusCode.OK:
            raise self._failure()
        return self._response

    async def _run_to_end(self) -> None:
        if not self._running:
            self._running = True
            # Asked for its status before anyone awaited it: the call runs in a task of its own.
            self._loop.create_task(self._respond()).add_done_callback(retrieve)

    async def wait_for_connection(self) -> None:
        # As grpc.aio's: for a call with one response, that is the whole call.
        await self._wait_done()


class _StreamResponse(_Call):
    """A call whose responses are read one by one (`read`) or iterated, never both."""

    _style: str | None = None

    def _use(self, style: str) -> None:
        if self._style is None:
            self._style = style
        elif self._style != style:
            raise grpc.aio.UsageError("The iterator and read/write APIs may not be mixed on a single RPC.")

    async def read(self) -> object:
        self._use("read")
        return await self._next()

    def __aiter__(self) -> Any:
        self._use("iterate")
        return self._messages()

    async def _messages(self) -> Any:
        while (message := await self._next()) is not _EOF:
            yield message

    async def _next(self) -> Any:
        stream = self._stream or await self._started()
        frame = await self._read(stream)
        if frame is None:
            self._outcome()
            return _EOF
        return self._decode(frame)


class _StreamRequest(_Call):
    """A call whose requests come from an iterator (consumed by a task of the call's own) or from `write`."""

    _writing_done = False
    _writer: asyncio.Task[None] | None = None

    def _take_requests(self, requests: RequestIterable | None) -> None:
        if requests is not None:
            self._writer = self._loop.create_task(self._consume(requests))

    async def _consume(self, requests: RequestIterable) -> None:
        try:
            if isinstance(requests, AsyncIterable):
                async for request in requests:
                    await self._write(request)
            else:
                for request in requests:
                    await self._write(request)
            await self._done_writing()
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
            pass  # the call has ended: its status says why
        except asyncio.CancelledError:
            self.cancel()
        except Exception:
            # The iterator failed: the call cannot go on (grpc.aio cancels it too).
            self.cancel()

    def cancel(self) -> bool:
        cancelled = super().cancel()
        if cancelled and self._writer is not None and self._writer is not asyncio.current_task():
            self._writer.cancel()
        return cancelled

    async def write(self, request: Any) -> None:
        if self._writer is not None:
            raise grpc.aio.UsageError("The iterator and read/write APIs may not be mixed on a single RPC.")
        await self._write(request)

    async def done_writing(self) -> None:
        if self._writer is not None:
            raise grpc.aio.UsageError("The iterator and read/write APIs may not be mixed on a single RPC.")
        await self._done_writing()

    async def _write(self, request: Any) -> None:
        if self.done():
            raise asyncio.InvalidStateError("RPC already finished.")
        if self._writing_done:
            raise asyncio.InvalidStateError('RPC is half closed after calling "done_writing".')
        frame = self._encode(request)
        stream = await self._started()
        try:
            await stream.send(frame, end_stream=False)
        except asyncio.CancelledError:
            self.cancel()
            raise

    async def _done_writing(self) -> None:
        if self.done() or self._writing_done:
            return
        self._writing_done = True
        stream = await self._started()
        await stream.send(b"", end_stream=True)


class UnaryUnaryCall(_UnaryResponse, grpc.aio.UnaryUnaryCall[Any, Any]):
    def __init__(self, request: Any, *args: Any) -> None:
        super().__init__(*args)
        self._request = request

    async def _started(self) -> Http2Stream:
        return self._stream or await self._start(self._encode(self._request))


class UnaryStreamCall(_StreamResponse, grpc.aio.UnaryStreamCall[Any, Any]):
    def __init__(self, request: Any, *args: Any) -> None:
        super().__init__(*args)
        self._request = request

    async def _started(self) -> Http2Stream:
        return self._stream or await self._start(self._encode(self._request))


class StreamUnaryCall(_StreamRequest, _UnaryResponse, grpc.aio.StreamUnaryCall[Any, Any]):
    def __init__(self, requests: RequestIterable | None, *args: Any) -> None:
        super().__init__(*args)
        self._take_requests(requests)


class StreamStreamCall(_StreamRequest, _StreamResponse, grpc.aio.StreamStreamCall[Any, Any]):
    def __init__(self, requests: RequestIterable | None, *args: Any) -> None:
        super().__init__(*args)
        self._take_requests(requests)
