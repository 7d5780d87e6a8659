"""One call path, two HTTP protocols: gRPC-Web and Connect share `/api/<pkg.Service>/<Method>`.

A GET, or a POST whose content type is Connect's (application/json, application/proto,
application/connect+json|proto), goes to the Connect codec; everything else to gRPC-Web, which answers
a wrong method or content type as it always has (405 / 415).
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.connect.protocol import is_connect

__all__ = ["CallRouter"]


class CallRouter:
    def __init__(self, grpc_web: ASGIApp, connect: ASGIApp) -> None:
        self.grpc_web = grpc_web
        self.connect = connect

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] == "GET" or is_connect(_content_type(scope)):
            await self.connect(scope, receive, send)
        else:
            await self.grpc_web(scope, receive, send)


def _content_type(scope: Scope) -> str:
    for name, value in scope["headers"]:
        if name == b"content-type":
            return str(value.decode("latin-1"))
    return ""
