"""The server side of HTTP/2 (RFC 9113, h2c with prior knowledge) for the native gRPC ingress.

`ServerConnection` is one asyncio.Protocol per client connection: it reads and checks frames,
keeps the connection's flow-control windows and settings, and writes frames. What a stream
carries is not its business: request headers for a new stream go to its owner
(`ServerOwner.start_stream`), which registers a `ServerStream` in `streams`; DATA, resets and
window updates for that stream are then handed to it.

A client that breaks the protocol gets GOAWAY with the error code and its connection closed;
other connections are untouched.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
from typing import Any, Generic, Protocol, TypeVar, cast

import hpack

from gateway.corking import CorkedTransport
from gateway.http2.frames import (
    ACK,
    COMPRESSION_ERROR,
    CONTINUATION,
    DATA,
    DEFAULT_WINDOW,
    END_HEADERS,
    END_STREAM,
    ENHANCE_YOUR_CALM,
    FLOW_CONTROL_ERROR,
    FRAME_HEADER,
    FRAME_SIZE_ERROR,
    GOAWAY,
    HEADERS,
    INTERNAL_ERROR,
    MAX_MAX_FRAME,
    MAX_STREAM_ID,
    MAX_WINDOW,
    MIN_MAX_FRAME,
    NO_ERROR,
    PADDED,
    PING,
    PREFACE,
    PRIORITY,
    PRIORITY_FLAG,
    PROTOCOL_ERROR,
    PUSH_PROMISE,
    REFUSED_STREAM,
    RST_STREAM,
    SETTINGS,
    SETTINGS_ENABLE_PUSH,
    SETTINGS_HEADER_TABLE_SIZE,
    SETTINGS_INITIAL_WINDOW_SIZE,
    SETTINGS_MAX_CONCURRENT_STREAMS,
    SETTINGS_MAX_FRAME_SIZE,
    SETTINGS_MAX_HEADER_LIST_SIZE,
    STREAM_CLOSED,
    WINDOW_UPDATE,
    Gatherer,
    frame,
    frame_need,
)

__all__ = [
    "CONNECTION_WINDOW",
    "MAX_CONCURRENT_STREAMS",
    "MAX_FRAME",
    "MAX_HEADER_LIST",
    "STREAM_WINDOW",
    "ServerConnection",
    "ServerOwner",
    "ServerStream",
]

logger = logging.getLogger(__name__)

MAX_CONCURRENT_STREAMS = 1000
# What a client may send on one stream, and on the connection, before the upstream has taken it:
# the most request data the gateway holds for a client.
STREAM_WINDOW = 1024 * 1024
CONNECTION_WINDOW = 16 * 1024 * 1024
MAX_FRAME = 1024 * 1024  # the largest frame a client may send us (and so the most a partial frame holds)
MAX_HEADER_LIST = 64 * 1024
HEADER_TABLE_SIZE = 4096  # the protocol default: hpack.Decoder's own limit
# Window updates to the client go out in batches this large, not one per message.
_CONNECTION_CREDIT_BATCH = CONNECTION_WINDOW // 4


class ServerStream(Protocol):
    """What the connection needs of one client stream (the ingress's call)."""

    request_ended: bool  # the client half-closed: its DATA is no longer wanted
    recv_window: int  # what the client may still send on this stream
    send_window: int  # what we may still send the client on this stream

    def on_data(self, data: bytes, end_stream: bool) -> None: ...
    def on_reset(self) -> None: ...  # the client reset the stream, or the connection is gone
    def wake(self) -> None: ...  # its send window opened
    def abort(self) -> None: ...  # shutdown past the grace period


class ServerOwner(Protocol):
    """What the connection needs of the server that accepted it."""

    def connection_opened(self, conn: ServerConnection[Any]) -> None: ...
    def connection_closed(self, conn: ServerConnection[Any]) -> None: ...
    def start_stream(
        self, conn: ServerConnection[Any], stream_id: int, headers: list[tuple[bytes, bytes]], end_stream: bool
    ) -> None:
        """A new stream's request headers: answer it on `conn`, or register a stream in `conn.streams`."""
        ...


OwnerT = TypeVar("OwnerT", bound=ServerOwner)


class _ConnectionError(Exception):
    """The client broke the protocol: GOAWAY with this code, then the connection closes."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class ServerConnection(asyncio.Protocol, Generic[OwnerT]):
    """One client connection: frames in, flow-control bookkeeping, frames out; streams belong to `server`."""

    def __init__(self, server: OwnerT) -> None:
        self.server = server
        self.loop = asyncio.get_running_loop()
        self.transport: CorkedTransport | None = None
        self.streams: dict[int, ServerStream] = {}
        self.send_waiters: set[ServerStream] = set()
        self.last_stream_id = 0
        self.peer_max_frame = MIN_MAX_FRAME
        self.peer_initial_window = DEFAULT_WINDOW
        self.send_window = DEFAULT_WINDOW  # what we may still send the client on the connection
        self.recv_window = CONNECTION_WINDOW  # what the client may still send us on the connection
        self._uncredited = 0
        self._decoder = hpack.Decoder(max_header_list_size=MAX_HEADER_LIST)
        self._decoder.max_allowed_table_size = HEADER_TABLE_SIZE
        self._preface = False
        self._gatherer = Gatherer()
        self._header_block: tuple[int, int, bytearray] | None = None  # stream, flags, fragments so far
        self.going_away = False
        self.peer: tuple[str, int] | None = None  # the client's address, for rate-limit keys

    # --- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        self.peer = (str(peer[0]), int(peer[1])) if peer else None
        # Frames written during one loop iteration (often several calls' worth) leave in one send().
        # uvloop's transports do not subclass asyncio's, hence the cast.
        self.transport = CorkedTransport(cast(asyncio.Transport, transport), asyncio.get_running_loop())
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        settings = struct.pack(
            ">HIHIHIHIHIHI",
            SETTINGS_HEADER_TABLE_SIZE, HEADER_TABLE_SIZE,
            SETTINGS_ENABLE_PUSH, 0,
            SETTINGS_MAX_CONCURRENT_STREAMS, MAX_CONCURRENT_STREAMS,
            SETTINGS_INITIAL_WINDOW_SIZE, STREAM_WINDOW,
            SETTINGS_MAX_FRAME_SIZE, MAX_FRAME,
            SETTINGS_MAX_HEADER_LIST_SIZE, MAX_HEADER_LIST,
        )  # fmt: skip
        window = struct.pack(">I", CONNECTION_WINDOW - DEFAULT_WINDOW)
        self.transport.write(frame(SETTINGS, 0, 0, settings) + frame(WINDOW_UPDATE, 0, 0, window))
        self.server.connection_opened(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        for call in list(self.streams.values()):
            call.on_reset()
        self.server.connection_closed(self)

    def data_received(self, data: bytes) -> None:
        if self.transport is None:
            return
        buffer = self._gatherer.take(data)
        if buffer is None:
            return  # part of a frame (or of the preface): more to come
        offset, size = 0, len(buffer)
        try:
            if not self._preface:
                if size < len(PREFACE):
                    if not PREFACE.startswith(buffer):
                        raise _ConnectionError(PROTOCOL_ERROR, "not an HTTP/2 connection preface")
                    self._gatherer.keep(buffer, 0, len(PREFACE))
                    return
                if not buffer.startswith(PREFACE):
                    raise _ConnectionError(PROTOCOL_ERROR, "not an HTTP/2 connection preface")
                self._preface = True
                offset = len(PREFACE)
            while size - offset >= 9:
                head, flags, stream_id = FRAME_HEADER.unpack_from(buffer, offset)
                length = head >> 8
                if length > MAX_FRAME:
                    raise _ConnectionError(FRAME_SIZE_ERROR, f"frame of {length} bytes exceeds SETTINGS_MAX_FRAME_SIZE")
                end = offset + 9 + length
                if end > size:
                    break
                self._on_frame(head & 0xFF, flags, stream_id & MAX_STREAM_ID, buffer[offset + 9 : end])
                offset = end
                if self.transport is None or self.transport.is_closing():
                    return
        except _ConnectionError as exc:
            self._fail(exc.code, str(exc))
            return
        except Exception:
            logger.exception("native gRPC connection failed inside the gateway")
            self._fail(INTERNAL_ERROR, "internal error")
            return
        if offset < size:
            self._gatherer.keep(buffer, offset, frame_need(buffer, offset))

    # --- frames -----------------------------------------------------------------------------

    def _on_frame(self, kind: int, flags: int, stream_id: int, payload: bytes) -> None:
        if self._header_block is not None and (kind != CONTINUATION or stream_id != self._header_block[0]):
            raise _ConnectionError(PROTOCOL_ERROR, "header block interrupted")
        if kind == DATA:
            self._on_data(flags, stream_id, payload)
        elif kind == HEADERS:
            if stream_id == 0:
                raise _ConnectionError(PROTOCOL_ERROR, "HEADERS on stream 0")
            if flags & PADDED:
                if not payload or payload[0] >= len(payload):
                    raise _ConnectionError(PROTOCOL_ERROR, "padding longer than the frame")
                payload = payload[1 : len(payload) - payload[0]]
            if flags & PRIORITY_FLAG:
                if len(payload) < 5:
                    raise _ConnectionError(FRAME_SIZE_ERROR, "HEADERS too short for its priority")
                payload = payload[5:]
            if flags & END_HEADERS:
                self._on_header_block(stream_id, flags, payload)
            else:
                self._header_block = (stream_id, flags, bytearray(payload))
        elif kind == CONTINUATION:
            if self._header_block is None:
                raise _ConnectionError(PROTOCOL_ERROR, "CONTINUATION without HEADERS")
            block_stream, block_flags, fragments = self._header_block
            fragments += payload
            if len(fragments) > MAX_HEADER_LIST:
                raise _ConnectionError(ENHANCE_YOUR_CALM, "header block too large")
            if flags & END_HEADERS:
                self._header_block = None
                self._on_header_block(block_stream, block_flags, bytes(fragments))
        elif kind == RST_STREAM:
            if stream_id == 0 or stream_id > self.last_stream_id:
                raise _ConnectionError(PROTOCOL_ERROR, "RST_STREAM on an idle stream")
            if len(payload) != 4:
                raise _ConnectionError(FRAME_SIZE_ERROR, "RST_STREAM is 4 bytes")
            call = self.streams.get(stream_id)
            if call is not None:
                call.on_reset()
        elif kind == SETTINGS:
            if stream_id != 0:
                raise _ConnectionError(PROTOCOL_ERROR, "SETTINGS on a stream")
            if flags & ACK:
                if payload:
                    raise _ConnectionError(FRAME_SIZE_ERROR, "SETTINGS ACK with a payload")
            else:
                self._on_settings(payload)
                self.write(frame(SETTINGS, ACK, 0))
        elif kind == PING:
            if stream_id != 0 or len(payload) != 8:
                raise _ConnectionError(PROTOCOL_ERROR if stream_id else FRAME_SIZE_ERROR, "malformed PING")
            if not flags & ACK:
                self.write(frame(PING, ACK, 0, payload))
        elif kind == WINDOW_UPDATE:
            if len(payload) != 4:
                raise _ConnectionError(FRAME_SIZE_ERROR, "WINDOW_UPDATE is 4 bytes")
            self._on_window_update(stream_id, struct.unpack(">I", payload)[0] & MAX_WINDOW)
        elif kind == GOAWAY:
            if stream_id != 0 or len(payload) < 8:
                raise _ConnectionError(PROTOCOL_ERROR, "malformed GOAWAY")
            # The client opens no more streams; the running ones finish, then the connection closes.
            self.going_away = True
            self.stream_closed()
        elif kind == PUSH_PROMISE:
            raise _ConnectionError(PROTOCOL_ERROR, "a client cannot push")
        elif kind == PRIORITY and (stream_id == 0 or len(payload) != 5):
            raise _ConnectionError(PROTOCOL_ERROR, "malformed PRIORITY")
        # Unknown frame types are ignored, as RFC 9113 requires.

    def _on_data(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id == 0:
            raise _ConnectionError(PROTOCOL_ERROR, "DATA on stream 0")
        if stream_id > self.last_stream_id:
            raise _ConnectionError(PROTOCOL_ERROR, "DATA on an idle stream")
        flow_length = len(payload)  # flow control counts the whole frame, padding included
        self.recv_window -= flow_length
        if self.recv_window < 0:
            raise _ConnectionError(FLOW_CONTROL_ERROR, "client overran the connection window")
        if flags & PADDED:
            if not payload or payload[0] >= len(payload):
                raise _ConnectionError(PROTOCOL_ERROR, "padding longer than the frame")
            payload = payload[1 : len(payload) - payload[0]]
        call = self.streams.get(stream_id)
        if call is None or call.request_ended:
            # A stream already answered or reset: the bytes are dropped, and given back at once.
            self.credit(flow_length)
            return
        call.recv_window -= flow_length
        if call.recv_window < 0:
            self.credit(flow_length)
            self.write(frame(RST_STREAM, 0, stream_id, struct.pack(">I", FLOW_CONTROL_ERROR)))
            call.on_reset()
            return
        self.credit(flow_length - len(payload))  # padding never goes upstream
        call.on_data(payload, bool(flags & END_STREAM))

    def _on_header_block(self, stream_id: int, flags: int, block: bytes) -> None:
        try:
            headers: list[tuple[bytes, bytes]] = self._decoder.decode(block, raw=True)  # type: ignore[assignment]
        except hpack.OversizedHeaderListError:
            raise _ConnectionError(ENHANCE_YOUR_CALM, "header list too large") from None
        except Exception as exc:  # hpack raises several types; all leave the decoder unusable
            raise _ConnectionError(COMPRESSION_ERROR, f"undecodable header block: {exc}") from None
        end_stream = bool(flags & END_STREAM)
        call = self.streams.get(stream_id)
        if call is not None:
            # Trailers from the client (gRPC clients send none): they can only end the request.
            if not end_stream:
                raise _ConnectionError(PROTOCOL_ERROR, "request trailers without END_STREAM")
            if not call.request_ended:
                call.on_data(b"", True)
            return
        if stream_id <= self.last_stream_id:
            raise _ConnectionError(STREAM_CLOSED, "HEADERS on a closed stream")
        if stream_id % 2 == 0:
            raise _ConnectionError(PROTOCOL_ERROR, "a client stream id must be odd")
        self.last_stream_id = stream_id
        if self.going_away or len(self.streams) >= MAX_CONCURRENT_STREAMS:
            # Never processed, so the client may safely retry it (on another connection).
            self.write(frame(RST_STREAM, 0, stream_id, struct.pack(">I", REFUSED_STREAM)))
            return
        self.server.start_stream(self, stream_id, headers, end_stream)

    def _on_settings(self, payload: bytes) -> None:
        if len(payload) % 6:
            raise _ConnectionError(FRAME_SIZE_ERROR, "SETTINGS length is not a multiple of 6")
        for offset in range(0, len(payload), 6):
            key, value = struct.unpack_from(">HI", payload, offset)
            if key == SETTINGS_INITIAL_WINDOW_SIZE:
                if value > MAX_WINDOW:
                    raise _ConnectionError(FLOW_CONTROL_ERROR, "SETTINGS_INITIAL_WINDOW_SIZE too large")
                delta = value - self.peer_initial_window
                self.peer_initial_window = value
                for call in self.streams.values():
                    call.send_window += delta
                    if delta > 0:
                        call.wake()
            elif key == SETTINGS_MAX_FRAME_SIZE:
                if not MIN_MAX_FRAME <= value <= MAX_MAX_FRAME:
                    raise _ConnectionError(PROTOCOL_ERROR, "SETTINGS_MAX_FRAME_SIZE out of range")
                self.peer_max_frame = value
            elif key == SETTINGS_ENABLE_PUSH and value > 1:
                raise _ConnectionError(PROTOCOL_ERROR, "SETTINGS_ENABLE_PUSH must be 0 or 1")
            # SETTINGS_HEADER_TABLE_SIZE: our responses never use the dynamic table, any size suits them.

    def _on_window_update(self, stream_id: int, increment: int) -> None:
        if stream_id == 0:
            if increment == 0:
                raise _ConnectionError(PROTOCOL_ERROR, "WINDOW_UPDATE of 0")
            self.send_window += increment
            if self.send_window > MAX_WINDOW:
                raise _ConnectionError(FLOW_CONTROL_ERROR, "connection window above 2^31-1")
            waiting = list(self.send_waiters)
            self.send_waiters.clear()
            for blocked in waiting:
                blocked.wake()
            return
        call = self.streams.get(stream_id)
        if call is None:
            return  # a closed stream: updates may still be in flight
        if increment == 0 or call.send_window + increment > MAX_WINDOW:
            code = PROTOCOL_ERROR if increment == 0 else FLOW_CONTROL_ERROR
            self.write(frame(RST_STREAM, 0, stream_id, struct.pack(">I", code)))
            call.on_reset()
            return
        call.send_window += increment
        call.wake()

    # --- used by calls and the server -------------------------------------------------------

    def write(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)

    def write_headers(self, stream_id: int, block: bytes, *, end_stream: bool) -> None:
        flags = END_STREAM if end_stream else 0
        limit = self.peer_max_frame
        if len(block) <= limit:
            self.write(FRAME_HEADER.pack((len(block) << 8) | HEADERS, flags | END_HEADERS, stream_id) + block)
            return
        chunks = [block[i : i + limit] for i in range(0, len(block), limit)]
        frames = [frame(HEADERS, flags, stream_id, chunks[0])]
        frames += [frame(CONTINUATION, 0, stream_id, chunk) for chunk in chunks[1:-1]]
        frames.append(frame(CONTINUATION, END_HEADERS, stream_id, chunks[-1]))
        self.write(b"".join(frames))

    def credit(self, size: int) -> None:
        """`size` request bytes are gone from the gateway (upstream or dropped): the client may send more."""
        if size <= 0:
            return
        self._uncredited += size
        if self._uncredited >= _CONNECTION_CREDIT_BATCH:
            self.recv_window += self._uncredited
            self.write(frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", self._uncredited)))
            self._uncredited = 0

    def stream_closed(self) -> None:
        if self.going_away and not self.streams:
            self.close()

    def go_away(self) -> None:
        """Graceful: streams up to the last one seen run to their end; the client opens no new ones."""
        if not self.going_away and self.transport is not None:
            self.going_away = True
            self.write(frame(GOAWAY, 0, 0, struct.pack(">II", self.last_stream_id, NO_ERROR)))
        self.stream_closed()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def abort_calls(self) -> None:
        for call in list(self.streams.values()):
            call.abort()
        self.close()

    def _fail(self, code: int, message: str) -> None:
        logger.info("native gRPC client broke the protocol (HTTP/2 error code %d): %s", code, message)
        self.write(frame(GOAWAY, 0, 0, struct.pack(">II", self.last_stream_id, code) + message.encode()[:256]))
        for call in list(self.streams.values()):
            call.on_reset()
        self.close()
