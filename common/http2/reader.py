"""Reading HTTP/2 frames (RFC 9113 sections 3.4, 4 and 6), for the client and the server alike.

`FrameReader.feed` takes bytes as they arrive, gathers whole frames and checks everything that
does not depend on a connection's state: the preface (a server's reader), the frame size, the
stream a frame type may (not) use, fixed payload lengths, padding that must fit in its frame,
the priority fields of HEADERS, header blocks that CONTINUATION frames may not interrupt and that
may not grow past a cap, and the SETTINGS values that are errors whatever they change. What
passes goes to the handler's `on_*` methods with its padding and priority fields gone; what does
not raises `ProtocolError`: a connection error, to be answered with GOAWAY and this code.

Both sides get the same checks: a lax one on either side is a way to make it hold memory or
misread a stream (padding longer than its frame reads as a negative slice; an uncapped header
block grows without end).
"""

from __future__ import annotations

import struct
from typing import Protocol

from common.http2.codes import ErrorCode, Flag, FrameType, Setting
from common.http2.frames import (
    CONTINUATION,
    DATA,
    END_HEADERS,
    END_STREAM,
    FRAME_HEADER,
    MAX_MAX_FRAME,
    MAX_STREAM_ID,
    MAX_WINDOW,
    MIN_MAX_FRAME,
    PADDED,
    PREFACE,
)

__all__ = ["FrameHandler", "FrameReader", "Gatherer", "ProtocolError"]

# Every frame is tested against these: plain ints, not IntEnum members (see codes.py).
_HEADERS = int(FrameType.HEADERS)
_RST_STREAM = int(FrameType.RST_STREAM)
_SETTINGS = int(FrameType.SETTINGS)
_PING = int(FrameType.PING)
_WINDOW_UPDATE = int(FrameType.WINDOW_UPDATE)
_GOAWAY_FRAME = int(FrameType.GOAWAY)
_PUSH_PROMISE = int(FrameType.PUSH_PROMISE)
_PRIORITY = int(FrameType.PRIORITY)
_ACK = int(Flag.ACK)
_PRIORITY_FLAG = int(Flag.PRIORITY)
_WHOLE_HEADERS_MASK = END_HEADERS | PADDED | _PRIORITY_FLAG
_SETTING = struct.Struct(">HI")
_UINT32 = struct.Struct(">I")
_GOAWAY = struct.Struct(">II")


class ProtocolError(Exception):
    """The peer broke the protocol: GOAWAY with `code`, then the connection closes."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code


class FrameHandler(Protocol):
    """What a connection does with the frames that passed the reader's checks."""

    def on_data(self, stream_id: int, data: bytes, flow_length: int, end_stream: bool) -> None:
        """`data` without its padding; `flow_length` is what flow control counts (the whole payload)."""

    def on_headers(self, stream_id: int, block: bytes, end_stream: bool) -> None:
        """A whole header block (HEADERS and its CONTINUATIONs), not yet HPACK-decoded."""

    def on_rst_stream(self, stream_id: int, code: int) -> None: ...

    def on_settings(self, settings: list[tuple[int, int]]) -> None:
        """The peer's SETTINGS (not an ACK), in the order sent; the handler answers with the ACK."""

    def on_ping(self, payload: bytes) -> None:
        """A PING to answer (not an ACK)."""

    def on_goaway(self, last_stream_id: int, code: int, debug: bytes) -> None: ...

    def on_window_update(self, stream_id: int, increment: int) -> None:
        """`increment` may be 0: an error whose kind (stream or connection) the handler decides."""


class Gatherer:
    """Bytes that arrive in pieces, kept until `need` of them are there, without re-copying what waits.

    A large frame arrives in many reads: joining each read to everything before it would copy the
    frame over and over (O(n^2)); a bytearray grows in place instead.
    """

    __slots__ = ("_buffer", "need")

    def __init__(self) -> None:
        self._buffer = bytearray()
        self.need = 0

    def take(self, data: bytes) -> bytes | None:
        """What to parse now (whatever waited, then `data`), or None while fewer than `need` bytes are there."""
        if not self._buffer:
            return data
        self._buffer += data
        if len(self._buffer) < self.need:
            return None
        buffer = bytes(self._buffer)
        self._buffer.clear()
        return buffer

    def keep(self, buffer: bytes, offset: int, need: int) -> None:
        """Keep `buffer[offset:]` until `need` bytes are there."""
        self._buffer += memoryview(buffer)[offset:]
        self.need = need


class FrameReader:
    """One per connection. `server`: the peer is a client, which starts with the connection preface."""

    __slots__ = (
        "_gatherer",
        "_handler",
        "_header_block",
        "_max_frame",
        "_max_header_block",
        "_on_data",
        "_on_headers",
        "_preface",
        "stopped",
    )  # fmt: skip

    def __init__(self, handler: FrameHandler, *, server: bool, max_frame: int, max_header_block: int) -> None:
        self._handler = handler
        self._on_data = handler.on_data  # bound once: DATA and HEADERS are most of the frames
        self._on_headers = handler.on_headers
        self._preface = not server  # True once it has been read (a client's reader expects none)
        self._max_frame = max_frame  # what this side announced as SETTINGS_MAX_FRAME_SIZE
        self._max_header_block = max_header_block
        self._gatherer = Gatherer()
        self._header_block: tuple[int, int, bytearray] | None = None  # stream, flags, fragments so far
        # Set by the connection when it closes: the rest of what has arrived is not read.
        self.stopped = False

    def feed(self, data: bytes) -> None:
        """Read the frames `data` completes (keeping a partial one for later); raises ProtocolError."""
        if self.stopped:
            return
        buffer = self._gatherer.take(data)
        if buffer is None:
            return  # part of a frame (or of the preface): more to come
        offset, size = 0, len(buffer)
        if not self._preface:
            if size < len(PREFACE):
                if not PREFACE.startswith(buffer):
                    raise ProtocolError(ErrorCode.PROTOCOL_ERROR, "not an HTTP/2 connection preface")
                self._gatherer.keep(buffer, 0, len(PREFACE))
                return
            if not buffer.startswith(PREFACE):
                raise ProtocolError(ErrorCode.PROTOCOL_ERROR, "not an HTTP/2 connection preface")
            self._preface = True
            offset = len(PREFACE)
        max_frame, max_header_block = self._max_frame, self._max_header_block
        while size - offset >= 9:
            head, flags, stream_id = FRAME_HEADER.unpack_from(buffer, offset)
            length = head >> 8
            if length > max_frame:
                raise ProtocolError(
                    ErrorCode.FRAME_SIZE_ERROR, f"frame of {length} bytes exceeds SETTINGS_MAX_FRAME_SIZE {max_frame}"
                )
            end = offset + 9 + length
            if end > size:
                break
            kind = head & 0xFF
            payload = buffer[offset + 9 : end]
            offset = end
            stream_id &= MAX_STREAM_ID
            # The frames of every call, inline: DATA, and a header block in one HEADERS frame.
            if kind == DATA and stream_id and self._header_block is None:
                self._on_data(
                    stream_id, _unpad(payload) if flags & PADDED else payload, length, bool(flags & END_STREAM)
                )
            elif (
                kind == _HEADERS
                and flags & _WHOLE_HEADERS_MASK == END_HEADERS  # neither padded nor with a priority
                and stream_id
                and self._header_block is None
                and length <= max_header_block
            ):
                self._on_headers(stream_id, payload, bool(flags & END_STREAM))
            else:
                self._frame(kind, flags, stream_id, payload)
            if self.stopped:
                return
        if offset < size:
            need = 9 if size - offset < 9 else 9 + int.from_bytes(buffer[offset : offset + 3], "big")
            self._gatherer.keep(buffer, offset, need)

    def _frame(self, kind: int, flags: int, stream_id: int, payload: bytes) -> None:
        block = self._header_block
        if block is not None and (kind != CONTINUATION or stream_id != block[0]):
            raise ProtocolError(ErrorCode.PROTOCOL_ERROR, "header block interrupted")
        handler = self._handler
        if kind == DATA:
            if stream_id == 0:
                raise ProtocolError(ErrorCode.PROTOCOL_ERROR, "DATA on stream 0")
            data = _unpad(payload) if flags & PADDED else payload
            self._on_data(stream_id, data, len(payload), bool(flags & END_STREAM))
        elif kind == _HEADERS:
            self._headers(flags, stream_id, payload)
        elif kind == _WINDOW_UPDATE:
            if len(payload) != 4:
                raise ProtocolError(ErrorCode.FRAME_SIZE_ERROR, "WINDOW_UPDATE is 4 bytes")
            handler.on_window_update(stream_id, _UINT32.unpack(payload)[0] & MAX_WINDOW)
        elif kind == CONTINUATION:
            if block is None:
                raise ProtocolError(ErrorCode.PROTOCOL_ERROR, "CONTINUATION without HEADERS")
            fragments = block[2]
            fragments += payload
            if len(fragments) > self._max_header_block:
                raise ProtocolError(ErrorCode.ENHANCE_YOUR_CALM, f"header block over {self._max_header_block} bytes")
            if flags & END_HEADERS:
                self._header_block = None
                handler.on_headers(stream_id, bytes(fragments), bool(block[1] & END_STREAM))
        elif kind == _RST_STREAM:
            if stream_id == 0:
                raise ProtocolError(ErrorCode.PROTOCOL_ERROR, "RST_STREAM on stream 0")
            if len(payload) != 4:
                raise ProtocolError(ErrorCode.FRAME_SIZE_ERROR, "RST_STREAM is 4 bytes")
            handler.on_rst_stream(stream_id, _UINT32.unpack(payload)[0])
        elif kind == _SETTINGS:
            if stream_id != 0:
                raise ProtocolError(ErrorCode.PROTOCOL_ERROR, "SETTINGS on a stream")
            if flags & _ACK:
                if payload:
                    raise ProtocolError(ErrorCode.FRAME_SIZE_ERROR, "SETTINGS ACK with a payload")
            else:
                handler.on_settings(_settings(payload))
        elif kind == _PING:
            if stream_id != 0 or len(payload) != 8:
                code = ErrorCode.PROTOCOL_ERROR if stream_id else ErrorCode.FRAME_SIZE_ERROR
                raise ProtocolError(code, "malformed PING")
            if not flags & _ACK:
                handler.on_ping(payload)
        elif kind == _GOAWAY_FRAME:
            if stream_id != 0 or len(payload) < 8:
                raise ProtocolError(ErrorCode.PROTOCOL_ERROR, "malformed GOAWAY")
            last_stream_id, code = _GOAWAY.unpack_from(payload)
            handler.on_goaway(last_stream_id & MAX_STREAM_ID, code, payload[8:])
        elif kind == _PUSH_PROMISE:
            raise ProtocolError(ErrorCode.PROTOCOL_ERROR, "PUSH_PROMISE, but push is disabled")
        elif kind == _PRIORITY and (stream_id == 0 or len(payload) != 5):
            raise ProtocolError(ErrorCode.PROTOCOL_ERROR, "malformed PRIORITY")
        # PRIORITY frames and unknown frame types are ignored, as RFC 9113 requires.

    def _headers(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id == 0:
            raise ProtocolError(ErrorCode.PROTOCOL_ERROR, "HEADERS on stream 0")
        if flags & PADDED:
            payload = _unpad(payload)
        if flags & _PRIORITY_FLAG:
            if len(payload) < 5:
                raise ProtocolError(ErrorCode.FRAME_SIZE_ERROR, "HEADERS too short for its priority")
            payload = payload[5:]
        if len(payload) > self._max_header_block:
            raise ProtocolError(ErrorCode.ENHANCE_YOUR_CALM, f"header block over {self._max_header_block} bytes")
        if flags & END_HEADERS:
            self._handler.on_headers(stream_id, payload, bool(flags & END_STREAM))
        else:
            self._header_block = (stream_id, flags, bytearray(payload))


def _unpad(payload: bytes) -> bytes:
    """A PADDED frame's payload without its pad length byte and padding (RFC 9113 6.1)."""
    if not payload or payload[0] >= len(payload):
        raise ProtocolError(ErrorCode.PROTOCOL_ERROR, "padding longer than the frame")
    return payload[1 : len(payload) - payload[0]]


def _settings(payload: bytes) -> list[tuple[int, int]]:
    if len(payload) % 6:
        raise ProtocolError(ErrorCode.FRAME_SIZE_ERROR, "SETTINGS length is not a multiple of 6")
    settings: list[tuple[int, int]] = [_SETTING.unpack_from(payload, offset) for offset in range(0, len(payload), 6)]
    for key, value in settings:
        if key == Setting.INITIAL_WINDOW_SIZE and value > MAX_WINDOW:
            raise ProtocolError(ErrorCode.FLOW_CONTROL_ERROR, "SETTINGS_INITIAL_WINDOW_SIZE too large")
        if key == Setting.MAX_FRAME_SIZE and not MIN_MAX_FRAME <= value <= MAX_MAX_FRAME:
            raise ProtocolError(ErrorCode.PROTOCOL_ERROR, "SETTINGS_MAX_FRAME_SIZE out of range")
        if key == Setting.ENABLE_PUSH and value > 1:
            raise ProtocolError(ErrorCode.PROTOCOL_ERROR, "SETTINGS_ENABLE_PUSH must be 0 or 1")
    return settings
