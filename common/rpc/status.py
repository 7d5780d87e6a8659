"""How a call through common.rpc ended, and its metadata both ways, as grpc.aio presents them.

Request metadata goes out as HPACK literals (`-bin` values base64, unpadded, as grpc sends them);
response metadata comes back as grpc.aio.Metadata without the headers that are HTTP/2's or the
protocol's own. A status is read off the stream once it has ended: the stream's own error (reset,
deadline, lost connection, a message over the limit, a non-gRPC answer) or the server's
grpc-status and percent-encoded grpc-message.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable
from urllib.parse import unquote_to_bytes

import grpc

from common.http2.client import Http2Stream
from common.http2.headers import HeaderList, encode_header

__all__ = ["CallFailed", "Metadatum", "Status", "encode_metadata", "response_metadata", "status_of"]

Metadatum = tuple[str, str | bytes]

# Response headers that are HTTP/2's or the protocol's own, not the server's metadata.
_NOT_METADATA = frozenset(
    {
        b":status", b"content-type", b"grpc-status", b"grpc-message", b"grpc-encoding", b"grpc-accept-encoding",
        b"content-length", b"te", b"user-agent",
    }
)  # fmt: skip
_CODES = {code.value[0]: code for code in grpc.StatusCode}


class CallFailed(Exception):
    """A call could not start: its status and details."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


def encode_metadata(metadata: Iterable[Metadatum]) -> bytes:
    """Request metadata as HPACK literals."""
    return b"".join(_metadatum(key, value) for key, value in metadata)


def _metadatum(key: str, value: str | bytes) -> bytes:
    name = key.lower().encode("ascii")
    if name.endswith(b"-bin"):
        raw = value.encode() if isinstance(value, str) else value
        return encode_header(name, base64.b64encode(raw).rstrip(b"="))
    return encode_header(name, value.encode() if isinstance(value, str) else value)


def response_metadata(headers: HeaderList | None) -> grpc.aio.Metadata:
    items: list[Metadatum] = []
    for name, value in headers or ():
        if name in _NOT_METADATA or name.startswith(b":"):
            continue
        key = name.decode("latin-1")
        if key.endswith("-bin"):
            items.append((key, base64.b64decode(value + b"=" * (-len(value) % 4))))
        else:
            items.append((key, value.decode("latin-1")))
    return grpc.aio.Metadata(*items)


class Status:
    """How a call ended. Its metadata is kept as received and turned into grpc.aio.Metadata only when
    asked for: most calls never look at it."""

    __slots__ = ("_headers", "_trailers", "code", "details")

    def __init__(
        self, code: grpc.StatusCode, details: str, headers: HeaderList | None = None, trailers: HeaderList | None = None
    ) -> None:
        self.code = code
        self.details = details
        self._headers = headers
        self._trailers = trailers

    @property
    def initial(self) -> grpc.aio.Metadata:
        return response_metadata(self._headers)

    @property
    def trailing(self) -> grpc.aio.Metadata:
        return response_metadata(self._trailers)


def status_of(stream: Http2Stream) -> Status:
    """How an ended stream ended, as grpc reports it."""
    error = stream.error
    if error is not None:
        return Status(error.code, error.message, stream.headers)
    status = message = None
    for name, value in stream.trailers or ():
        if name == b"grpc-status":
            status = value
        elif name == b"grpc-message":
            message = value
    if status is None:
        return Status(grpc.StatusCode.UNKNOWN, "the server ended the call without a gRPC status", stream.headers)
    code = _CODES.get(int(status), grpc.StatusCode.UNKNOWN) if status.isdigit() else grpc.StatusCode.UNKNOWN
    details = unquote_to_bytes(message).decode("utf-8", "replace") if message else ""
    return Status(code, details, stream.headers, stream.trailers)
