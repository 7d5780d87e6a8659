"""`Channel`: the part of grpc.aio's client channel that generated stubs and the plugin SDK use, on
the HTTP/2 client the gateway calls its upstreams with (common/http2/client.py).

    channel = Channel("127.0.0.1:50051", metadata_hooks=[lambda: [("x-caller", token())]])
    reply = await demo_pb2_grpc.EchoStub(channel).Say(demo_pb2.SayRequest(text="hi"), timeout=2)

Why not grpc.aio: a grpc.aio call costs a plugin ~100-150 us of CPU on the client side alone, which
is most of why a call through a storage or cache plugin is several times slower than the database
driver itself (bench/README.md; `python -m bench.rpc_channel` compares the two channels).

What it keeps of grpc.aio: the four multicallables and their call objects (awaitable, async-iterable,
`read`/`write`/`done_writing`, metadata, `code`/`details`, `cancel`, done callbacks), failures as
`grpc.aio.AioRpcError` with grpc's status codes, the end of a stream as `grpc.aio.EOF`, and a call
cancelled locally (by `cancel()` or by cancelling the task that awaits it) raising CancelledError
and resetting its stream. One HTTP/2 connection per channel, opened on first use and again after it
is lost; a connection that got GOAWAY drains its calls while new ones go on a new connection. A
connection that cannot be made fails the call at once with UNAVAILABLE, unless it was made with
`wait_for_ready=True`: then it is tried again until the call's deadline.
What it leaves out: TLS and call credentials, compression of requests, interceptors (a
`metadata_hooks` callable adds metadata to every call instead), retries, load balancing, channel
options. Unary calls run in the task that awaits them (grpc.aio starts a task per call); a call
whose response is streamed starts when it is first read or written.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import struct
from collections.abc import AsyncIterable, Callable, Generator, Iterable, Sequence
from types import TracebackType
from typing import Any, Final
from urllib.parse import unquote_to_bytes

import grpc

from common.http2.client import ClientConnection, Http2Stream, StreamError, connect
from common.http2.headers import HeaderList, encode_header, encode_timeout

__all__ = ["Channel", "MetadataHook"]

Metadatum = tuple[str, str | bytes]
MetadataHook = Callable[[], Iterable[Metadatum]]
"""Called at every call: metadata to add to it (a caller's token, the trace context), replacing any
values the call itself gives under the same names."""

_PREFIX = struct.Struct(">BI")  # a gRPC message's compressed flag and length
_USER_AGENT: Final = b"upf-plugin-sdk"
_CONNECT_TIMEOUT: Final = 20.0  # grpc's minimum connect timeout
_BACKOFF_INITIAL: Final = 0.1  # seconds between connection attempts of a wait_for_ready call, doubling
_BACKOFF_MAX: Final = 2.0
_CANCELLED_DETAILS: Final = "Locally cancelled by application!"  # grpc.aio's words
# Response headers that are HTTP/2's or the protocol's own, not the server's metadata.
_NOT_METADATA = frozenset(
    {
        b":status", b"content-type", b"grpc-status", b"grpc-message", b"grpc-encoding", b"grpc-accept-encoding",
        b"content-length", b"te", b"user-agent",
    }
)  # fmt: skip
_CODES = {code.value[0]: code for code in grpc.StatusCode}
_EOF: Any = grpc.aio.EOF  # type: ignore[attr-defined]  # grpc-stubs does not know the end-of-stream marker

Serializer = Callable[[Any], bytes] | None
Deserializer = Callable[[bytes], Any] | None
RequestIterable = AsyncIterable[Any] | Iterable[Any]


class Channel(grpc.aio.Channel):
    """Calls to one `host:port` over one HTTP/2 connection (plaintext, h2c).

    `metadata_hooks`: see MetadataHook. `max_message_bytes`: the largest response message taken
    (grpc's default receive limit); a larger one ends the call with RESOURCE_EXHAUSTED.
    """

    def __init__(
        self, target: str, *, metadata_hooks: Sequence[MetadataHook] = (), max_message_bytes: int = 4 * 1024 * 1024
    ) -> None:
        host, _, port = target.rpartition(":")
        self.target = target
        self._host = host.strip("[]")
        self._port = int(port)
        self._authority = target.encode()
        self._hooks = tuple(metadata_hooks)
        self._max_message = max_message_bytes
        self._connection: ClientConnection | None = None
        self._connecting: asyncio.Future[ClientConnection] | None = None
        self._closed = False

    # --- grpc.aio.Channel -------------------------------------------------------------------

    def unary_unary(
        self,
        method: str,
        request_serializer: Serializer = None,
        response_deserializer: Deserializer = None,
        _registered_method: bool | None = False,
    ) -> UnaryUnaryMultiCallable:
        return UnaryUnaryMultiCallable(self, method, request_serializer, response_deserializer)

    def unary_stream(
        self,
        method: str,
        request_serializer: Serializer = None,
        response_deserializer: Deserializer = None,
        _registered_method: bool | None = False,
    ) -> UnaryStreamMultiCallable:
        return UnaryStreamMultiCallable(self, method, request_serializer, response_deserializer)

    def stream_unary(
        self,
        method: str,
        request_serializer: Serializer = None,
        response_deserializer: Deserializer = None,
        _registered_method: bool | None = False,
    ) -> StreamUnaryMultiCallable:
        return StreamUnaryMultiCallable(self, method, request_serializer, response_deserializer)

    def stream_stream(
        self,
        method: str,
        request_serializer: Serializer = None,
        response_deserializer: Deserializer = None,
        _registered_method: bool | None = False,
    ) -> StreamStreamMultiCallable:
        return StreamStreamMultiCallable(self, method, request_serializer, response_deserializer)

    async def channel_ready(self) -> None:
        """Until the connection is up (tried again and again, as for a wait_for_ready call)."""
        await self._connect(None, wait_for_ready=True)

    def get_state(self, try_to_connect: bool = False) -> grpc.ChannelConnectivity:
        connection = self._connection
        if self._closed:
            return grpc.ChannelConnectivity.SHUTDOWN
        if connection is not None and connection.usable:
            return grpc.ChannelConnectivity.READY
        return grpc.ChannelConnectivity.CONNECTING if self._connecting is not None else grpc.ChannelConnectivity.IDLE

    async def wait_for_state_change(self, last_observed_state: grpc.ChannelConnectivity) -> None:
        raise NotImplementedError("common.rpc.Channel does not report state changes; use channel_ready()")

    async def close(self, grace: float | None = None) -> None:
        """No new calls; running ones get `grace` seconds to finish, then end CANCELLED (at once without grace)."""
        self._closed = True
        connection, self._connection = self._connection, None
        if connection is None or connection.transport is None:
            return
        if grace and connection.streams:
            # A connection that is closing closes itself once its last call has ended (ClientConnection.forget).
            connection.closing = connection.closing or "the channel is closing"
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(connection.closed.wait(), grace)
        for stream in list(connection.streams.values()):
            stream.cancel("the channel was closed")
        connection.close()
        await connection.closed.wait()

    async def __aenter__(self) -> Channel:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc_val: BaseException | None, exc_tb: TracebackType | None
    ) -> None:
        await self.close(None)

    # --- for the calls ----------------------------------------------------------------------

    async def _connect(self, deadline: float | None, *, wait_for_ready: bool) -> ClientConnection:
        connection = self._connection
        if connection is not None and connection.usable:
            return connection
        loop = asyncio.get_running_loop()
        backoff = _BACKOFF_INITIAL
        while True:
            if self._closed:
                raise _Failed(grpc.StatusCode.CANCELLED, "the channel is closed")
            if self._connecting is None:
                timeout = _CONNECT_TIMEOUT if deadline is None else max(0.0, deadline - loop.time())
                # Shared by the calls that start meanwhile: one connection attempt, not one per call.
                self._connecting = loop.create_task(self._open_connection(timeout))
                self._connecting.add_done_callback(_retrieve)
            try:
                return await asyncio.shield(self._connecting)
            except _Failed:
                if not wait_for_ready:
                    raise
            await asyncio.sleep(backoff if deadline is None else min(backoff, max(0.0, deadline - loop.time())))
            backoff = min(backoff * 2, _BACKOFF_MAX)

    async def _open_connection(self, timeout: float) -> ClientConnection:
        try:
            connection = await connect(
                self._host,
                self._port,
                authority=self.target,
                max_message=self._max_message,
                timeout=timeout,
                user_agent=_USER_AGENT,
            )
        except (OSError, TimeoutError) as exc:
            if isinstance(exc, TimeoutError):
                reason = f"no connection within {timeout:g} s"
            else:
                reason = os.strerror(exc.errno) if exc.errno else str(exc)
            raise _Failed(grpc.StatusCode.UNAVAILABLE, f"cannot connect to {self.target}: {reason}") from None
        finally:
            self._connecting = None
        if self._closed:
            connection.close()
            raise _Failed(grpc.StatusCode.CANCELLED, "the channel is closed")
        self._connection = connection
        return connection

    def _fields(self, metadata: Iterable[Metadatum] | None, timeout: float | None) -> bytes:
        """The call's own headers, HPACK-encoded: grpc-timeout, the hooks' metadata, the call's."""
        fields = encode_header(b"grpc-timeout", encode_timeout(timeout)) if timeout is not None else b""
        hooked: list[Metadatum] = []
        for hook in self._hooks:
            hooked.extend(hook())
        if hooked:
            fields += b"".join(_metadatum(key, value) for key, value in hooked)
            if metadata:
                replaced = {key for key, _ in hooked}
                metadata = [item for item in metadata if item[0] not in replaced]
        if metadata:
            fields += b"".join(_metadatum(key, value) for key, value in metadata)
        return fields


def _retrieve(task: asyncio.Future[Any]) -> None:
    # What the task ended with reaches its callers another way (the call's status, a shared await).
    if not task.cancelled():
        task.exception()


class _Failed(Exception):
    """A call could not start: its status and details."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


def _metadatum(key: str, value: str | bytes) -> bytes:
    name = key.lower().encode("ascii")
    if name.endswith(b"-bin"):
        raw = value.encode() if isinstance(value, str) else value
        return encode_header(name, base64.b64encode(raw).rstrip(b"="))
    return encode_header(name, value.encode() if isinstance(value, str) else value)


def _metadata(headers: HeaderList | None) -> grpc.aio.Metadata:
    items: list[Metadatum] = []
    for name, value in headers or ():
        if name in _NOT_METADATA or name.startswith(b":"):
            continue
        key = name.decode("latin-1")
        if key.endswith("-bin"):
            items.append((key, base64.b64decode(value + b"=" * (-len(value) % 4))))
        else:
            items.append((key, value.decode("latin-1")))
    return grpc.aio.Metadata(*items)


class _Status:
    """How a call ended. Its metadata is kept as received and turned into grpc.aio.Metadata only when
    asked for: most calls never look at it."""

    __slots__ = ("_headers", "_trailers", "code", "details")

    def __init__(
        self, code: grpc.StatusCode, details: str, headers: HeaderList | None = None, trailers: HeaderList | None = None
    ) -> None:
        self.code = code
        self.details = details
        self._headers = headers
        self._trailers = trailers

    @property
    def initial(self) -> grpc.aio.Metadata:
        return _metadata(self._headers)

    @property
    def trailing(self) -> grpc.aio.Metadata:
        return _metadata(self._trailers)


def _status_of(stream: Http2Stream) -> _Status:
    """How an ended stream ended, as grpc reports it."""
    error = stream.error
    if error is not None:
        return _Status(error.code, error.message, stream.headers)
    status = message = None
    for name, value in stream.trailers or ():
        if name == b"grpc-status":
            status = value
        elif name == b"grpc-message":
            message = value
    if status is None:
        return _Status(grpc.StatusCode.UNKNOWN, "the server ended the call without a gRPC status", stream.headers)
    code = _CODES.get(int(status), grpc.StatusCode.UNKNOWN) if status.isdigit() else grpc.StatusCode.UNKNOWN
    details = unquote_to_bytes(message).decode("utf-8", "replace") if message else ""
    return _Status(code, details, stream.headers, stream.trailers)


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
        self._status: _Status | None = None
        self._ended: asyncio.Future[None] | None = None  # made when someone waits for the status
        self._callbacks: list[Callable[[Any], None]] = []
        self._cancelled = False

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
        self._finish(_Status(grpc.StatusCode.CANCELLED, _CANCELLED_DETAILS))
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
                    return _metadata(stream.headers)
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
        except _Failed as exc:
            self._finish(_Status(exc.code, exc.details))
            raise self._failure() from None
        except asyncio.CancelledError:
            self.cancel()
            raise
        finally:
            starting.set_result(None)

    async def _open(self, body: bytes | None) -> Http2Stream:
        channel, deadline = self._channel, self._deadline
        if deadline is not None and deadline <= self._loop.time():
            raise _Failed(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")
        connection = channel._connection
        if connection is None or not connection.usable:
            connection = await self._before_deadline(channel._connect(deadline, wait_for_ready=self._wait_for_ready))
        target = (channel._authority, self._method)
        fields = channel._fields(self._metadata, self.time_remaining())
        stream = None if body is None else connection.open_unary(target, fields, body)
        if stream is None:
            try:
                stream = await self._before_deadline(connection.open_stream(target, fields))
            except StreamError as exc:  # the connection was lost or is going away: no stream was opened
                raise _Failed(exc.code, exc.message) from None
            self._stream = stream
            if deadline is not None:
                stream.set_deadline(max(0.0, deadline - self._loop.time()))
            if body is not None:
                await stream.send(body, end_stream=True)
        else:
            self._stream = stream
            if deadline is not None:
                stream.set_deadline(max(0.0, deadline - self._loop.time()))
        if self._status is not None:  # cancelled while the stream was opening
            stream.cancel(_CANCELLED_DETAILS)
        return stream

    async def _before_deadline(self, step: Any) -> Any:
        if self._deadline is None:
            return await step
        try:
            async with asyncio.timeout_at(self._deadline):
                return await step
        except TimeoutError:
            raise _Failed(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded") from None

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
        status = _Status(grpc.StatusCode.INTERNAL, details)
        if self._status is None:
            self._finish(status)
        else:
            self._status = status
        return self._failure()

    def _encode(self, request: Any) -> bytes:
        payload = request if self._serializer is None else self._serializer(request)
        return _PREFIX.pack(0, len(payload)) + payload

    def _settle(self) -> _Status:
        """The status of a call whose stream has ended."""
        if self._status is None:
            assert self._stream is not None
            self._finish(_status_of(self._stream))
        assert self._status is not None
        return self._status

    def _finish(self, status: _Status) -> None:
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

    async def _wait_done(self) -> _Status:
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

    def _outcome(self) -> _Status:
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
            self._loop.create_task(self._respond()).add_done_callback(_retrieve)

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


class _MultiCallable:
    def __init__(self, channel: Channel, method: str, serializer: Serializer, deserializer: Deserializer) -> None:
        self._channel = channel
        self._method = method.encode()
        self._serializer = serializer
        self._deserializer = deserializer

    def _args(
        self,
        timeout: float | None,
        metadata: Iterable[Metadatum] | None,
        credentials: grpc.CallCredentials | None,
        wait_for_ready: bool | None,
    ) -> tuple[Any, ...]:
        channel = self._channel
        return (
            channel,
            self._method,
            self._serializer,
            self._deserializer,
            timeout,
            metadata,
            credentials,
            wait_for_ready,
        )


class UnaryUnaryMultiCallable(_MultiCallable, grpc.aio.UnaryUnaryMultiCallable[Any, Any]):
    def __call__(
        self,
        request: Any,
        timeout: float | None = None,
        metadata: Any = None,
        credentials: grpc.CallCredentials | None = None,
        wait_for_ready: bool | None = None,
        compression: grpc.Compression | None = None,
    ) -> UnaryUnaryCall:
        return UnaryUnaryCall(request, *self._args(timeout, metadata, credentials, wait_for_ready))


class UnaryStreamMultiCallable(_MultiCallable, grpc.aio.UnaryStreamMultiCallable[Any, Any]):
    def __call__(
        self,
        request: Any,
        timeout: float | None = None,
        metadata: Any = None,
        credentials: grpc.CallCredentials | None = None,
        wait_for_ready: bool | None = None,
        compression: grpc.Compression | None = None,
    ) -> UnaryStreamCall:
        return UnaryStreamCall(request, *self._args(timeout, metadata, credentials, wait_for_ready))


class StreamUnaryMultiCallable(_MultiCallable, grpc.aio.StreamUnaryMultiCallable[Any, Any]):
    def __call__(
        self,
        request_iterator: Any = None,
        timeout: float | None = None,
        metadata: Any = None,
        credentials: grpc.CallCredentials | None = None,
        wait_for_ready: bool | None = None,
        compression: grpc.Compression | None = None,
    ) -> StreamUnaryCall:
        return StreamUnaryCall(request_iterator, *self._args(timeout, metadata, credentials, wait_for_ready))


class StreamStreamMultiCallable(_MultiCallable, grpc.aio.StreamStreamMultiCallable[Any, Any]):
    def __call__(
        self,
        request_iterator: Any = None,
        timeout: float | None = None,
        metadata: Any = None,
        credentials: grpc.CallCredentials | None = None,
        wait_for_ready: bool | None = None,
        compression: grpc.Compression | None = None,
    ) -> StreamStreamCall:
        return StreamStreamCall(request_iterator, *self._args(timeout, metadata, credentials, wait_for_ready))
