"""What both ends of an HTTP/2 connection do the same way: the transport, the peer's settings, sending windows.

`Connection` is the asyncio.Protocol under `ClientConnection` and `ServerConnection`. It feeds what
arrives to a `FrameReader` (every frame check lives there), answers SETTINGS and PING, keeps the
peer's SETTINGS_MAX_FRAME_SIZE and SETTINGS_INITIAL_WINDOW_SIZE and the connection's send window,
writes DATA within the windows (`write_data`, `send_data`: the one DATA send loop, for the client's
request bytes and the server's response messages alike), wakes the streams that wait for window,
and turns a `ProtocolError` (or a bug of its own) into `fail`. Streams, headers, DATA received,
RST_STREAM and GOAWAY mean different things to a client and a server: the subclasses handle those.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Final, Generic, Protocol, TypeVar, cast

import hpack

from common.corking import CorkedTransport
from common.http2.codes import ErrorCode, Setting
from common.http2.frames import DATA, DEFAULT_WINDOW, END_STREAM, FRAME_HEADER, MAX_WINDOW, MIN_MAX_FRAME
from common.http2.headers import HeaderBlockDecoder, HeaderList
from common.http2.reader import FrameReader, ProtocolError
from common.http2.writer import SETTINGS_ACK, header_frames, ping_ack, rst_stream

__all__ = ["MAX_HEADER_LIST", "Connection", "WindowedStream"]

logger = logging.getLogger(__name__)

# The largest header block, and decoded header list, either end accepts and announces as
# SETTINGS_MAX_HEADER_LIST_SIZE: hpack.Decoder's own cap on a decoded list, which HeaderBlockDecoder keeps.
MAX_HEADER_LIST: Final = 64 * 1024


class WindowedStream(Protocol):
    """What the connection needs of any stream: its send window, and a way to say it may have opened."""

    id: int
    send_window: int  # what we may still send the peer on this stream
    window_waiter: asyncio.Future[None] | None  # set while `send_data` waits for window; `wake` resolves it

    @property
    def done_sending(self) -> bool:
        """No more DATA is wanted on this stream (it ended, was reset, or was answered)."""
        ...

    def wake(self) -> None: ...


StreamT = TypeVar("StreamT", bound=WindowedStream)


class Connection(asyncio.Protocol, Generic[StreamT]):
    """`server`: which end this is. `max_frame`: the SETTINGS_MAX_FRAME_SIZE this end announces."""

    def __init__(self, *, server: bool, max_frame: int) -> None:
        self.loop = asyncio.get_running_loop()
        self.transport: CorkedTransport | None = None
        self.streams: dict[int, StreamT] = {}
        self.send_waiters: set[StreamT] = set()  # streams waiting for the connection's send window
        self.peer_max_frame = MIN_MAX_FRAME
        self.peer_initial_window = DEFAULT_WINDOW
        self.send_window = DEFAULT_WINDOW  # what we may still send the peer on the connection
        self.reader = FrameReader(self, server=server, max_frame=max_frame, max_header_block=MAX_HEADER_LIST)
        # Response (client) or request (server) header blocks repeat call after call: decoded once, cached.
        self._decoder = HeaderBlockDecoder()

    # --- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Frames written during one loop iteration (often several calls' worth) leave in one send().
        # uvloop's transports do not subclass asyncio's, hence the cast.
        self.transport = CorkedTransport(cast(asyncio.Transport, transport), self.loop)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            # Each call is a few small frames written at once: never hold them back for Nagle.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        if self.transport is None:
            return
        try:
            self.reader.feed(data)
        except ProtocolError as exc:
            self.fail(exc.code, str(exc))
        except Exception:
            logger.exception("HTTP/2 connection failed inside the gateway")
            self.fail(ErrorCode.INTERNAL_ERROR, "internal error")

    # --- frames both ends handle alike (FrameHandler) ----------------------------------------

    def on_settings(self, settings: list[tuple[int, int]]) -> None:
        for key, value in settings:
            if key == Setting.INITIAL_WINDOW_SIZE:
                delta = value - self.peer_initial_window
                self.peer_initial_window = value
                for stream in list(self.streams.values()):
                    stream.send_window += delta
                    if delta > 0:
                        stream.wake()
            elif key == Setting.MAX_FRAME_SIZE:
                self.peer_max_frame = value
            else:
                self.on_setting(key, value)
        self.write(SETTINGS_ACK)

    def decode_headers(self, block: bytes) -> HeaderList:
        """A header block, HPACK-decoded; a block that does not decode breaks the connection."""
        try:
            return self._decoder.decode(block)
        except hpack.OversizedHeaderListError:
            raise ProtocolError(ErrorCode.ENHANCE_YOUR_CALM, "header list too large") from None
        except Exception as exc:  # hpack raises several types; all leave the decoder unusable
            raise ProtocolError(ErrorCode.COMPRESSION_ERROR, f"undecodable header block: {exc}") from None

    def on_setting(self, key: int, value: int) -> None:
        """A setting besides the window and frame sizes: a subclass's business."""

    def on_ping(self, payload: bytes) -> None:
        self.write(ping_ack(payload))

    def on_window_update(self, stream_id: int, increment: int) -> None:
        if stream_id == 0:
            if increment == 0:
                raise ProtocolError(ErrorCode.PROTOCOL_ERROR, "WINDOW_UPDATE of 0")
            self.send_window += increment
            if self.send_window > MAX_WINDOW:
                raise ProtocolError(ErrorCode.FLOW_CONTROL_ERROR, "connection window above 2^31-1")
            # Cleared first: a sender that finds the window short again re-registers while being woken.
            waiting = list(self.send_waiters)
            self.send_waiters.clear()
            for waiter in waiting:
                waiter.wake()
            return
        stream = self.streams.get(stream_id)
        if stream is None:
            return  # a closed stream: updates may still be in flight
        if increment == 0 or stream.send_window + increment > MAX_WINDOW:
            # A stream error (RFC 9113 6.9.1): that stream ends, the connection carries on.
            code = ErrorCode.PROTOCOL_ERROR if increment == 0 else ErrorCode.FLOW_CONTROL_ERROR
            self.write(rst_stream(stream_id, code))
            self.stream_error(stream, code)
            return
        stream.send_window += increment
        stream.wake()

    # --- for the subclasses -----------------------------------------------------------------

    def on_data(self, stream_id: int, data: bytes, flow_length: int, end_stream: bool) -> None:
        raise NotImplementedError

    def on_headers(self, stream_id: int, block: bytes, end_stream: bool) -> None:
        raise NotImplementedError

    def on_rst_stream(self, stream_id: int, code: int) -> None:
        raise NotImplementedError

    def on_goaway(self, last_stream_id: int, code: int, debug: bytes) -> None:
        raise NotImplementedError

    def stream_error(self, stream: StreamT, code: ErrorCode) -> None:
        """The peer broke the protocol on `stream` alone; RST_STREAM with `code` has gone out."""
        raise NotImplementedError

    def fail(self, code: ErrorCode, message: str) -> None:
        """The peer broke the protocol (or the gateway failed): GOAWAY with `code`, then close."""
        raise NotImplementedError

    def write(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)

    def write_data(self, stream: StreamT, data: bytes | memoryview, end_stream: bool) -> int:
        """DATA on `stream`: as much of `data` as both send windows take now, in frames no larger than
        the peer allows, END_STREAM with the last byte. Returns how many bytes went out; when not all
        did, `stream.wake()` is called once the windows may have opened."""
        size = len(data)
        flags = END_STREAM if end_stream else 0
        if (size <= stream.send_window and size <= self.send_window and size <= self.peer_max_frame) or not size:
            # The usual case, one frame, not copied first. An empty frame (END_STREAM alone) needs no
            # window, even a negative one.
            stream.send_window -= size
            self.send_window -= size
            self.write(FRAME_HEADER.pack((size << 8) | DATA, flags, stream.id) + data)
            return size
        view = memoryview(data)  # slices of a view copy nothing: a large body goes out in O(n)
        sent = 0
        while sent < size:
            step = min(size - sent, self.peer_max_frame, stream.send_window, self.send_window)
            if step <= 0:
                if self.send_window <= 0:
                    # The stream's own WINDOW_UPDATE wakes it; the connection's wakes only those listed.
                    self.send_waiters.add(stream)
                return sent
            stream.send_window -= step
            self.send_window -= step
            end = sent + step
            self.write(FRAME_HEADER.pack((step << 8) | DATA, flags if end == size else 0, stream.id) + view[sent:end])
            sent = end
        return sent

    async def send_data(self, stream: StreamT, data: bytes | memoryview, end_stream: bool) -> None:
        """All of `data` on `stream` (see `write_data`), waiting for window as long as the peer has not
        read what it was sent; the rest is dropped once the stream is `done_sending`."""
        if stream.done_sending:
            return
        sent = self.write_data(stream, data, end_stream)
        if sent == len(data):
            return
        view = memoryview(data)[sent:]
        while True:
            # The peer has not read what it was sent: wait for its WINDOW_UPDATE. Meanwhile the
            # stream's owner produces nothing more, so the peer's pace bounds what the gateway holds.
            waiter = stream.window_waiter = self.loop.create_future()
            try:
                await waiter
            finally:
                stream.window_waiter = None
            if stream.done_sending:
                return
            sent = self.write_data(stream, view, end_stream)
            if sent == len(view):
                return
            view = view[sent:]

    def write_headers(self, stream_id: int, block: bytes, *, end_stream: bool) -> None:
        self.write(header_frames(stream_id, block, end_stream=end_stream, max_frame=self.peer_max_frame))

    def close_transport(self) -> None:
        """Close the connection; what has arrived and is not read yet is dropped."""
        self.reader.stopped = True
        if self.transport is not None:
            self.transport.close()
