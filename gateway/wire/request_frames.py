"""The request byte stream of one call, checked frame by frame as it passes to the upstream.

Shared by the gRPC-Web endpoint (a request body in chunks of any size) and the WebSocket bridges
(grpc-websockets and upf-mux.v1: frames cut anywhere into WebSocket messages). The bytes pass
without a copy: a 1 MiB request is joined once, not copied per frame.
"""

from __future__ import annotations

from common.inflate import InflateError, TooLarge, inflate
from gateway.errors import MalformedMessage, MessageTooLarge
from gateway.wire.framing import COMPRESSED_FLAG, PREFIX, FrameDecoder, check_request_flags, encode_frame

__all__ = ["RequestFrames"]


class RequestFrames:
    """Checks the request byte stream frame by frame as it passes, without copying or re-framing it.

    With a grpc-encoding, compressed frames are inflated here (the upstream is told no encoding), so
    those requests are re-framed.
    """

    __slots__ = ("_announced", "_decoder", "_encoding", "_max", "_prefix", "_remaining")

    def __init__(self, max_message_bytes: int, encoding: str | None) -> None:
        self._max = max_message_bytes
        self._encoding = encoding
        self._decoder = FrameDecoder(max_message_bytes) if encoding is not None else None
        self._prefix = bytearray()  # a frame prefix cut short by the end of a message
        self._remaining = 0  # bytes of the current frame's payload still to come
        self._announced = 0  # the current frame's payload length, for the message if it is cut short

    def feed(self, data: bytes | memoryview) -> bytes | memoryview:
        """The bytes to send upstream for `data`: `data` itself unless frames had to be inflated."""
        if self._decoder is not None:
            frames = self._decoder.feed(bytes(data))
            return b"".join(encode_frame(self._inflate(flags, payload)) for flags, payload in frames)
        offset, size = 0, len(data)
        while offset < size:
            if self._remaining:
                step = min(self._remaining, size - offset)
                self._remaining -= step
                offset += step
                continue
            if not self._prefix and size - offset >= 5:
                flags, length = PREFIX.unpack_from(data, offset)
                offset += 5
            else:
                take = min(5 - len(self._prefix), size - offset)
                self._prefix += data[offset : offset + take]
                offset += take
                if len(self._prefix) < 5:
                    break
                flags, length = PREFIX.unpack(self._prefix)
                self._prefix.clear()
            self._check(flags, length)
            self._remaining = self._announced = length
        return data

    def _check(self, flags: int, length: int) -> None:
        check_request_flags(flags)
        if flags & COMPRESSED_FLAG:
            raise MalformedMessage("request frame is flagged compressed but no grpc-encoding was given")
        if length > self._max:
            raise MessageTooLarge(
                f"request message is {length} bytes, larger than the gateway's limit of {self._max} bytes"
            )

    def _inflate(self, flags: int, payload: bytes) -> bytes:
        check_request_flags(flags)
        if not flags & COMPRESSED_FLAG:
            return payload
        try:
            return inflate(payload, gzip=self._encoding == "gzip", limit=self._max)
        except InflateError as exc:
            raise MalformedMessage(f"request frame cannot be decompressed with {self._encoding}: {exc}") from None
        except TooLarge:
            raise MessageTooLarge(
                f"request message decompresses to more than the gateway's limit of {self._max} bytes"
            ) from None

    def close(self) -> None:
        """At the half-close: a frame cut short means the request is malformed."""
        if self._decoder is not None:
            self._decoder.close()
        elif self._prefix:
            raise MalformedMessage(f"request ends inside a frame prefix ({len(self._prefix)} of 5 bytes)")
        elif self._remaining:
            arrived = self._announced - self._remaining
            raise MalformedMessage(f"request frame announces {self._announced} bytes but only {arrived} arrived")
