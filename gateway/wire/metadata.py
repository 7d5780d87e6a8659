"""Between HTTP/1.1 headers and gRPC metadata.

Requests: custom headers become metadata, except hop-by-hop headers and those that belong to the
browser or to the gRPC-Web hop itself (improbable-eng/grpc-web#568: a forwarded `connection` header
broke backends). `-bin` values arrive base64-encoded and go upstream as bytes.
Responses: metadata becomes headers (or trailer-block lines), `-bin` values base64, except names
that describe the gateway's own HTTP response (framing, hop-by-hop, CORS).
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable
from typing import NamedTuple

from common.http2.headers import encode_header
from gateway.edge.identity_headers import is_identity_header
from gateway.errors import BadRequest, UnsupportedEncoding
from gateway.wire.timeout import parse_timeout

__all__ = ["SUPPORTED_ENCODINGS", "RequestMetadata", "parse_request_headers", "response_metadata"]

# Never forwarded: hop-by-hop (RFC 9110 7.6.1), the gRPC-Web hop's own, and the browser's; and the
# W3C trace context, which each attempt sends itself (gateway/telemetry/calls.py: passed through, or
# the gateway's span as the parent).
_DROPPED = frozenset(
    {
        b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"transfer-encoding", b"upgrade",
        b"host", b"content-length", b"content-type", b"content-encoding", b"accept", b"accept-encoding",
        b"accept-language", b"origin", b"referer", b"user-agent", b"x-grpc-web", b"cache-control", b"pragma",
        b"priority", b"dnt", b"proxy-authorization", b"proxy-authenticate", b"cookie",
        b"traceparent", b"tracestate",
    }
)  # fmt: skip
# grpc-* names are the protocol's own (grpc-timeout and grpc-encoding are read below);
# sec-* and access-control-* are set by the browser for itself; x-upf-* carry the identity the
# gateway verified (gateway/auth/verify.py), so a client's own copies never reach a plugin.
_DROPPED_PREFIXES = (b"grpc-", b"sec-", b"access-control-", b"x-upf-")
_KEY = re.compile(rb"^[0-9a-z_.-]+$")
_VALUE = re.compile(rb"^[\x20-\x7e]*$")
SUPPORTED_ENCODINGS = ("identity", "gzip", "deflate")


class RequestMetadata(NamedTuple):
    block: bytes  # the forwarded metadata, HPACK-encoded for the upstream request
    timeout: float | None  # seconds, from grpc-timeout
    encoding: str | None  # grpc-encoding of compressed request frames


def parse_request_headers(
    headers: Iterable[tuple[bytes, bytes]], *, forward_cookies: bool, forward_authorization: bool = True
) -> RequestMetadata:
    """Metadata for the upstream call; `forward_authorization=False` keeps the client's token at the
    gateway (plugins get the verified identity instead)."""
    metadata: list[tuple[bytes, bytes]] = []
    timeout: float | None = None
    encoding: str | None = None
    dropped_here: set[bytes] = set()
    for name, value in headers:
        if name in _DROPPED or name.startswith(_DROPPED_PREFIXES) or is_identity_header(name):
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
                metadata.append((name, value))
            continue
        if name == b"authorization" and not forward_authorization:
            continue
        if not _KEY.match(name):
            raise BadRequest(f"header {name.decode('latin-1')!r} cannot be sent as gRPC metadata")
        if name.endswith(b"-bin"):
            metadata.append((name, _normalise_binary(name, value)))
        elif _VALUE.match(value):
            metadata.append((name, value))
        else:
            raise BadRequest(
                f"header {name.decode()} has a value that is not printable ASCII; binary metadata needs a -bin name"
            )
    if dropped_here:
        metadata = [item for item in metadata if item[0] not in dropped_here]
    block = b"".join(encode_header(name, value) for name, value in metadata)
    return RequestMetadata(block, timeout, None if encoding == "identity" else encoding)


def _normalise_binary(name: bytes, value: bytes) -> bytes:
    # gRPC accepts padded and unpadded base64 and asks senders for unpadded; browsers' btoa pads.
    value = value.strip()
    try:
        decoded = base64.b64decode(value + b"=" * (-len(value) % 4), validate=True)
    except binascii.Error:
        raise BadRequest(f"header {name.decode()} is not valid base64") from None
    return base64.b64encode(decoded).rstrip(b"=")


# Upstream headers that are not the call's metadata: the gateway's HTTP/1.1 framing is its own (a
# backend's transfer-encoding broke the response; its content-encoding made browsers decode plain
# frames), hop-by-hop headers end at the upstream hop, grpc-status/-message are rendered by the
# gateway, and CORS is answered by the gateway alone (a backend's access-control-allow-origin turned
# the gateway's into an invalid list).
_NOT_METADATA = frozenset(
    {
        b"content-type", b"content-length", b"content-encoding", b"grpc-accept-encoding", b"grpc-encoding",
        b"te", b"trailer", b"transfer-encoding", b"connection", b"keep-alive", b"proxy-connection", b"upgrade",
        b"date", b"server", b"grpc-status", b"grpc-message",
    }
)  # fmt: skip


def response_metadata(headers: Iterable[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """An upstream's HTTP/2 response headers or trailers, as the call's metadata for a gRPC-Web client."""
    metadata = []
    for name, value in headers:
        if name[:1] == b":" or name in _NOT_METADATA or name.startswith(b"access-control-"):
            continue
        if name.endswith(b"-bin") and len(value) % 4:
            value += b"=" * (-len(value) % 4)  # gRPC sends it unpadded; browsers' atob and many decoders want padding
        metadata.append((name, value))
    return metadata
