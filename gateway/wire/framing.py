"""gRPC length-prefixed framing (grpc/grpc doc/PROTOCOL-HTTP2.md, PROTOCOL-WEB.md).

Every message is `flags(1) | length(4, big endian) | payload`. Flag 0x01 marks a compressed payload;
in gRPC-Web, flag 0x80 marks the trailer frame, whose payload is an HTTP/1-style header block. No
other bit is defined: a request frame with any other flag is refused (`check_request_flags`), as
grpc-go refuses it, rather than forwarded to a server that might read it as something else.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

from gateway.errors import MalformedMessage, MessageTooLarge

__all__ = [
    "COMPRESSED_FLAG",
    "PREFIX",
    "TRAILER_FLAG",
    "Frame",
    "FrameDecoder",
    "check_request_flags",
    "encode_frame",
    "encode_trailer_block",
]

TRAILER_FLAG = 0x80
COMPRESSED_FLAG = 0x01
PREFIX = struct.Struct(">BI")

Frame = tuple[int, bytes]  # (flags, payload)


def check_request_flags(flags: int) -> None:
    """Refuse a request frame whose flag byte is anything but 0 or 1 (compressed).

    grpc-go answers such a frame INTERNAL "grpc: received unexpected payload format"; forwarded, a
    server that reads only the low bit would take the frame for a message and the call would go on
    without the client's message (a fuzzed 0x1e frame was answered OK, with an empty request).
    """
    if flags & ~COMPRESSED_FLAG:
        if flags & TRAILER_FLAG:
            raise MalformedMessage("request carries a trailer frame; only message frames are allowed")
        raise MalformedMessage(
            f"request frame has the flag byte 0x{flags:02x}; a message frame's is 0x00, or 0x01 when compressed"
        )


def encode_frame(payload: bytes, flags: int = 0) -> bytes:
    return PREFIX.pack(flags, len(payload)) + payload


def encode_trailer_block(pairs: Iterable[tuple[str, str]]) -> bytes:
    """`key: value\\r\\n` lines with lower-case keys, the body of a gRPC-Web trailer frame."""
    return "".join(f"{key.lower()}: {value}\r\n" for key, value in pairs).encode("ascii")


class FrameDecoder:
    """Splits a byte stream into frames as it arrives, in chunks of any size.

    The length prefix is checked against `max_message_bytes` as soon as it is read, so a client
    cannot make the gateway buffer (or allocate) more than the limit.
    """

    __slots__ = ("_buffer", "_max")

    def __init__(self, max_message_bytes: int) -> None:
        self._buffer = bytearray()
        self._max = max_message_bytes

    def feed(self, data: bytes) -> list[Frame]:
        buffer = self._buffer
        buffer += data
        frames: list[Frame] = []
        offset = 0
        size = len(buffer)
        while size - offset >= 5:
            flags, length = PREFIX.unpack_from(buffer, offset)
            if length > self._max:
                raise MessageTooLarge(
                    f"request message is {length} bytes, larger than the gateway's limit of {self._max} bytes"
                )
            end = offset + 5 + length
            if end > size:
                break
            frames.append((flags, bytes(buffer[offset + 5 : end])))
            offset = end
        if offset:
            del buffer[:offset]
        return frames

    def close(self) -> None:
        """Call at end of input: leftover bytes mean the last frame was cut short."""
        if self._buffer:
            if len(self._buffer) < 5:
                raise MalformedMessage(f"request ends inside a frame prefix ({len(self._buffer)} of 5 bytes)")
            _flags, length = PREFIX.unpack_from(self._buffer, 0)
            raise MalformedMessage(f"request frame announces {length} bytes but only {len(self._buffer) - 5} arrived")
