"""upf-mux.v1 on the wire: frame types, error codes, close codes, and the layouts of each frame's payload.

gateway/websocket/MUX.md is the specification; this module is its vocabulary and byte layouts,
shared by the endpoint (mux.py and the modules it is built from) and the tests. All integers are
unsigned and big-endian (network byte order).

    frame   = type u8 | flags u8 | stream id u32 | payload length u32 | payload
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator
from enum import IntEnum
from typing import NamedTuple

__all__ = [
    "CLIENT_FRAMES",
    "CLOSE_INTERNAL",
    "CLOSE_PROTOCOL_ERROR",
    "CLOSE_TOO_BIG",
    "HEADER",
    "MAX_WINDOW",
    "OPEN_FIXED",
    "SUBPROTOCOL",
    "ErrorCode",
    "FrameType",
    "MuxProtocolError",
    "Open",
    "Settings",
    "encode",
    "encode_block",
    "frame_name",
    "goaway",
    "parse_increment",
    "parse_open",
    "settings",
    "split_message",
    "trailers",
    "window_update",
]

SUBPROTOCOL = "upf-mux.v1"
HEADER = struct.Struct(">BBII")  # type, flags, stream id, payload length
OPEN_FIXED = struct.Struct(">IIH")  # initial response window, timeout (ms), path length
_SETTINGS = struct.Struct(">HIIIII")
_GOAWAY = struct.Struct(">IH")
_TRAILERS = struct.Struct(">HH")  # status, message length
_U32 = struct.Struct(">I")
MAX_WINDOW = 2**31 - 1  # a window above this is a flow-control error, as in HTTP/2
VERSION = 1

# WebSocket close codes (RFC 6455 7.4.1) the server ends a socket with, besides 1001 (open_sockets.py).
CLOSE_PROTOCOL_ERROR = 1002  # after GOAWAY with the error code
CLOSE_TOO_BIG = 1009  # a WebSocket message over the limit
CLOSE_INTERNAL = 1011  # the gateway failed


class FrameType(IntEnum):
    SETTINGS = 0x01  # server -> client, stream 0, the first frame on the socket
    OPEN = 0x02  # client -> server: starts a call on a new stream id
    DATA = 0x03  # both: gRPC length-prefixed message bytes of one call, cut anywhere
    HALF_CLOSE = 0x04  # client -> server: the call's request stream is complete
    CANCEL = 0x05  # client -> server: abandon the call
    HEADERS = 0x06  # server -> client: response metadata, at most once, before any DATA
    TRAILERS = 0x07  # server -> client: status, message, trailing metadata; the call's last frame
    WINDOW_UPDATE = 0x08  # both: more flow-control credit for a stream (or, server -> client, stream 0)
    GOAWAY = 0x09  # server -> client, stream 0: no new calls; an error code says why


CLIENT_FRAMES = frozenset(
    (FrameType.OPEN, FrameType.DATA, FrameType.HALF_CLOSE, FrameType.CANCEL, FrameType.WINDOW_UPDATE)
)


def frame_name(kind: int) -> str:
    """A frame type for a message, known or not."""
    try:
        return FrameType(kind).name
    except ValueError:
        return f"0x{kind:02x} (unknown)"


class ErrorCode(IntEnum):
    NO_ERROR = 0  # a graceful drain: calls in flight finish, then close 1001
    PROTOCOL_ERROR = 1
    FLOW_CONTROL_ERROR = 2
    FRAME_SIZE_ERROR = 3
    INTERNAL_ERROR = 4


class MuxProtocolError(Exception):
    """The client broke the protocol: the socket ends with GOAWAY, then close 1002 with the reason."""

    def __init__(self, reason: str, code: ErrorCode = ErrorCode.PROTOCOL_ERROR) -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code


class Settings(NamedTuple):
    max_streams: int  # calls one socket may have open at once
    max_message_bytes: int  # largest gRPC message, either way
    stream_window: int  # request DATA bytes a new stream may send before a WINDOW_UPDATE
    connection_window: int  # request DATA bytes the socket may have unacknowledged, all streams together
    max_frame_bytes: int  # largest payload of any one frame


class Open(NamedTuple):
    window: int  # response DATA bytes the client accepts before its first WINDOW_UPDATE
    timeout: float | None  # seconds; None for no deadline
    path: str  # /package.Service/Method
    block: bytes  # the request metadata as `name: value\r\n` lines


def encode(kind: FrameType, stream_id: int, payload: bytes | memoryview = b"", flags: int = 0) -> bytes:
    return HEADER.pack(kind, flags, stream_id, len(payload)) + payload


def encode_block(lines: Iterable[tuple[bytes, bytes]]) -> bytes:
    return b"".join(name + b": " + value + b"\r\n" for name, value in lines)


def settings(values: Settings) -> bytes:
    return encode(FrameType.SETTINGS, 0, _SETTINGS.pack(VERSION, *values))


def window_update(stream_id: int, increment: int) -> bytes:
    return encode(FrameType.WINDOW_UPDATE, stream_id, _U32.pack(increment))


def trailers(stream_id: int, status: int, message: bytes, metadata: Iterable[tuple[bytes, bytes]]) -> bytes:
    """`message` is UTF-8 text, not percent-encoded: the mux has no HTTP header to escape it for."""
    payload = _TRAILERS.pack(status, len(message)) + message + encode_block(metadata)
    return encode(FrameType.TRAILERS, stream_id, payload)


def goaway(last_stream_id: int, code: ErrorCode, reason: str) -> bytes:
    return encode(FrameType.GOAWAY, 0, _GOAWAY.pack(last_stream_id, code) + reason.encode())


def split_message(data: memoryview, max_frame: int) -> Iterator[tuple[int, int, memoryview]]:
    """The frames of one WebSocket message, as (type, stream id, payload), each checked against the
    message's end and `max_frame`; what breaks the layout raises MuxProtocolError."""
    offset, size = 0, len(data)
    if not size:
        raise MuxProtocolError("an empty WebSocket message (it must hold at least one frame)")
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
        yield kind, stream_id, data[start : start + length]
        offset = start + length


def parse_open(payload: memoryview) -> Open:
    if len(payload) < OPEN_FIXED.size:
        raise MuxProtocolError(f"OPEN payload of {len(payload)} bytes is shorter than its fixed {OPEN_FIXED.size}")
    window, timeout_ms, path_length = OPEN_FIXED.unpack_from(payload)
    end = OPEN_FIXED.size + path_length
    if end > len(payload):
        raise MuxProtocolError(f"OPEN path length {path_length} runs past the end of the frame")
    if window > MAX_WINDOW:
        raise MuxProtocolError(f"OPEN window {window} is larger than {MAX_WINDOW}", ErrorCode.FLOW_CONTROL_ERROR)
    path = bytes(payload[OPEN_FIXED.size : end]).decode("latin-1")
    return Open(window, timeout_ms / 1000 if timeout_ms else None, path, bytes(payload[end:]))


def parse_increment(payload: memoryview) -> int:
    if len(payload) != _U32.size:
        raise MuxProtocolError(f"WINDOW_UPDATE payload is {len(payload)} bytes, not 4", ErrorCode.FRAME_SIZE_ERROR)
    increment: int = _U32.unpack(payload)[0]
    if not 0 < increment <= MAX_WINDOW:
        raise MuxProtocolError(f"WINDOW_UPDATE increment {increment} is not between 1 and {MAX_WINDOW}")
    return increment
