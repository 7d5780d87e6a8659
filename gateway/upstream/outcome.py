"""How a call through the HTTP/2 client ended: its gRPC status, message and trailing metadata."""

from __future__ import annotations

from typing import NamedTuple

import grpc

from common.http2.client import Http2Stream, StreamError
from gateway.errors import GatewayError, UpstreamUnavailable, grpc_status_from_http
from gateway.wire.metadata import response_metadata
from gateway.wire.status import percent_encode

__all__ = ["Outcome", "explain", "gateway_error", "outcome"]

_CODES = {code.value[0]: code for code in grpc.StatusCode}


class Outcome(NamedTuple):
    status: bytes  # the grpc-status value, as sent on the wire ("0", "14", ...)
    message: bytes  # the grpc-message value, percent-encoded as on the wire; b"" when none
    metadata: list[tuple[bytes, bytes]]  # trailing metadata, -bin values base64

    def lines(self) -> list[tuple[bytes, bytes]]:
        """grpc-status, grpc-message (when set) and the trailing metadata, as header lines."""
        lines = [(b"grpc-status", self.status)]
        if self.message:
            lines.append((b"grpc-message", self.message))
        return lines + self.metadata

    @property
    def code(self) -> grpc.StatusCode:
        return (
            _CODES.get(int(self.status), grpc.StatusCode.UNKNOWN) if self.status.isdigit() else grpc.StatusCode.UNKNOWN
        )


def _local(code: grpc.StatusCode, message: str) -> Outcome:
    return Outcome(str(code.value[0]).encode(), percent_encode(message).encode("ascii"), [])


def explain(error: StreamError, service: str) -> str:
    """What a client is told of a call the gateway ended itself: an UNAVAILABLE names the service."""
    if error.code is grpc.StatusCode.UNAVAILABLE:
        return f"{service} is unavailable: {error.message}"
    return error.message


def gateway_error(error: StreamError, service: str) -> GatewayError:
    """A call that could not start, as the error the entry points answer with."""
    if error.code is grpc.StatusCode.UNAVAILABLE:
        return UpstreamUnavailable(explain(error, service))
    failure = GatewayError(error.message)
    failure.code = error.code  # type: ignore[misc]  # the status the upstream side reported
    return failure


def outcome(stream: Http2Stream, service: str) -> Outcome:
    error = stream.error
    if error is not None:
        return _local(error.code, explain(error, service))
    trailers = stream.trailers or ()
    status = None
    message = b""
    for name, value in trailers:
        if name == b"grpc-status":
            status = value
        elif name == b"grpc-message":
            message = value
    if status is None:
        http_status = next((value for name, value in trailers if name == b":status"), b"200")
        if http_status != b"200" and http_status.isdigit():
            code = grpc_status_from_http(int(http_status))
            return _local(code, f"upstream answered HTTP {http_status.decode()} without a gRPC status")
        return _local(grpc.StatusCode.INTERNAL, "upstream ended the call without a gRPC status")
    return Outcome(status, message, response_metadata(trailers))
