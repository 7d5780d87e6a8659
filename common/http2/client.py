"""A small HTTP/2 client (RFC 9113) made for gRPC calls (grpc PROTOCOL-HTTP2.md).

Why not grpc.aio's channel: a grpc.aio call costs 140-200 us of CPU in the gateway, most of the
budget of a proxied call. The gateway already holds each message framed exactly as gRPC frames it,
so it needs no (de)serialisation, no interceptors and no channel machinery: this client writes the
bytes it is given and hands back whole gRPC frames as they arrive.

What it does: one connection per upstream address, many concurrent streams on it; flow control in
both directions (a stream's window is refilled as its reader consumes, so a slow client slows its
upstream stream instead of filling memory); the peer's SETTINGS (frame size, windows, concurrent
streams); PING answered; GOAWAY drains the connection and the next call opens a new one;
RST_STREAM and a lost connection end the affected calls with the gRPC status the protocol maps
them to; deadlines enforced locally and sent as grpc-timeout. No TLS, no server push, no priorities.
Frames are read, checked and written by the layer both ends share (reader.py, writer.py,
connection.py): an upstream that breaks the protocol gets GOAWAY with the error code, and every call
on that connection ends INTERNAL.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections import deque
from collections.abc import Callable
from typing import Final

import grpc

from common.http2.codes import HTTP_TO_GRPC, ErrorCode, Setting
from common.http2.connection import MAX_HEADER_LIST, Connection
from common.http2.frames import (
    DATA,
    DEFAULT_WINDOW,
    END_HEADERS,
    END_STREAM,
    FRAME_HEADER,
    HEADERS,
    MAX_STREAM_ID,
    MIN_MAX_FRAME,
    PREFACE,
)
from common.http2.headers import HeaderList, RequestEncoder
from common.http2.writer import goaway, rst_stream, settings, window_update
from common.inflate import InflateError, TooLarge, inflate

__all__ = ["STREAM_WINDOW", "ClientConnection", "Http2Stream", "NeverProcessed", "StreamError", "connect"]

logger = logging.getLogger(__name__)

_GRPC_PREFIX = struct.Struct(">BI")
STREAM_WINDOW: Final = 4 * 1024 * 1024  # what one stream may have in flight towards us
CONNECTION_WINDOW: Final = 64 * 1024 * 1024
_PREFIX_LITERALS = 128  # bytes of a request prefix besides :authority and :path, all as literals
_ERROR_BODY_LIMIT = 16 * 1024  # of a non-gRPC answer, kept for the error message (Envoy keeps as much)
_CREDIT_BATCH = STREAM_WINDOW // 8  # window updates go out in batches this large, not per message
_OPENING = (
    PREFACE
    + settings(
        (
            (Setting.ENABLE_PUSH, 0),
            (Setting.INITIAL_WINDOW_SIZE, STREAM_WINDOW),
            (Setting.MAX_HEADER_LIST_SIZE, MAX_HEADER_LIST),
        )
    )
    + window_update(0, CONNECTION_WINDOW - DEFAULT_WINDOW)
)

# gRPC's mapping of HTTP/2 error codes (PROTOCOL-HTTP2.md, "Errors").
_RST_TO_STATUS: dict[int, grpc.StatusCode] = {
    ErrorCode.REFUSED_STREAM: grpc.StatusCode.UNAVAILABLE,  # the call was never processed
    ErrorCode.CANCEL: grpc.StatusCode.CANCELLED,
    ErrorCode.ENHANCE_YOUR_CALM: grpc.StatusCode.RESOURCE_EXHAUSTED,
    ErrorCode.INADEQUATE_SECURITY: grpc.StatusCode.PERMISSION_DENIED,
}


class StreamError(Exception):
    """A call ended without a gRPC status from the upstream: the gateway supplies one."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class NeverProcessed(StreamError):
    """The upstream processed nothing of the call: it refused the stream (RST_STREAM REFUSED_STREAM),
    or its GOAWAY named a last stream below the call's (RFC 9113 6.8, 8.7). Safe to send to another
    replica whatever the method, as gRPC's transparent retry does (gateway/proxy/attempts.py)."""


class Http2Stream:
    """One gRPC call. The owner sends with `send`, then reads whole gRPC frames with `read`."""

    __slots__ = (
        "_conn",
        "_deadline",
        "_encoding",
        "_headers_waiter",
        "_http_error",
        "_max_message",
        "_messages",
        "_need",
        "_partial",
        "_queued",
        "_waiter",
        "_withheld",
        "ended",
        "error",
        "headers",
        "id",
        "on_writable",
        "send_window",
        "trailers",
        "window_waiter",
    )  # fmt: skip

    def __init__(self, conn: ClientConnection, stream_id: int, max_message: int) -> None:
        self._conn = conn
        self.id = stream_id
        self._max_message = max_message
        self.headers: HeaderList | None = None  # response headers; None for a trailers-only answer
        self.trailers: HeaderList | None = None
        self.error: StreamError | None = None  # set when the call ended locally (reset, deadline, lost)
        self.ended = False
        self.send_window = conn.peer_initial_window
        self._messages: deque[bytes] = deque()
        self._partial = bytearray()
        self._need = 0  # bytes the partial buffer must hold before the next message is whole
        self._queued = 0  # bytes of whole messages waiting for the reader
        self._withheld = 0  # bytes received and not yet given back to the upstream's send window
        self._encoding: bytes | None = None
        self._http_error: tuple[int, bytearray] | None = None  # a non-gRPC answer: HTTP status, body start
        self._waiter: asyncio.Future[None] | None = None
        # Apart from the reader's: one task may wait for the headers while another reads.
        self._headers_waiter: asyncio.Future[None] | None = None
        self.window_waiter: asyncio.Future[None] | None = None
        self._deadline: asyncio.TimerHandle | None = None
        # For an owner that cannot wait (the ingress, inside data_received): called when the
        # windows may have opened after `send_nowait` wrote less than it was given, and at the end.
        self.on_writable: Callable[[], None] | None = None

    # --- the owner's side -------------------------------------------------------------------

    async def send(self, data: bytes, end_stream: bool) -> None:
        """Write request bytes (already gRPC-framed), within the flow-control windows."""
        await self._conn.send_data(self, data, end_stream)

    def send_nowait(self, data: bytes | memoryview, end_stream: bool) -> int:
        """Write as much of `data` as the windows allow now (END_STREAM with its last byte); returns
        how many bytes were taken. When not all fit, `on_writable` is called once they may fit."""
        if self.ended:
            return len(data)  # the call is over: the bytes are dropped, as `send` drops them
        return self._conn.write_data(self, data, end_stream)

    @property
    def done_sending(self) -> bool:
        return self.ended

    async def read(self) -> bytes | None:
        """The next gRPC frame (prefix included, never compressed), or None once the call has ended."""
        while True:
            if self._messages:
                frame = self._messages.popleft()
                self._queued -= len(frame)
                if self._withheld - self._queued >= _CREDIT_BATCH:
                    self._credit()
                return frame
            if self.ended:
                return None
            self._waiter = self._conn.loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    async def wait_for_headers(self) -> None:
        """Until the upstream has begun its gRPC answer (its response headers are in `headers`, or a
        message is waiting) or the call has ended. A server may send its headers long before its
        first message (a bidi server that answers only after the client's first request): a bridge
        that waits here can hand them on at once instead of with that message. A non-gRPC answer (a
        proxy's error page) counts only once it has ended."""
        while not self.ended and not self._messages and (self.headers is None or self._http_error is not None):
            self._headers_waiter = self._conn.loop.create_future()
            try:
                await self._headers_waiter
            finally:
                self._headers_waiter = None

    @property
    def has_message(self) -> bool:
        """Whether a whole message is waiting to be read."""
        return bool(self._messages)

    def read_queued(self) -> list[bytes]:
        """The frames that have arrived and not been read yet, without waiting (maybe none)."""
        if not self._messages:
            return []
        frames = list(self._messages)
        self._messages.clear()
        self._queued = 0
        if self._withheld >= _CREDIT_BATCH:
            self._credit()
        return frames

    def set_deadline(self, timeout: float) -> None:
        self._deadline = self._conn.loop.call_later(timeout, self._expire)

    def cancel(self, message: str = "cancelled by the gateway") -> None:
        if not self.ended:
            self._conn.reset(self, ErrorCode.CANCEL)
            self._finish(StreamError(grpc.StatusCode.CANCELLED, message))

    def _expire(self) -> None:
        if not self.ended:
            self._conn.reset(self, ErrorCode.CANCEL)
            self._finish(StreamError(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded"))

    def _credit(self) -> None:
        # Give back to the upstream's window every byte received except those of messages still
        # waiting for the reader: a slow client slows its upstream stream down instead of filling
        # the gateway's memory, and a message larger than the window still completes.
        if not self.ended:
            credit = self._withheld - self._queued
            self._conn.write(window_update(self.id, credit))
            self._withheld -= credit

    # --- the connection's side --------------------------------------------------------------

    def _wake_reader(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        waiter = self._headers_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def wake(self) -> None:
        if self.on_writable is not None:
            self.on_writable()
        waiter = self.window_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _finish(self, error: StreamError | None = None) -> None:
        if self.ended:
            return
        self.ended = True
        if error is not None and self.error is None:
            self.error = error
            self._messages.clear()  # a call that failed delivers no more messages
        if self._deadline is not None:
            self._deadline.cancel()
        self._conn.forget(self)
        self._wake_reader()
        self.wake()

    def _on_headers(self, headers: HeaderList, end_stream: bool) -> None:
        if self.headers is None and self.trailers is None:
            status, content_type = b"", b""
            for name, value in headers:
                if name == b":status":
                    status = value
                elif name == b"content-type":
                    content_type = value
                elif name == b"grpc-encoding":
                    self._encoding = value
            if status != b"200" or not content_type.startswith(b"application/grpc"):
                # Not a gRPC answer (a proxy's error page, say): keep the start of its body for the message.
                self._http_error = (int(status) if status.isdigit() else 0, bytearray())
        if self.headers is None and not end_stream:
            self.headers = headers
        else:
            self.trailers = headers
        if end_stream:
            self._on_end()
        else:
            self._wake_reader()

    def _on_data(self, data: bytes, flow_length: int, end_stream: bool) -> None:
        self._withheld += flow_length
        if self._http_error is not None:
            body = self._http_error[1]
            body += data[: max(0, _ERROR_BODY_LIMIT - len(body))]
            if end_stream:
                self._on_end()
            elif self._withheld - self._queued >= _CREDIT_BATCH:
                self._credit()
            return
        if self._partial:
            # Part of a message is waiting: gather without re-copying until the message is whole.
            self._partial += data
            if len(self._partial) < self._need:
                self._after_data(end_stream)
                return
            buffer = bytes(self._partial)
            self._partial.clear()
        else:
            buffer = data
        offset, size = 0, len(buffer)
        messages = self._messages
        while size - offset >= 5:
            flags, length = _GRPC_PREFIX.unpack_from(buffer, offset)
            if length > self._max_message:
                self._conn.reset(self, ErrorCode.CANCEL)
                self._finish(
                    StreamError(
                        grpc.StatusCode.RESOURCE_EXHAUSTED,
                        f"upstream message of {length} bytes is larger than the gateway's limit of "
                        f"{self._max_message} bytes",
                    )
                )
                return
            end = offset + 5 + length
            if end > size:
                break
            frame = buffer[offset:end] if offset or end != size else buffer
            if flags & 0x01:
                inflated = self._decompress(frame[5:])
                if inflated is None:
                    return
                frame = inflated
            messages.append(frame)
            self._queued += len(frame)
            offset = end
        if offset < size:
            self._partial += memoryview(buffer)[offset:]
            self._need = 5 + (int.from_bytes(buffer[offset + 1 : offset + 5], "big") if size - offset >= 5 else 0)
        self._after_data(end_stream)

    def _after_data(self, end_stream: bool) -> None:
        if self._withheld - self._queued >= _CREDIT_BATCH and not end_stream:
            self._credit()
        if end_stream:
            self._on_end()
        elif self._messages:
            self._wake_reader()

    def _decompress(self, payload: bytes) -> bytes | None:
        encoding = self._encoding
        if encoding not in (b"gzip", b"deflate"):
            self._fail_protocol(f"upstream sent a compressed message with grpc-encoding {encoding!r}")
            return None
        try:
            data = inflate(payload, gzip=encoding == b"gzip", limit=self._max_message)
        except InflateError as exc:
            self._fail_protocol(f"upstream sent a message that does not decompress: {exc}")
            return None
        except TooLarge:
            self._conn.reset(self, ErrorCode.CANCEL)
            self._finish(
                StreamError(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"upstream message decompresses to more than the gateway's limit of {self._max_message} bytes",
                )
            )
            return None
        return _GRPC_PREFIX.pack(0, len(data)) + data

    def _fail_protocol(self, message: str) -> None:
        self._conn.reset(self, ErrorCode.CANCEL)
        self._finish(StreamError(grpc.StatusCode.INTERNAL, message))

    def _on_end(self) -> None:
        if self._http_error is not None and not any(name == b"grpc-status" for name, _ in self.trailers or ()):
            status, body = self._http_error
            code = HTTP_TO_GRPC.get(status, grpc.StatusCode.UNKNOWN)
            detail = bytes(body).decode("utf-8", "replace").strip()
            message = f"upstream answered HTTP {status} instead of gRPC" + (f": {detail}" if detail else "")
            self._finish(StreamError(code, message))
        elif self._partial:
            self._finish(StreamError(grpc.StatusCode.INTERNAL, "upstream ended the call inside a message"))
        else:
            self._finish()

    def _on_reset(self, code: int) -> None:
        status = _RST_TO_STATUS.get(code, grpc.StatusCode.INTERNAL)
        if code == ErrorCode.REFUSED_STREAM:
            self._finish(NeverProcessed(status, "upstream refused the call before processing it (REFUSED_STREAM)"))
        else:
            self._finish(StreamError(status, f"upstream reset the call (HTTP/2 error code {code})"))


class ClientConnection(Connection[Http2Stream]):
    """One HTTP/2 connection to an upstream; `open_stream` starts a call on it."""

    def __init__(self, authority: str, max_message: int, user_agent: bytes = b"upf-gateway") -> None:
        # We never raise SETTINGS_MAX_FRAME_SIZE above the default: a larger frame is the upstream's
        # error, and waiting for it would hold up to 16 MiB for nothing.
        super().__init__(server=False, max_frame=MIN_MAX_FRAME)
        self.authority = authority
        self.max_message = max_message
        self.next_stream_id = 1
        self.peer_max_streams = 2**31
        self.closing: str | None = None  # why no new stream may start here
        self.closed = asyncio.Event()
        self._received_unacked = 0
        self.encoder = RequestEncoder(user_agent)
        self._slot_waiters: deque[asyncio.Future[None]] = deque()

    # --- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.write(_OPENING)

    def connection_lost(self, exc: Exception | None) -> None:
        reason = f"connection to upstream {self.authority} lost" + (f": {exc}" if exc else "")
        self.closing = self.closing or reason
        self.transport = None
        for stream in list(self.streams.values()):
            stream._finish(StreamError(grpc.StatusCode.UNAVAILABLE, reason))
        self._release_slot_waiters()
        self.closed.set()

    # --- frames (FrameHandler; SETTINGS, PING and WINDOW_UPDATE are Connection's) -----------

    def on_data(self, stream_id: int, data: bytes, flow_length: int, end_stream: bool) -> None:
        self._received_unacked += flow_length
        if self._received_unacked >= CONNECTION_WINDOW // 4:
            self.write(window_update(0, self._received_unacked))
            self._received_unacked = 0
        stream = self.streams.get(stream_id)
        if stream is not None:
            stream._on_data(data, flow_length, end_stream)

    def on_headers(self, stream_id: int, block: bytes, end_stream: bool) -> None:
        headers = self.decode_headers(block)
        stream = self.streams.get(stream_id)
        if stream is not None:
            stream._on_headers(headers, end_stream)

    def on_rst_stream(self, stream_id: int, code: int) -> None:
        stream = self.streams.get(stream_id)
        if stream is not None:
            stream._on_reset(code)

    def on_setting(self, key: int, value: int) -> None:
        if key == Setting.HEADER_TABLE_SIZE:
            self.encoder.set_table_size(value)
        elif key == Setting.MAX_CONCURRENT_STREAMS:
            self.peer_max_streams = value
            self._release_slot_waiters()

    def on_goaway(self, last_stream_id: int, code: int, debug: bytes) -> None:
        reason = f"upstream {self.authority} is going away (HTTP/2 error code {code})"
        self.closing = reason
        for stream_id, stream in list(self.streams.items()):
            if stream_id > last_stream_id:
                # Never processed by the upstream (RFC 9113 6.8), so UNAVAILABLE: safe to try again.
                stream._finish(NeverProcessed(grpc.StatusCode.UNAVAILABLE, reason))
        self._release_slot_waiters()
        if not self.streams:
            self.close_transport()

    def stream_error(self, stream: Http2Stream, code: ErrorCode) -> None:
        message = f"upstream broke the protocol on the call's stream (HTTP/2 error code {code})"
        stream._finish(StreamError(grpc.StatusCode.INTERNAL, message))

    def fail(self, code: ErrorCode, message: str) -> None:
        reason = f"upstream {self.authority} broke the protocol: {message}"
        logger.info("%s (HTTP/2 error code %d): connection closed", reason, code)
        self.write(goaway(0, code, message.encode()[:256]))
        self.closing = reason
        for stream in list(self.streams.values()):
            stream._finish(StreamError(grpc.StatusCode.INTERNAL, reason))
        self.close_transport()

    # --- used by streams and the owner ------------------------------------------------------

    def reset(self, stream: Http2Stream, code: ErrorCode) -> None:
        self.write(rst_stream(stream.id, code))

    def forget(self, stream: Http2Stream) -> None:
        self.streams.pop(stream.id, None)
        self.send_waiters.discard(stream)
        if self._slot_waiters:
            self._release_slot_waiters()
        if self.closing is not None and not self.streams:
            self.close_transport()

    def _release_slot_waiters(self) -> None:
        while self._slot_waiters and (self.closing or len(self.streams) < self.peer_max_streams):
            waiter = self._slot_waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)

    @property
    def usable(self) -> bool:
        return self.closing is None and self.transport is not None and self.next_stream_id < MAX_STREAM_ID

    async def open_stream(self, target: tuple[bytes, bytes], fields: bytes, *, end_stream: bool = False) -> Http2Stream:
        """Start a call to (authority, path): send its HEADERS (and END_STREAM when it has no body).

        `fields` are the call's own headers, HPACK-encoded.
        """
        while len(self.streams) >= self.peer_max_streams and self.closing is None:
            waiter = self.loop.create_future()
            self._slot_waiters.append(waiter)
            await waiter
        if not self.usable:
            raise StreamError(grpc.StatusCode.UNAVAILABLE, self.closing or "connection closed")
        stream = Http2Stream(self, self.next_stream_id, self.max_message)
        self.next_stream_id += 2
        self.streams[stream.id] = stream
        # Encoded only now, right before it is written: the upstream decodes blocks in order.
        header_block = self.encoder.prefix(*target) + fields
        self.write_headers(stream.id, header_block, end_stream=end_stream)
        return stream

    def open_unary(self, target: tuple[bytes, bytes], fields: bytes, body: bytes) -> Http2Stream | None:
        """Fast path: HEADERS and the whole body in one write, when windows and limits allow it.

        Returns None when the call must take the general path (open_stream, then send).
        """
        size = len(body)
        if (
            len(self.streams) >= self.peer_max_streams
            or not self.usable
            or size > self.peer_max_frame
            or size > self.peer_initial_window
            or size > self.send_window
            # The longest the block can be (all literals): past one frame, the general path splits it.
            or len(fields) + len(target[0]) + len(target[1]) + _PREFIX_LITERALS > self.peer_max_frame
        ):
            return None
        header_block = self.encoder.prefix(*target) + fields
        stream = Http2Stream(self, self.next_stream_id, self.max_message)
        self.next_stream_id += 2
        self.streams[stream.id] = stream
        stream.send_window -= size
        self.send_window -= size
        self.write(
            FRAME_HEADER.pack((len(header_block) << 8) | HEADERS, END_HEADERS, stream.id)
            + header_block
            + FRAME_HEADER.pack((size << 8) | DATA, END_STREAM, stream.id)
            + body
        )
        return stream

    def close(self) -> None:
        """The gateway is done with this upstream: GOAWAY, then close (running calls end as lost)."""
        self.closing = self.closing or "gateway shutting down"
        self.write(goaway(0, ErrorCode.NO_ERROR))
        self.close_transport()


async def connect(
    host: str, port: int, *, authority: str, max_message: int, timeout: float, user_agent: bytes = b"upf-gateway"
) -> ClientConnection:
    loop = asyncio.get_running_loop()
    _transport, protocol = await asyncio.wait_for(
        loop.create_connection(lambda: ClientConnection(authority, max_message, user_agent), host, port), timeout
    )
    return protocol
