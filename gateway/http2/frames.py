"""HTTP/2 frame layout (RFC 9113 sections 4 and 6): types, flags, settings, error codes, the frame header.

Shared by the upstream client (gateway.upstream.http2) and the ingress server (gateway.ingress.server),
so both sides read and write frames the same way.
"""

from __future__ import annotations

import struct
from typing import Final

__all__ = [
    "ACK",
    "CANCEL",
    "COMPRESSION_ERROR",
    "CONTINUATION",
    "DATA",
    "DEFAULT_WINDOW",
    "END_HEADERS",
    "END_STREAM",
    "ENHANCE_YOUR_CALM",
    "FLOW_CONTROL_ERROR",
    "FRAME_HEADER",
    "FRAME_SIZE_ERROR",
    "GOAWAY",
    "HEADERS",
    "INTERNAL_ERROR",
    "MAX_MAX_FRAME",
    "MAX_STREAM_ID",
    "MAX_WINDOW",
    "MIN_MAX_FRAME",
    "NO_ERROR",
    "PADDED",
    "PING",
    "PREFACE",
    "PRIORITY",
    "PRIORITY_FLAG",
    "PROTOCOL_ERROR",
    "PUSH_PROMISE",
    "REFUSED_STREAM",
    "RST_STREAM",
    "SETTINGS",
    "SETTINGS_ENABLE_PUSH",
    "SETTINGS_HEADER_TABLE_SIZE",
    "SETTINGS_INITIAL_WINDOW_SIZE",
    "SETTINGS_MAX_CONCURRENT_STREAMS",
    "SETTINGS_MAX_FRAME_SIZE",
    "SETTINGS_MAX_HEADER_LIST_SIZE",
    "STREAM_CLOSED",
    "WINDOW_UPDATE",
    "Gatherer",
    "frame",
    "frame_need",
]

PREFACE: Final = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = range(10)
END_STREAM: Final = 0x1
ACK: Final = 0x1
END_HEADERS: Final = 0x4
PADDED: Final = 0x8
PRIORITY_FLAG: Final = 0x20

SETTINGS_HEADER_TABLE_SIZE, SETTINGS_ENABLE_PUSH, SETTINGS_MAX_CONCURRENT_STREAMS = 1, 2, 3
SETTINGS_INITIAL_WINDOW_SIZE, SETTINGS_MAX_FRAME_SIZE, SETTINGS_MAX_HEADER_LIST_SIZE = 4, 5, 6

# Error codes (RFC 9113 section 7).
NO_ERROR: Final = 0x0
PROTOCOL_ERROR: Final = 0x1
INTERNAL_ERROR: Final = 0x2
FLOW_CONTROL_ERROR: Final = 0x3
STREAM_CLOSED: Final = 0x5
FRAME_SIZE_ERROR: Final = 0x6
REFUSED_STREAM: Final = 0x7
CANCEL: Final = 0x8
COMPRESSION_ERROR: Final = 0x9
ENHANCE_YOUR_CALM: Final = 0xB

FRAME_HEADER: Final = struct.Struct(">IBI")  # (length << 8 | type), flags, stream id
DEFAULT_WINDOW: Final = 65535
MIN_MAX_FRAME: Final = 16384  # SETTINGS_MAX_FRAME_SIZE may be neither below this...
MAX_MAX_FRAME: Final = 2**24 - 1  # ...nor above this
MAX_STREAM_ID: Final = 2**31 - 1
MAX_WINDOW: Final = 2**31 - 1


def frame(kind: int, flags: int, stream_id: int, payload: bytes | memoryview = b"") -> bytes:
    return FRAME_HEADER.pack((len(payload) << 8) | kind, flags, stream_id) + payload


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


def frame_need(buffer: bytes, offset: int) -> int:
    """Bytes the frame starting at `offset` takes, header included (9 while its header is incomplete)."""
    if len(buffer) - offset < 9:
        return 9
    return 9 + int.from_bytes(buffer[offset : offset + 3], "big")
