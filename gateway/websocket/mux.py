"""upf-mux.v1: many gRPC calls of every kind on one WebSocket, so a browser is not held to six
HTTP/1.1 connections. gateway/websocket/MUX.md is the protocol; mux_frames.py its byte layouts.

One socket is one `_Connection`, served in uvicorn's task for it:
  - the reader (that task) takes WebSocket messages, splits them into frames and dispatches them;
    it never waits on a call, so a call whose upstream is slow cannot hold up the others;
  - each call (`_Stream`) runs in a task of its own: it places the call upstream through the shared
    call path (gateway/proxy/: auth, rate limit, route, replica), then relays the answer: HEADERS
    as soon as the upstream sends them, DATA as the client's window for the stream allows, TRAILERS;
  - one writer task sends what the calls queue, the frames of one moment joined into one message.

Flow control, and what the gateway holds per socket:
  - client -> upstream: the client may send a stream `streamWindow` bytes, and all streams together
    `connectionWindow` bytes, before the gateway gives credit back (WINDOW_UPDATE), which it does
    only once the upstream has taken the bytes. So what waits in the gateway for a slow upstream is
    bounded by the windows, and a client that sends past them is cut (1002).
  - upstream -> client: a stream reads its next message from the upstream only once the previous
    one has been queued, and queues DATA only while the client's window for it is open and the
    writer's queue is under `_OUTBOX_HIGH`; the rest waits in the upstream HTTP/2 stream, whose
    window the gateway reopens only as it reads. A stream the client does not read holds at most
    one message here and stops only its own upstream.

Calls end with exactly one TRAILERS frame each, the gateway's own failures included (unknown
service, backend down, rate limit, auth refusal, client cancel), except when the socket itself ends.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections import deque
from collections.abc import Sequence
from typing import Final
from urllib.parse import unquote_to_bytes

import grpc
from starlette.types import Message, Receive, Scope, Send

from gateway.errors import BadRequest, GatewayError, MessageTooLarge
from gateway.http2.client import Http2Stream, StreamError
from gateway.proxy import ProxyConfig, Refused, admit, run_attempts
from gateway.upstream.client import Unsent
from gateway.upstream.outcome import gateway_error, outcome
from gateway.upstream.pool import Replica
from gateway.websocket.grpcws import MESSAGE_SLACK, parse_header_block
from gateway.websocket.handshake import Upgrade
from gateway.websocket.mux_frames import (
    HEADER,
    MAX_WINDOW,
    SUBPROTOCOL,
    ErrorCode,
    FrameType,
    MuxProtocolError,
    Open,
    Settings,
    encode,
    encode_block,
    goaway,
    parse_increment,
    parse_open,
    settings,
    trailers,
    window_update,
)
from gateway.websocket.open_sockets import CLOSE_GOING_AWAY, SHUTTING_DOWN, OpenSockets
from gateway.wire.metadata import parse_request_headers, response_metadata
from gateway.wire.request_frames import RequestFrames

__all__ = ["Headers", "MuxEndpoint"]

logger = logging.getLogger(__name__)

Headers = list[tuple[bytes, bytes]]

CLOSE_PROTOCOL_ERROR = 1002
CLOSE_TOO_BIG = 1009
CLOSE_INTERNAL = 1011
_OUTBOX_HIGH: Final = 256 * 1024  # bytes queued for the socket past which calls stop queueing DATA
_BATCH: Final = 256 * 1024  # frames joined into one WebSocket message, up to this many bytes
MAX_HEADER_BLOCK: Final = MESSAGE_SLACK  # an OPEN's metadata, as for a grpc-websockets header block
_METHOD_PATH = re.compile(r"^/([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)+)/[A-Za-z_][A-Za-z0-9_]*$")
_CLIENT_FRAMES = frozenset(
    (FrameType.OPEN, FrameType.DATA, FrameType.HALF_CLOSE, FrameType.CANCEL, FrameType.WINDOW_UPDATE)
)
_CANCELLED_BY_CLIENT = (grpc.StatusCode.CANCELLED, "cancelled by the client", ())

Status = tuple[grpc.StatusCode, str, Sequence[tuple[bytes, bytes]]]


def _name(kind: int) -> str:
    try:
        return FrameType(kind).name
    except ValueError:
        return f"0x{kind:02x} (unknown)"


class _ClientGone(Exception):
    """The socket was closed or lost: nobody is left to answer."""


class MuxEndpoint:
    """Mounted with WebSocketRoute on /api/mux."""

    def __init__(
        self,
        config: ProxyConfig,
        *,
        allow_origins: Sequence[str],
        sockets: OpenSockets | None = None,
        max_streams: int = 100,
        stream_window: int = 256 * 1024,
        connection_window: int = 1024 * 1024,
    ) -> None:
        self.config = config
        self.sockets = sockets if sockets is not None else OpenSockets(grace=10.0)
        self.upgrade = Upgrade(self.sockets, allow_origins, SUBPROTOCOL, required=True)
        max_message_bytes = config.max_message_bytes
        self.settings = Settings(
            max_streams=max_streams,
            max_message_bytes=max_message_bytes,
            stream_window=min(stream_window, MAX_WINDOW),
            connection_window=min(connection_window, MAX_WINDOW),
            max_frame_bytes=max_message_bytes + 5,  # one whole gRPC frame
        )
        self.max_size = max_message_bytes + MESSAGE_SLACK  # a WebSocket message (uvicorn's ws_max_size)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not await self.upgrade.accept(scope, receive, send):
            return
        connection = _Connection(self, scope, receive, send)
        with self.sockets.registered(connection, "upf-mux"):
            await connection.run()


class _Stream:
    """One call on the socket."""

    __slots__ = (
        "_current",
        "_current_cost",
        "_window_open",
        "abort_status",
        "conn",
        "end_sent",
        "failure",
        "frames",
        "half_closed",
        "id",
        "owed",
        "pending",
        "receive_window",
        "task",
        "upstream",
        "window",
    )  # fmt: skip

    def __init__(self, conn: _Connection, stream_id: int, window: int) -> None:
        self.conn = conn
        self.id = stream_id
        self.window = window  # response DATA bytes the client accepts now
        self.receive_window = conn.settings.stream_window  # request DATA bytes the client may send now
        self.owed = 0  # request bytes the upstream took, not yet given back to the client
        self.pending: deque[memoryview] = deque()  # request bytes waiting for the upstream
        self._current: bytes | memoryview | None = None  # what is left of the chunk being sent
        self._current_cost = 0  # the client's bytes that chunk came from (it may have been inflated)
        self.half_closed = False  # HALF_CLOSE arrived
        self.end_sent = False  # END_STREAM went upstream
        self.upstream: Http2Stream | None = None
        self.frames: RequestFrames | None = None
        self.failure: GatewayError | None = None  # the request broke a rule; the call ends with it
        self.abort_status: Status | None = None  # why the task was cancelled; None: no TRAILERS to send
        self.task: asyncio.Task[None] | None = None
        self._window_open: asyncio.Future[None] | None = None

    @property
    def pending_cost(self) -> int:
        return sum(len(chunk) for chunk in self.pending) + (self._current_cost if self._current is not None else 0)

    def attach(self, upstream: Http2Stream, frames: RequestFrames) -> None:
        self.upstream = upstream
        self.frames = frames
        upstream.on_writable = self._on_writable
        self.pump()

    def pump(self) -> None:
        """Hand the upstream what it takes now; the rest waits for `on_writable`. Never waits itself:
        it runs in the reader and in the upstream connection's data_received."""
        upstream, frames = self.upstream, self.frames
        if upstream is None or frames is None or self.failure is not None:
            return
        try:
            while True:
                if self._current is None:
                    if not self.pending:
                        break
                    chunk = self.pending.popleft()
                    self._current_cost = len(chunk)
                    self._current = b""  # counted as pending until fed, should `feed` refuse it
                    self._current = frames.feed(chunk)
                if self._current:
                    taken = upstream.send_nowait(self._current, end_stream=False)
                    if taken < len(self._current):
                        self._current = memoryview(self._current)[taken:]
                        return
                self._current = None
                self.credit(self._current_cost)
            if self.half_closed and not self.end_sent:
                frames.close()
                self.end_sent = True
                upstream.send_nowait(b"", end_stream=True)
        except GatewayError as exc:
            self.fail(exc)

    def credit(self, size: int) -> None:
        """The upstream took `size` of the client's bytes: give them back, in batches."""
        self.owed += size
        if self.owed >= self.conn.settings.stream_window // 2 and self.abort_status is None:
            self.conn.queue(window_update(self.id, self.owed))
            self.receive_window += self.owed
            self.owed = 0
        self.conn.credit(size)

    def fail(self, error: GatewayError) -> None:
        """The client's request broke a rule (size, framing): the call ends with `error`."""
        if self.failure is None:
            self.failure = error
            dropped = self.pending_cost  # never going upstream: the socket's window gets it back
            self.pending.clear()
            self._current = None
            self.conn.credit(dropped)
            if self.upstream is not None:
                self.upstream.cancel(error.message)  # the relay sees the end and reports `failure`

    def abort(self, status: Status | None) -> None:
        """End the call from outside its task: TRAILERS with `status`, or none when the socket is gone."""
        if self.task is not None and not self.task.done() and self.abort_status is None:
            self.abort_status = status
            self.task.cancel()

    def open_window(self, increment: int) -> None:
        self.window += increment
        if self.window > MAX_WINDOW:
            raise MuxProtocolError(f"stream {self.id}: WINDOW_UPDATE past {MAX_WINDOW}", ErrorCode.FLOW_CONTROL_ERROR)
        self._wake()

    def _on_writable(self) -> None:
        self.pump()
        if self.upstream is not None and self.upstream.ended:
            self._wake()  # a relay waiting for window learns that the call is over

    def _wake(self) -> None:
        waiter = self._window_open
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def sendable(self) -> bool:
        """Until the client's window for this stream is open and the writer has room; False once
        the upstream call has failed meanwhile (its status is what is left to send)."""
        conn = self.conn
        while True:
            upstream = self.upstream
            if upstream is not None and upstream.error is not None:
                return False
            if self.window > 0:
                if conn.room.is_set():
                    return True
                await conn.room.wait()
                continue
            self._window_open = asyncio.get_running_loop().create_future()
            try:
                await self._window_open
            finally:
                self._window_open = None


class _Connection:
    """One upf-mux.v1 socket (see the module docstring)."""

    def __init__(self, endpoint: MuxEndpoint, scope: Scope, receive: Receive, send: Send) -> None:
        self.endpoint = endpoint
        self.settings = endpoint.settings
        self.scope = scope
        self._receive = receive
        self._send = send
        self.streams: dict[int, _Stream] = {}
        self.highest = 0  # the highest stream id opened so far
        self.window = self.settings.connection_window  # request DATA bytes the client may send now
        self.owed = 0
        self.outbox: list[bytes] = []
        self.outbox_bytes = 0
        self.room = asyncio.Event()  # the writer's queue is under _OUTBOX_HIGH
        self.room.set()
        self._flush = asyncio.Event()
        self._close: tuple[int, str] | None = None  # what the writer closes with once the queue is sent
        self.closed = False
        self.going = False  # GOAWAY sent: no new calls
        self.cut = False  # set by OpenSockets before it cancels this socket's task
        self._writer: asyncio.Task[None] | None = None

    # --- the drain's side ------------------------------------------------------------------

    async def going_away(self) -> None:
        if self.going:
            return
        self.going = True
        self.queue(goaway(self.highest, ErrorCode.NO_ERROR, SHUTTING_DOWN))
        if not self.streams:
            self.request_close(CLOSE_GOING_AWAY)

    # --- running ------------------------------------------------------------------------------

    async def run(self) -> None:
        self._writer = asyncio.ensure_future(self._write_loop())
        self.queue(settings(self.settings))
        try:
            try:
                await self._read_loop()
            except MuxProtocolError as exc:
                logger.info("upf-mux.v1: closing a socket with %s: %s", exc.code.name, exc.reason)
                self.queue(goaway(self.highest, exc.code, exc.reason))
                self.request_close(CLOSE_PROTOCOL_ERROR, exc.reason)
            except MessageTooLarge as exc:
                self.request_close(CLOSE_TOO_BIG, exc.message)
            await self._abort_all(None)  # the socket is ending: no call gets a status any more
            if self._close is None:
                self._writer.cancel()  # the client left; nothing more to send
            await asyncio.wait((self._writer,))
        except asyncio.CancelledError:
            if not self.cut:
                raise
            # The drain's grace is over: every call gets UNAVAILABLE, then close 1001.
            current = asyncio.current_task()
            if current is not None:
                current.uncancel()
            await self._abort_all((grpc.StatusCode.UNAVAILABLE, SHUTTING_DOWN, ()))
            self.request_close(CLOSE_GOING_AWAY)
            await asyncio.wait((self._writer,))
        except Exception:
            logger.exception("upf-mux.v1: a socket failed inside the gateway")
            self.queue(goaway(self.highest, ErrorCode.INTERNAL_ERROR, "the gateway failed"))
            self.request_close(CLOSE_INTERNAL, "the gateway failed")
            await self._abort_all(None)
            await asyncio.wait((self._writer,))
        finally:
            self._writer.cancel()
            for stream in list(self.streams.values()):
                stream.abort(None)

    async def _abort_all(self, status: Status | None) -> None:
        tasks = [stream.task for stream in self.streams.values() if stream.task is not None]
        for stream in list(self.streams.values()):
            stream.abort(status)
        if tasks:
            await asyncio.wait(tasks)

    async def _read_loop(self) -> None:
        max_size = self.endpoint.max_size
        while True:
            message: Message = await self._receive()
            if message["type"] != "websocket.receive":
                return  # closed by the client (or by us), or lost
            data: bytes | None = message.get("bytes")
            if data is None:
                raise MuxProtocolError("upf-mux.v1 messages are binary; the client sent a text message")
            if len(data) > max_size:
                # uvicorn enforces this first (ws_max_size); checked here for servers that do not.
                raise MessageTooLarge(f"a WebSocket message of {len(data)} bytes is over the limit of {max_size}")
            self._dispatch_message(memoryview(data))

    def _dispatch_message(self, data: memoryview) -> None:
        offset, size = 0, len(data)
        if not size:
            raise MuxProtocolError("an empty WebSocket message (it must hold at least one frame)")
        max_frame = self.settings.max_frame_bytes
        while offset < size:
            if size - offset < HEADER.size:
                raise MuxProtocolError("a frame header runs past the end of its WebSocket message")
            kind, _flags, stream_id, length = HEADER.unpack_from(data, offset)
            start = offset + HEADER.size
            if length > max_frame:
                raise MuxProtocolError(
                    f"a frame of {length} bytes is over the limit of {max_frame}", ErrorCode.FRAME_SIZE_ERROR
                )
            if start + length > size:
                raise MuxProtocolError("a frame runs past the end of its WebSocket message")
            self._on_frame(kind, stream_id, data[start : start + length])
            offset = start + length

    # --- frames from the client ---------------------------------------------------------------

    def _on_frame(self, kind: int, stream_id: int, payload: memoryview) -> None:
        if kind not in _CLIENT_FRAMES:
            raise MuxProtocolError(f"frame type {_name(kind)} is not one a client sends")
        if stream_id == 0:
            raise MuxProtocolError(f"{FrameType(kind).name} on stream 0")
        if kind == FrameType.OPEN:
            self._on_open(stream_id, payload)
            return
        if stream_id > self.highest:
            raise MuxProtocolError(f"{FrameType(kind).name} on stream {stream_id}, which was never opened")
        stream = self.streams.get(stream_id)  # None: the call has ended, and the frame crossed its TRAILERS
        if kind == FrameType.DATA:
            self._on_data(stream, payload)
        elif kind == FrameType.WINDOW_UPDATE:
            increment = parse_increment(payload)
            if stream is not None:
                stream.open_window(increment)
        else:
            if payload:
                message = f"{FrameType(kind).name} carries {len(payload)} bytes; it has no payload"
                raise MuxProtocolError(message, ErrorCode.FRAME_SIZE_ERROR)
            if stream is None:
                return
            if kind == FrameType.HALF_CLOSE:
                if stream.half_closed:
                    raise MuxProtocolError(f"a second HALF_CLOSE on stream {stream_id}")
                stream.half_closed = True
                stream.pump()
            else:
                stream.abort(_CANCELLED_BY_CLIENT)

    def _on_open(self, stream_id: int, payload: memoryview) -> None:
        if stream_id <= self.highest:
            raise MuxProtocolError(f"OPEN on stream {stream_id}, not above the highest opened so far ({self.highest})")
        self.highest = stream_id
        request = parse_open(payload)
        if self.going or self.endpoint.sockets.draining:
            self.queue(trailers(stream_id, grpc.StatusCode.UNAVAILABLE.value[0], SHUTTING_DOWN.encode(), ()))
            return
        if len(self.streams) >= self.settings.max_streams:
            message = f"more than {self.settings.max_streams} calls at once on one socket"
            self.queue(trailers(stream_id, grpc.StatusCode.RESOURCE_EXHAUSTED.value[0], message.encode(), ()))
            return
        stream = _Stream(self, stream_id, request.window)
        self.streams[stream_id] = stream
        stream.task = asyncio.get_running_loop().create_task(self._call(stream, request))

    def _on_data(self, stream: _Stream | None, payload: memoryview) -> None:
        size = len(payload)
        if size > self.window:
            raise MuxProtocolError(
                f"DATA of {size} bytes past the connection window ({self.window} left)", ErrorCode.FLOW_CONTROL_ERROR
            )
        self.window -= size
        if stream is None:
            self.credit(size)  # nobody will take these bytes: the socket's window gets them back at once
            return
        if size > stream.receive_window:
            raise MuxProtocolError(
                f"DATA of {size} bytes past stream {stream.id}'s window ({stream.receive_window} left)",
                ErrorCode.FLOW_CONTROL_ERROR,
            )
        stream.receive_window -= size
        if stream.half_closed:
            raise MuxProtocolError(f"DATA on stream {stream.id} after its HALF_CLOSE")
        if stream.failure is not None or stream.abort_status is not None:
            self.credit(size)
            return
        if size:
            stream.pending.append(payload)
            stream.pump()

    # --- one call -----------------------------------------------------------------------------

    async def _call(self, stream: _Stream, request: Open) -> None:
        try:
            await self._place(stream, request)
        except GatewayError as exc:
            # RateLimited carries retry-after and the RateLimit fields, auth refusals WWW-Authenticate.
            metadata = [(key.encode("latin-1"), value.encode("latin-1")) for key, value in exc.headers.items()]
            self._end(stream, (exc.code, exc.message, metadata))
        except asyncio.CancelledError:
            if stream.abort_status is None:
                raise  # the socket is ending: nobody to tell
            current = asyncio.current_task()
            if current is not None:
                current.uncancel()
            self._end(stream, stream.abort_status)
        except Exception:
            logger.exception("upf-mux.v1 call %s failed inside the gateway", request.path)
            self._end(stream, (grpc.StatusCode.INTERNAL, "the gateway failed while handling this call", ()))
        finally:
            self._forget(stream)

    async def _place(self, stream: _Stream, request: Open) -> None:
        config = self.endpoint.config
        match = _METHOD_PATH.match(request.path)
        if match is None:
            raise BadRequest(f"{request.path[:200]!r} is not a gRPC method path (/package.Service/Method)")
        service = match.group(1)
        if len(request.block) > MAX_HEADER_BLOCK:
            raise MessageTooLarge(f"the OPEN metadata is larger than the gateway's limit of {MAX_HEADER_BLOCK} bytes")
        pairs = parse_header_block(request.block)
        if config.forward_cookies:
            pairs += [(name, value) for name, value in self.scope["headers"] if name == b"cookie"]
        # Each call's own token, else the one of the upgrade request (a non-browser client may
        # authenticate the socket once); either way this call's permission is checked.
        credentials = pairs
        if not any(name == b"authorization" for name, _ in pairs):
            credentials = pairs + [(name, value) for name, value in self.scope["headers"] if name == b"authorization"]
        # One rate-limit token per call, keyed like the upgrade request (its peer and headers) or
        # this call's caller: its own copy of the socket's scope takes the call's identity.
        scope = {**self.scope} if config.authenticator is not None else self.scope
        admitted = await admit(
            config,
            protocol="upf-mux",
            path=request.path,
            service=service,
            method=request.path.rpartition("/")[2],
            credentials=credentials,
            scope=scope,
        )
        try:
            metadata = parse_request_headers(
                pairs, forward_cookies=config.forward_cookies, forward_authorization=config.forward_authorization
            )
        except GatewayError as exc:
            admitted.record.end(exc.code)  # refused after admission: the call ends here
            raise
        block = metadata.block + admitted.identity_metadata
        requested = [t for t in (request.timeout, metadata.timeout) if t is not None]
        timeout = admitted.deadline(min(requested) if requested else None)

        async def attempt(replica: Replica, timeout: float | None) -> grpc.StatusCode | Refused:
            try:
                upstream = await replica.client.open(request.path, block, timeout)
            except StreamError as exc:
                # The client's DATA waits in the stream until it is attached: another replica can take it.
                return Refused.raising(gateway_error(exc, service), unsent=isinstance(exc, Unsent))
            try:
                stream.attach(upstream, RequestFrames(self.settings.max_message_bytes, metadata.encoding))
                await self._relay(stream, upstream)
            finally:
                upstream.on_writable = None
                if not upstream.ended:
                    upstream.cancel("the call ended on the gateway's side")
            if stream.failure is not None:
                raise stream.failure
            result = outcome(upstream, service)
            message = unquote_to_bytes(result.message).decode("utf-8", "replace").encode()
            self.queue(trailers(stream.id, result.code.value[0], message, result.metadata))
            return result.code

        await run_attempts(config, admitted, timeout, attempt, resendable=False)

    async def _relay(self, stream: _Stream, upstream: Http2Stream) -> None:
        """HEADERS as soon as the upstream sends them, then its messages within the client's window."""
        await upstream.wait_for_headers()
        # Now, not with the first message: a server may send its headers and then wait (for this
        # client's first message, say). A trailers-only answer, or a call that failed first, has none.
        headers_sent = upstream.headers is not None and upstream.error is None
        if headers_sent:
            self._headers(stream, upstream)
        max_frame = self.settings.max_frame_bytes
        while True:
            message = await upstream.read()
            if message is None:
                return
            if not headers_sent:
                headers_sent = True
                self._headers(stream, upstream)
            view = memoryview(message)
            while view:
                if not await stream.sendable():
                    return
                size = min(len(view), stream.window, max_frame)
                self.queue(encode(FrameType.DATA, stream.id, view[:size]))
                stream.window -= size
                view = view[size:]

    def _headers(self, stream: _Stream, upstream: Http2Stream) -> None:
        block = encode_block(response_metadata(upstream.headers or ()))
        self.queue(encode(FrameType.HEADERS, stream.id, block))

    def _end(self, stream: _Stream, status: Status) -> None:
        code, message, metadata = status
        self.queue(trailers(stream.id, code.value[0], message.encode(), metadata))

    def _forget(self, stream: _Stream) -> None:
        if self.streams.pop(stream.id, None) is None:
            return
        leftover = stream.pending_cost
        stream.pending.clear()
        if leftover:
            self.credit(leftover)  # bytes the upstream will never take: the socket's window gets them back
        if self.going and not self.streams:
            self.request_close(CLOSE_GOING_AWAY)

    # --- to the client ------------------------------------------------------------------------

    def credit(self, size: int) -> None:
        self.owed += size
        if self.owed >= self.settings.connection_window // 2:
            self.queue(window_update(0, self.owed))
            self.window += self.owed
            self.owed = 0

    def queue(self, frame: bytes) -> None:
        if self.closed or self._close is not None:
            return
        self.outbox.append(frame)
        self.outbox_bytes += len(frame)
        if self.outbox_bytes >= _OUTBOX_HIGH:
            self.room.clear()
        self._flush.set()

    def request_close(self, code: int, reason: str = "") -> None:
        """Close once everything queued so far has been sent; the first request wins."""
        if self._close is None:
            # A close reason is at most 123 bytes of UTF-8 (RFC 6455 5.5).
            self._close = (code, reason.encode()[:123].decode("utf-8", "ignore"))
            self._flush.set()

    async def _write_loop(self) -> None:
        try:
            while True:
                if not self.outbox:
                    if self._close is not None:
                        break
                    self._flush.clear()
                    await self._flush.wait()
                    continue
                batch = self._take_batch()
                await self._write({"type": "websocket.send", "bytes": batch})
            code, reason = self._close
            await self._write({"type": "websocket.close", "code": code, "reason": reason})
        except _ClientGone:
            pass
        finally:
            self.closed = True
            self.outbox.clear()
            self.room.set()  # nobody waits for a socket that is gone

    def _take_batch(self) -> bytes:
        outbox = self.outbox
        count, size = 1, len(outbox[0])
        while count < len(outbox) and size + len(outbox[count]) <= _BATCH:
            size += len(outbox[count])
            count += 1
        batch = outbox[0] if count == 1 else b"".join(outbox[:count])
        del outbox[:count]
        self.outbox_bytes -= size
        if self.outbox_bytes < _OUTBOX_HIGH:
            self.room.set()
        return batch

    async def _write(self, message: Message) -> None:
        try:
            await self._send(message)
        except OSError:  # uvicorn's ClientDisconnected: the socket is gone
            raise _ClientGone from None
