"""Between HTTP/1.1 headers and gRPC metadata.

Requests: custom headers become metadata, except hop-by-hop headers and those that belong to the
browser or to the gRPC-Web hop itself (improbable-eng/grpc-web#568: a forwarded `connection` header
broke backends). `-bin` values arrive base64-encoded and go upstream as bytes.
Responses: metadata becomes headers (or trailer-block lines), `-bin` values base64 again, except
names that describe the gateway's own HTTP response (framing, hop-by-hop, CORS).
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable
from typing import NamedTuple

from gateway.errors import BadRequest, UnsupportedEncoding

__all__ = ["Metadata", "RequestMetadata", "metadata_to_headers", "parse_request_headers", "parse_timeout"]

Metadata = tuple[tuple[str, str | bytes], ...]

# Never forwarded: hop-by-hop (RFC 9110 7.6.1), the gRPC-Web hop's own, and the browser's.
_DROPPED = frozenset(
    {
        b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"transfer-encoding", b"upgrade",
        b"host", b"content-length", b"content-type", b"content-encoding", b"accept", b"accept-encoding",
        b"accept-language", b"origin", b"referer", b"user-agent", b"x-grpc-web", b"cache-control", b"pragma",
        b"priority", b"dnt", b"proxy-authorization", b"proxy-authenticate", b"cookie",
    }
)  # fmt: skip
# grpc-* names are the protocol's own (grpc-timeout and grpc-encoding are read below);
# sec-* and access-control-* are set by the browser for itself.
_DROPPED_PREFIXES = (b"grpc-", b"sec-", b"access-control-")
_KEY = re.compile(rb"^[0-9a-z_.-]+$")
_VALUE = re.compile(rb"^[\x20-\x7e]*$")
_TIMEOUT = re.compile(rb"^(\d{1,8})([HMSmun])$")
_TIMEOUT_UNITS = {b"H": 3600.0, b"M": 60.0, b"S": 1.0, b"m": 1e-3, b"u": 1e-6, b"n": 1e-9}
# grpcio turns a timeout into an absolute deadline in int64 nanoseconds since the epoch: from about
# 7e9 s on (a valid "9999999H") that overflows into the past and the call fails at once with
# DEADLINE_EXCEEDED. Longer deadlines are capped to the longest 8-digit second count (~3 years),
# more than grpc core itself passes on to a backend (27000 h).
_LONGEST_TIMEOUT = 99_999_999.0
SUPPORTED_ENCODINGS = ("identity", "gzip", "deflate")


class RequestMetadata(NamedTuple):
    metadata: Metadata
    timeout: float | None  # seconds, from grpc-timeout
    encoding: str | None  # grpc-encoding of compressed request frames


def parse_timeout(value: bytes) -> float:
    """`grpc-timeout`: at most 8 digits and a unit (PROTOCOL-HTTP2.md); anything else is refused."""
    match = _TIMEOUT.match(value)
    if match is None:
        raise BadRequest(f"grpc-timeout {value.decode('latin-1')!r} is not 1-8 digits followed by H, M, S, m, u or n")
    return min(int(match.group(1)) * _TIMEOUT_UNITS[match.group(2)], _LONGEST_TIMEOUT)


def parse_request_headers(headers: Iterable[tuple[bytes, bytes]], *, forward_cookies: bool) -> RequestMetadata:
    metadata: list[tuple[str, str | bytes]] = []
    timeout: float | None = None
    encoding: str | None = None
    dropped_here: set[bytes] = set()
    for name, value in headers:
        if name in _DROPPED or name.startswith(_DROPPED_PREFIXES):
            if name == b"grpc-timeout":
                timeout = parse_timeout(value)
            elif name == b"grpc-encoding":
                encoding = value.decode("latin-1").strip().lower()
                if encoding not in SUPPORTED_ENCODINGS:
                    raise UnsupportedEncoding(
                        f"grpc-encoding {encoding!r} is not supported",
                        headers={"grpc-accept-encoding": ",".join(SUPPORTED_ENCODINGS)},
                    )
            elif name == b"connection":
                # Headers named in Connection are hop-by-hop too.
                dropped_here.update(token.strip().lower() for token in value.split(b","))
            elif name == b"cookie" and forward_cookies:
                metadata.append(("cookie", value.decode("latin-1")))
            continue
        if not _KEY.match(name):
            raise BadRequest(f"header {name.decode('latin-1')!r} cannot be sent as gRPC metadata")
        key = name.decode("ascii")
        if key.endswith("-bin"):
            metadata.append((key, _decode_binary(key, value)))
        elif _VALUE.match(value):
            metadata.append((key, value.decode("ascii")))
        else:
            raise BadRequest(f"header {key} has a value that is not printable ASCII; binary metadata needs a -bin name")
    if dropped_here:
        metadata = [item for item in metadata if item[0].encode() not in dropped_here]
    return RequestMetadata(tuple(metadata), timeout, None if encoding == "identity" else encoding)


def _decode_binary(key: str, value: bytes) -> bytes:
    # gRPC allows padded and unpadded base64; browsers' btoa pads, other clients may not.
    value = value.strip()
    try:
        return base64.b64decode(value + b"=" * (-len(value) % 4), validate=True)
    except binascii.Error:
        raise BadRequest(f"header {key} is not valid base64") from None


# Backend metadata never sent on as response headers: the gateway's HTTP/1.1 framing is its own
# (a backend's transfer-encoding broke the response; its content-encoding made browsers decode
# plain frames), hop-by-hop headers end at the backend's hop, and CORS is answered by the gateway
# alone (a backend's access-control-allow-origin turned the gateway's into an invalid list).
_NOT_RESPONSE_HEADERS = frozenset(
    {
        "connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade",
        "content-length", "content-type", "content-encoding",
    }
)  # fmt: skip


def metadata_to_headers(metadata: Iterable[tuple[str, str | bytes]]) -> list[tuple[bytes, bytes]]:
    headers = []
    for key, value in metadata:
        if key in _NOT_RESPONSE_HEADERS or key.startswith("access-control-"):
            continue
        if isinstance(value, bytes):
            headers.append((key.encode("ascii"), base64.b64encode(value)))
        else:
            headers.append((key.encode("ascii"), value.encode("latin-1")))
    return headers
