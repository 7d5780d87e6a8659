"""HTTP/2 frame layout (RFC 9113 sections 3.4, 4.1 and 6): the preface, the frame header, the limits, `frame()`.

The names below the limits are the codes that per-frame code (the reader, the proxy's DATA path)
tests or writes for every frame, as plain ints: an IntEnum member costs more on such a path (see
gateway/http2/codes.py). Everything else names codes by their enum.
"""

from __future__ import annotations

import struct
from typing import Final

from common.http2.codes import ErrorCode, Flag, FrameType

__all__ = [
    "CANCEL",
    "CONTINUATION",
    "DATA",
    "DEFAULT_WINDOW",
    "END_HEADERS",
    "END_STREAM",
    "FRAME_HEADER",
    "HEADERS",
    "MAX_MAX_FRAME",
    "MAX_STREAM_ID",
    "MAX_WINDOW",
    "MIN_MAX_FRAME",
    "NO_ERROR",
    "PADDED",
    "PREFACE",
    "PROTOCOL_ERROR",
    "RST_STREAM",
    "WINDOW_UPDATE",
    "frame",
]

PREFACE: Final = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
FRAME_HEADER: Final = struct.Struct(">IBI")  # (length << 8 | type), flags, stream id
DEFAULT_WINDOW: Final = 65535
MIN_MAX_FRAME: Final = 16384  # SETTINGS_MAX_FRAME_SIZE may be neither below this...
MAX_MAX_FRAME: Final = 2**24 - 1  # ...nor above this
MAX_STREAM_ID: Final = 2**31 - 1
MAX_WINDOW: Final = 2**31 - 1

DATA: Final = int(FrameType.DATA)
HEADERS: Final = int(FrameType.HEADERS)
RST_STREAM: Final = int(FrameType.RST_STREAM)
WINDOW_UPDATE: Final = int(FrameType.WINDOW_UPDATE)
CONTINUATION: Final = int(FrameType.CONTINUATION)
END_STREAM: Final = int(Flag.END_STREAM)
END_HEADERS: Final = int(Flag.END_HEADERS)
PADDED: Final = int(Flag.PADDED)
NO_ERROR: Final = int(ErrorCode.NO_ERROR)
PROTOCOL_ERROR: Final = int(ErrorCode.PROTOCOL_ERROR)
CANCEL: Final = int(ErrorCode.CANCEL)


def frame(kind: int, flags: int, stream_id: int, payload: bytes | memoryview = b"") -> bytes:
    """One frame, serialised: the 9-byte header, then `payload`."""
    return FRAME_HEADER.pack((len(payload) << 8) | kind, flags, stream_id) + payload
