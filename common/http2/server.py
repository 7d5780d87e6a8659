"""The server side of HTTP/2 (RFC 9113, h2c with prior knowledge) for the native gRPC ingress.

`ServerConnection` is one asyncio.Protocol per client connection: it reads and checks frames
(through the reader both ends share), keeps the flow-control windows and settings, and writes
frames. What a stream carries is not its business: request headers for a new stream go to its
owner (`ServerOwner.start_stream`), which registers a `ServerStream` in `streams`; DATA, resets
and window updates for that stream are then handed to it.

A client that breaks the protocol gets GOAWAY with the error code and its connection closed;
other connections are untouched.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Generic, Protocol, TypeVar

from common.http2.codes import ErrorCode, Setting
from common.http2.connection import MAX_HEADER_LIST, Connection, WindowedStream
from common.http2.frames import DEFAULT_WINDOW
from common.http2.reader import ProtocolError
from common.http2.writer import goaway, rst_stream, settings, window_update

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
HEADER_TABLE_SIZE = 4096  # the protocol default: hpack.Decoder's own limit
# Window updates to the client go out in batches this large, not one per message.
_CONNECTION_CREDIT_BATCH = CONNECTION_WINDOW // 4
_OPENING = settings(
    (
        (Setting.HEADER_TABLE_SIZE, HEADER_TABLE_SIZE),
        (Setting.ENABLE_PUSH, 0),
        (Setting.MAX_CONCURRENT_STREAMS, MAX_CONCURRENT_STREAMS),
        (Setting.INITIAL_WINDOW_SIZE, STREAM_WINDOW),
        (Setting.MAX_FRAME_SIZE, MAX_FRAME),
        (Setting.MAX_HEADER_LIST_SIZE, MAX_HEADER_LIST),
    )
) + window_update(0, CONNECTION_WINDOW - DEFAULT_WINDOW)


class ServerStream(WindowedStream, Protocol):
    """What the connection needs of one client stream (the ingress's call), besides its send window."""

    request_ended: bool  # the client half-closed: its DATA is no longer wanted
    recv_window: int  # what the client may still send on this stream

    def on_data(self, data: bytes, end_stream: bool) -> None: ...
    def on_reset(self) -> None: ...  # the client reset the stream, or the connection is gone
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


class ServerConnection(Connection[ServerStream], Generic[OwnerT]):
    """One client connection: frames in, flow-control bookkeeping, frames out; streams belong to `server`."""

    def __init__(self, server: OwnerT) -> None:
        super().__init__(server=True, max_frame=MAX_FRAME)
        self.server = server
        self.last_stream_id = 0
        self.recv_window = CONNECTION_WINDOW  # what the client may still send us on the connection
        self._uncredited = 0
        self.going_away = False
        self.peer: tuple[str, int] | None = None  # the client's address, for rate-limit keys

    # --- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        self.peer = (str(peer[0]), int(peer[1])) if peer else None
        super().connection_made(transport)
        self.write(_OPENING)
        self.server.connection_opened(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        for call in list(self.streams.values()):
            call.on_reset()
        self.server.connection_closed(self)

    # --- frames (FrameHandler; SETTINGS, PING and WINDOW_UPDATE are Connection's) -----------

    def on_data(self, stream_id: int, data: bytes, flow_length: int, end_stream: bool) -> None:
        if stream_id > self.last_stream_id:
            raise ProtocolError(ErrorCode.PROTOCOL_ERROR, "DATA on an idle stream")
        self.recv_window -= flow_length
        if self.recv_window < 0:
            raise ProtocolError(ErrorCode.FLOW_CONTROL_ERROR, "client overran the connection window")
        call = self.streams.get(stream_id)
        if call is None or call.request_ended:
            # A stream already answered or reset: the bytes are dropped, and given back at once.
            self.credit(flow_length)
            return
        call.recv_window -= flow_length
        if call.recv_window < 0:
            self.credit(flow_length)
            self.write(rst_stream(stream_id, ErrorCode.FLOW_CONTROL_ERROR))
            call.on_reset()
            return
        self.credit(flow_length - len(data))  # padding never goes upstream
        call.on_data(data, end_stream)

    def on_headers(self, stream_id: int, block: bytes, end_stream: bool) -> None:
        headers = self.decode_headers(block)
        call = self.streams.get(stream_id)
        if call is not None:
            # Trailers from the client (gRPC clients send none): they can only end the request.
            if not end_stream:
                raise ProtocolError(ErrorCode.PROTOCOL_ERROR, "request trailers without END_STREAM")
            if not call.request_ended:
                call.on_data(b"", True)
            return
        if stream_id <= self.last_stream_id:
            raise ProtocolError(ErrorCode.STREAM_CLOSED, "HEADERS on a closed stream")
        if stream_id % 2 == 0:
            raise ProtocolError(ErrorCode.PROTOCOL_ERROR, "a client stream id must be odd")
        self.last_stream_id = stream_id
        if self.going_away or len(self.streams) >= MAX_CONCURRENT_STREAMS:
            # Never processed, so the client may safely retry it (on another connection).
            self.write(rst_stream(stream_id, ErrorCode.REFUSED_STREAM))
            return
        self.server.start_stream(self, stream_id, headers, end_stream)

    def on_rst_stream(self, stream_id: int, code: int) -> None:
        if stream_id > self.last_stream_id:
            raise ProtocolError(ErrorCode.PROTOCOL_ERROR, "RST_STREAM on an idle stream")
        call = self.streams.get(stream_id)
        if call is not None:
            call.on_reset()

    def on_goaway(self, last_stream_id: int, code: int, debug: bytes) -> None:
        # The client opens no more streams; the running ones finish, then the connection closes.
        self.going_away = True
        self.stream_closed()

    def stream_error(self, stream: ServerStream, code: ErrorCode) -> None:
        stream.on_reset()

    # --- used by calls and the server -------------------------------------------------------

    def credit(self, size: int) -> None:
        """`size` request bytes are gone from the gateway (upstream or dropped): the client may send more."""
        if size <= 0:
            return
        self._uncredited += size
        if self._uncredited >= _CONNECTION_CREDIT_BATCH:
            self.recv_window += self._uncredited
            self.write(window_update(0, self._uncredited))
            self._uncredited = 0

    def stream_closed(self) -> None:
        if self.going_away and not self.streams:
            self.close_transport()

    def go_away(self) -> None:
        """Graceful: streams up to the last one seen run to their end; the client opens no new ones."""
        if not self.going_away and self.transport is not None:
            self.going_away = True
            self.write(goaway(self.last_stream_id, ErrorCode.NO_ERROR))
        self.stream_closed()

    def abort_calls(self) -> None:
        for call in list(self.streams.values()):
            call.abort()
        self.close_transport()

    def fail(self, code: ErrorCode, message: str) -> None:
        logger.info("native gRPC client broke the protocol (HTTP/2 error code %d): %s", code, message)
        self.write(goaway(self.last_stream_id, code, message.encode()[:256]))
        for call in list(self.streams.values()):
            call.on_reset()
        self.close_transport()
