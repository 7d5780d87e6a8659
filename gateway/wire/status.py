"""The status of a gRPC call as it travels: grpc-status and a percent-encoded grpc-message."""

from __future__ import annotations

import grpc

from common.http2.headers import percent_encode

__all__ = ["percent_encode", "status_lines"]


def status_lines(code: grpc.StatusCode, message: str) -> list[tuple[bytes, bytes]]:
    """grpc-status and (when there is one) the percent-encoded grpc-message, as header lines."""
    lines = [(b"grpc-status", str(code.value[0]).encode())]
    if message:
        lines.append((b"grpc-message", percent_encode(message).encode("ascii")))
    return lines
