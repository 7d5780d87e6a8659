"""The status of a gRPC call as it travels: grpc-status and a percent-encoded grpc-message."""

from __future__ import annotations

from urllib.parse import quote

import grpc

__all__ = ["percent_encode", "status_lines"]


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
