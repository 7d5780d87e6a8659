"""HTTP/2 numbers by name (RFC 9113 sections 6, 6.5.2 and 7): frame types, flags, settings, error codes.

IntEnums, so a value read off the wire compares equal to its member and a member goes into
`struct.pack` as it is. They cost time on a per-frame path, though: reading a member through its
class is an Enum attribute lookup (~6x a module global), and comparing an int with a member
misses CPython's int fast path (~+20 ns, some 30 times per call). So the reader, the writer and
frames.py bind the codes they test for every frame to module-level plain ints, once, at import.
"""

from __future__ import annotations

import enum

import grpc

__all__ = ["HTTP_TO_GRPC", "ErrorCode", "Flag", "FrameType", "Setting"]


class FrameType(enum.IntEnum):
    DATA = 0x0
    HEADERS = 0x1
    PRIORITY = 0x2
    RST_STREAM = 0x3
    SETTINGS = 0x4
    PUSH_PROMISE = 0x5
    PING = 0x6
    GOAWAY = 0x7
    WINDOW_UPDATE = 0x8
    CONTINUATION = 0x9


class Flag(enum.IntEnum):
    """Frame flags. The same bit means different things on different frame types (ACK is END_STREAM's)."""

    END_STREAM = 0x1  # DATA, HEADERS
    ACK = 0x1  # SETTINGS, PING (an alias of END_STREAM: the same bit)
    END_HEADERS = 0x4  # HEADERS, CONTINUATION
    PADDED = 0x8  # DATA, HEADERS
    PRIORITY = 0x20  # HEADERS


class Setting(enum.IntEnum):
    HEADER_TABLE_SIZE = 0x1
    ENABLE_PUSH = 0x2
    MAX_CONCURRENT_STREAMS = 0x3
    INITIAL_WINDOW_SIZE = 0x4
    MAX_FRAME_SIZE = 0x5
    MAX_HEADER_LIST_SIZE = 0x6


class ErrorCode(enum.IntEnum):
    NO_ERROR = 0x0
    PROTOCOL_ERROR = 0x1
    INTERNAL_ERROR = 0x2
    FLOW_CONTROL_ERROR = 0x3
    SETTINGS_TIMEOUT = 0x4
    STREAM_CLOSED = 0x5
    FRAME_SIZE_ERROR = 0x6
    REFUSED_STREAM = 0x7
    CANCEL = 0x8
    COMPRESSION_ERROR = 0x9
    CONNECT_ERROR = 0xA
    ENHANCE_YOUR_CALM = 0xB
    INADEQUATE_SECURITY = 0xC
    HTTP_1_1_REQUIRED = 0xD


# grpc/grpc doc/http-grpc-status-mapping.md: only for an upstream HTTP reply without grpc-status.
HTTP_TO_GRPC: dict[int, grpc.StatusCode] = {
    400: grpc.StatusCode.INTERNAL,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.UNIMPLEMENTED,
    429: grpc.StatusCode.UNAVAILABLE,
    502: grpc.StatusCode.UNAVAILABLE,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.UNAVAILABLE,
}
