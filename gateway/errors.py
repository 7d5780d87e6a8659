"""Errors the gateway raises, and the one table between gRPC status codes and HTTP statuses.

    GatewayError                      any failure the gateway reports to a client itself
    ├── BadRequest                    INVALID_ARGUMENT  (malformed gRPC-Web framing, base64, metadata, timeout)
    ├── MalformedMessage              INTERNAL          (truncated or wrongly flagged frame)
    ├── MessageTooLarge               RESOURCE_EXHAUSTED
    ├── MethodNotAllowed              UNIMPLEMENTED     (a REST path asked for with a method it does not take: 405)
    ├── MissingMessage                UNIMPLEMENTED     (a request body without any message frame)
    ├── NotFound                      NOT_FOUND         (no such REST path or file)
    ├── RateLimited                   RESOURCE_EXHAUSTED (answer carries Retry-After and RateLimit headers)
    ├── RateLimiterUnavailable        UNAVAILABLE       (the limiter's store failed and failureMode is closed)
    ├── TooManyConnections            RESOURCE_EXHAUSTED (the client's address holds its share of connections)
    ├── Unimplemented                 UNIMPLEMENTED     (a method or a call kind this entry point cannot serve)
    ├── UnknownService                UNIMPLEMENTED
    ├── UnsupportedEncoding           UNIMPLEMENTED     (answer lists grpc-accept-encoding)
    └── UpstreamUnavailable           UNAVAILABLE

Every error carries a gRPC status code. gRPC-Web and native gRPC clients get that code in
`grpc-status` (with HTTP 200 for gRPC-Web); REST clients get `GRPC_TO_HTTP[code]` and a JSON body, or
the error's own `http_status` where HTTP has a more precise word than the code's (405 for a method).
"""

from __future__ import annotations

from typing import ClassVar

import grpc

from common.http2.codes import HTTP_TO_GRPC

__all__ = [
    "GRPC_TO_HTTP",
    "HTTP_TO_GRPC",
    "BadRequest",
    "GatewayError",
    "MalformedMessage",
    "MessageTooLarge",
    "MethodNotAllowed",
    "MissingMessage",
    "NotFound",
    "PermissionDenied",
    "RateLimited",
    "RateLimiterUnavailable",
    "TooManyConnections",
    "Unauthenticated",
    "Unimplemented",
    "UnknownService",
    "UnsupportedEncoding",
    "UpstreamUnavailable",
    "grpc_status_from_http",
    "status_name",
]


class GatewayError(Exception):
    """A failure the gateway answers itself, with a gRPC status and a message safe to show a client."""

    code: ClassVar[grpc.StatusCode] = grpc.StatusCode.INTERNAL
    http_status: ClassVar[int | None] = None  # for REST clients, instead of GRPC_TO_HTTP[code]

    def __init__(self, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        # Extra response headers (or trailers-only metadata) that tell the client how to recover.
        self.headers = headers or {}


class BadRequest(GatewayError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class MalformedMessage(GatewayError):
    code = grpc.StatusCode.INTERNAL


class MessageTooLarge(GatewayError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class MissingMessage(GatewayError):
    code = grpc.StatusCode.UNIMPLEMENTED


class MethodNotAllowed(GatewayError):
    # As grpc-gateway answers it: UNIMPLEMENTED in the body, and HTTP's own 405 (with Allow).
    code = grpc.StatusCode.UNIMPLEMENTED
    http_status = 405


class NotFound(GatewayError):
    code = grpc.StatusCode.NOT_FOUND


class PermissionDenied(GatewayError):
    code = grpc.StatusCode.PERMISSION_DENIED


class RateLimited(GatewayError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class RateLimiterUnavailable(GatewayError):
    code = grpc.StatusCode.UNAVAILABLE


class TooManyConnections(GatewayError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unauthenticated(GatewayError):
    code = grpc.StatusCode.UNAUTHENTICATED


class Unimplemented(GatewayError):
    code = grpc.StatusCode.UNIMPLEMENTED


class UnknownService(GatewayError):
    code = grpc.StatusCode.UNIMPLEMENTED


class UnsupportedEncoding(GatewayError):
    code = grpc.StatusCode.UNIMPLEMENTED


class UpstreamUnavailable(GatewayError):
    code = grpc.StatusCode.UNAVAILABLE


# googleapis google/rpc/code.proto "HTTP Mapping". Used to answer REST clients; never for gRPC-Web,
# which always gets HTTP 200 with the code in grpc-status.
GRPC_TO_HTTP: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
}


def grpc_status_from_http(status: int) -> grpc.StatusCode:
    return HTTP_TO_GRPC.get(status, grpc.StatusCode.UNKNOWN)


def status_name(code: grpc.StatusCode) -> str:
    """`RESOURCE_EXHAUSTED` for grpc.StatusCode.RESOURCE_EXHAUSTED: the name REST clients see."""
    return code.name
