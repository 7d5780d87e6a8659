"""The outermost middleware: whatever fails below it, the client gets an answer in its own protocol.

gRPC-Web clients get a trailers-only response with HTTP 200 and `grpc-status` (INTERNAL for an
unexpected failure); everyone else gets a JSON body with the HTTP status from GRPC_TO_HTTP. Never a
stack trace and never HTML. If the response had already started, the connection is closed and the
failure logged: nothing well-formed can be added any more.
"""

from __future__ import annotations

import json
import logging

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.errors import GRPC_TO_HTTP, GatewayError, status_name
from gateway.grpcweb.responses import grpc_web_error_response, is_grpc_web
from gateway.middleware.cors import RESPONSE_HEADERS_KEY

__all__ = ["ErrorMiddleware", "json_error_response"]

logger = logging.getLogger(__name__)


def json_error_response(exc: GatewayError) -> tuple[Message, Message]:
    body = json.dumps({"code": status_name(exc.code), "message": exc.message}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(key.encode("latin-1"), value.encode("latin-1")) for key, value in exc.headers.items()]
    start = {"type": "http.response.start", "status": exc.http_status or GRPC_TO_HTTP[exc.code], "headers": headers}
    return start, {"type": "http.response.body", "body": body}


class ErrorMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:
            if not isinstance(exc, GatewayError):
                logger.exception("request %s %s failed", scope.get("method"), scope.get("path"))
                exc = GatewayError("the gateway failed while handling this request")
            if started:
                raise  # too late for an answer: let the server close the connection
            if is_grpc_web(scope):
                start = grpc_web_error_response(scope, exc)
                end: Message = {"type": "http.response.body", "body": b""}
            else:
                start, end = json_error_response(exc)
            cors_headers = scope.get(RESPONSE_HEADERS_KEY)
            if cors_headers is not None:
                exposed = ["grpc-status", "grpc-message", *exc.headers]
                start["headers"] = [
                    *start["headers"],
                    *cors_headers,
                    (b"access-control-expose-headers", ", ".join(exposed).encode("latin-1")),
                ]
            await send(start)
            await send(end)
