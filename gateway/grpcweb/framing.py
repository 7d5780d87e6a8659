"""gRPC length-prefixed framing as gRPC-Web uses it (grpc/grpc doc/PROTOCOL-WEB.md).

Every message is `flags(1) | length(4, big endian) | payload`. Flag 0x80 marks the trailer frame,
whose payload is an HTTP/1-style header block; flag 0x01 marks a compressed payload.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from urllib.parse import quote

import grpc

from gateway.errors import MalformedMessage, MessageTooLarge

__all__ = [
    "COMPRESSED_FLAG",
    "PREFIX",
    "TRAILER_FLAG",
    "Frame",
    "FrameDecoder",
    "encode_frame",
    "encode_trailer_block",
    "percent_encode",
    "status_lines",
]

TRAILER_FLAG = 0x80
COMPRESSED_FLAG = 0x01
PREFIX = struct.Struct(">BI")

Frame = tuple[int, bytes]  # (flags, payload)


def encode_frame(payload: bytes, flags: int = 0) -> bytes:
    return PREFIX.pack(flags, len(payload)) + payload


def percent_encode(message: str) -> str:
    """Percent-encode a grpc-message: everything outside printable ASCII, and '%' itself."""
    # gRPC's rule (PROTOCOL-HTTP2.md) keeps space and every other printable ASCII byte as is;
    # grpc-web JS runs decodeURIComponent on it, so a bare '%' would break the client.
    return quote(message, safe=" !\"#$&'()*+,-./:;<=>?@[\\]^_`{|}~")


def status_lines(code: grpc.StatusCode, message: str) -> list[tuple[bytes, bytes]]:
    """grpc-status and (when there is one) the percent-encoded grpc-message, as header lines."""
    lines = [(b"grpc-status", str(code.value[0]).encode())]
    if message:
        lines.append((b"grpc-message", percent_encode(message).encode("ascii")))
    return lines


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
