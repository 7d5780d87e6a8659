"""What makes a request gRPC-Web, and the answer to one that the gateway refuses itself.

Apart from the endpoint so that the error middleware, which renders failures in the client's
protocol, does not import the endpoint.
"""

from __future__ import annotations

from starlette.types import Message, Scope

from gateway.errors import GatewayError
from gateway.wire.status import status_lines

__all__ = ["CONTENT_TYPE_BINARY", "CONTENT_TYPE_TEXT", "grpc_web_error_response", "is_grpc_web", "negotiate"]

CONTENT_TYPE_BINARY = b"application/grpc-web+proto"
CONTENT_TYPE_TEXT = b"application/grpc-web-text+proto"
_GRPC_WEB = b"application/grpc-web"
_GRPC_WEB_TEXT = b"application/grpc-web-text"


_GRPC_WEB_TYPES = frozenset(
    (_GRPC_WEB, b"application/grpc-web+proto", _GRPC_WEB_TEXT, b"application/grpc-web-text+proto")
)


def negotiate(scope: Scope) -> tuple[bool, bool, bool]:
    """(is gRPC-Web, request is text, answer in text), from one pass over the headers.

    Any of the four content types, case and parameters ignored. Text answers for text requests
    (improbable) and for `Accept: application/grpc-web-text` (Envoy).
    """
    media = b""
    text_accepted = False
    for key, value in scope["headers"]:
        if key == b"content-type":
            media = value.split(b";", 1)[0].strip().lower()
        elif key == b"accept" and _GRPC_WEB_TEXT in value.lower():
            text_accepted = True
    text_request = media.startswith(_GRPC_WEB_TEXT)
    return media in _GRPC_WEB_TYPES, text_request, text_request or text_accepted


def is_grpc_web(scope: Scope) -> bool:
    return negotiate(scope)[0]


def grpc_web_error_response(scope: Scope, exc: GatewayError) -> Message:
    """A trailers-only `http.response.start` for an error the gateway answers itself."""
    headers = status_lines(exc.code, exc.message)
    headers += [(key.encode("latin-1"), value.encode("latin-1")) for key, value in exc.headers.items()]
    headers.append((b"content-type", CONTENT_TYPE_TEXT if negotiate(scope)[2] else CONTENT_TYPE_BINARY))
    headers.append((b"content-length", b"0"))
    return {"type": "http.response.start", "status": 200, "headers": headers}
