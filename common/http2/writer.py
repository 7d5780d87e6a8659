"""HTTP/2 frames as bytes, for both sides: what a connection writes besides DATA.

Pure functions; the connection owns the transport and the windows. A header block longer than
the peer's SETTINGS_MAX_FRAME_SIZE goes out as HEADERS plus CONTINUATION frames, all in one
write so that nothing can come between them (RFC 9113 section 4.3).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

from common.http2.codes import ErrorCode, Flag, FrameType, Setting
from common.http2.frames import CONTINUATION, END_HEADERS, END_STREAM, FRAME_HEADER, HEADERS, frame

__all__ = ["SETTINGS_ACK", "goaway", "header_frames", "ping_ack", "rst_stream", "settings", "window_update"]

_UINT32 = struct.Struct(">I")
_GOAWAY = struct.Struct(">II")

SETTINGS_ACK = frame(FrameType.SETTINGS, Flag.ACK, 0)
# Written once a call or more often: plain ints, not IntEnum members (see codes.py).
_WINDOW_UPDATE = int(FrameType.WINDOW_UPDATE)
_RST_STREAM = int(FrameType.RST_STREAM)


def header_frames(stream_id: int, block: bytes, *, end_stream: bool, max_frame: int) -> bytes:
    """HEADERS (with END_STREAM when `end_stream`), split into CONTINUATION frames past `max_frame`."""
    flags = END_STREAM if end_stream else 0
    if len(block) <= max_frame:
        return FRAME_HEADER.pack((len(block) << 8) | HEADERS, flags | END_HEADERS, stream_id) + block
    chunks = [block[i : i + max_frame] for i in range(0, len(block), max_frame)]
    frames = [frame(HEADERS, flags, stream_id, chunks[0])]
    frames += [frame(CONTINUATION, 0, stream_id, chunk) for chunk in chunks[1:-1]]
    frames.append(frame(CONTINUATION, END_HEADERS, stream_id, chunks[-1]))
    return b"".join(frames)


def settings(values: Iterable[tuple[Setting, int]]) -> bytes:
    return frame(FrameType.SETTINGS, 0, 0, b"".join(struct.pack(">HI", key, value) for key, value in values))


def window_update(stream_id: int, increment: int) -> bytes:
    return frame(_WINDOW_UPDATE, 0, stream_id, _UINT32.pack(increment))


def rst_stream(stream_id: int, code: ErrorCode) -> bytes:
    return frame(_RST_STREAM, 0, stream_id, _UINT32.pack(code))


def goaway(last_stream_id: int, code: ErrorCode, debug: bytes = b"") -> bytes:
    return frame(FrameType.GOAWAY, 0, 0, _GOAWAY.pack(last_stream_id, code) + debug)


def ping_ack(payload: bytes) -> bytes:
    return frame(FrameType.PING, Flag.ACK, 0, payload)
