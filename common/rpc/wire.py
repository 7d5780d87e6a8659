"""gRPC over HTTP/2 as the server writes and reads it (PROTOCOL-HTTP2.md): header blocks, metadata,
message prefixes.

Shared with the gateway rather than copied here: grpc-timeout and grpc-message are coded in
common/http2/headers.py (common/rpc/server.py reads the timeout), compressed messages inflated by
common/inflate.py.
"""

from __future__ import annotations

import base64
import binascii
import struct
from collections.abc import Iterable
from typing import Final

import grpc
import grpc.aio

from common.http2.headers import encode_header, percent_encode
from common.inflate import InflateError, TooLarge, inflate

__all__ = [
    "ACCEPT_ENCODING",
    "EOF",
    "MESSAGE_PREFIX",
    "RESPONSE_START",
    "MessageError",
    "Metadata",
    "RequestMessages",
    "metadata_block",
    "request_metadata",
    "status_block",
]

Metadata = tuple[tuple[str, str | bytes], ...]

# What context.read() returns once the client has half-closed: grpc.aio's own marker (grpc-stubs lack it).
EOF: Final[object] = grpc.aio.EOF  # type: ignore[attr-defined]
MESSAGE_PREFIX: Final = struct.Struct(">BI")  # compressed flag, length
ACCEPT_ENCODING: Final = "identity,gzip"

# HPACK: ":status: 200" is static index 8; content-type (static name 31) as a literal without indexing.
RESPONSE_START: Final = b"\x88\x0f\x10" + bytes((len(b"application/grpc"),)) + b"application/grpc"

# Request headers that are the transport's, not the caller's metadata (grpc core keeps them back too).
_NOT_METADATA = frozenset(
    {b"te", b"content-type", b"grpc-timeout", b"grpc-encoding", b"grpc-accept-encoding", b"connection", b"host"}
)
# Status lines for the codes a server sends most, built once.
_STATUS = {code: encode_header(b"grpc-status", str(code.value[0]).encode()) for code in grpc.StatusCode}


class MessageError(Exception):
    """A request message the call cannot take: the call ends with `code`."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def request_metadata(headers: Iterable[tuple[bytes, bytes]]) -> Metadata:
    """The caller's metadata as grpc.aio hands it to a servicer: str values, bytes for `-bin` keys."""
    items: list[tuple[str, str | bytes]] = []
    for name, value in headers:
        if name[:1] == b":" or name in _NOT_METADATA:
            continue
        key = name.decode("latin-1")
        if key.endswith("-bin"):
            try:  # grpc clients may leave the base64 padding out
                items.append((key, base64.b64decode(value + b"=" * (-len(value) % 4))))
            except binascii.Error:
                items.append((key, value))  # not base64 after all: the servicer gets the bytes sent
        else:
            items.append((key, value.decode("latin-1")))
    return tuple(items)


def metadata_block(metadata: Iterable[tuple[str, str | bytes]]) -> bytes:
    """Metadata the servicer sends, as header fields: `-bin` values in base64, keys lowercase."""
    fields = []
    for key, value in metadata:
        name = key.lower().encode("ascii")
        if name.endswith(b"-bin"):
            raw = value if isinstance(value, bytes) else value.encode("utf-8")
            data = base64.b64encode(raw)
        else:
            data = value.encode("latin-1") if isinstance(value, str) else value
        fields.append(encode_header(name, data))
    return b"".join(fields)


def status_block(code: grpc.StatusCode, details: str | None, trailing: bytes = b"") -> bytes:
    """grpc-status, the percent-encoded grpc-message (when there is one) and trailing metadata."""
    block = _STATUS[code]
    if details:
        block += encode_header(b"grpc-message", percent_encode(details).encode("ascii"))
    return block + trailing


class RequestMessages:
    """Request DATA in, whole messages out: prefixes followed across frames, the size limit and the flag
    byte checked, gzip messages inflated (`gzip`: the request's grpc-encoding is gzip)."""

    __slots__ = ("_buffer", "_gzip", "_limit")

    def __init__(self, limit: int, *, gzip: bool) -> None:
        self._limit = limit
        self._gzip = gzip
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[tuple[bytes, int]]:
        """The messages `data` completes, each with the request bytes it took (prefix included)."""
        buffer = self._buffer
        if not buffer and len(data) >= 5:
            # The usual case: one whole message in one frame, taken without copying into the buffer.
            flag, size = MESSAGE_PREFIX.unpack_from(data)
            if len(data) == size + 5:
                self._check(flag, size)
                return [(self._payload(flag, data[5:]), size + 5)]
        buffer += data
        messages = []
        while len(buffer) >= 5:
            flag, size = MESSAGE_PREFIX.unpack_from(buffer)
            self._check(flag, size)
            if len(buffer) < size + 5:
                break
            payload = bytes(buffer[5 : size + 5])
            del buffer[: size + 5]
            messages.append((self._payload(flag, payload), size + 5))
        return messages

    @property
    def partial(self) -> bool:
        """Part of a message is waiting for the rest."""
        return bool(self._buffer)

    def _check(self, flag: int, size: int) -> None:
        if flag > 1:
            raise MessageError(grpc.StatusCode.INTERNAL, f"reserved bits set in the message flag byte ({flag:#x})")
        if flag and not self._gzip:
            raise MessageError(grpc.StatusCode.INTERNAL, "a compressed message without grpc-encoding")
        if size > self._limit:
            raise MessageError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"Received message larger than max ({size} vs. {self._limit})",
            )

    def _payload(self, flag: int, payload: bytes) -> bytes:
        if not flag:
            return payload
        try:
            return inflate(payload, gzip=True, limit=self._limit)
        except InflateError as exc:
            raise MessageError(grpc.StatusCode.INTERNAL, f"a gzip message that does not inflate: {exc}") from None
        except TooLarge:
            raise MessageError(
                grpc.StatusCode.RESOURCE_EXHAUSTED, f"Received message larger than max (inflated past {self._limit})"
            ) from None
