"""Authentication for HTTP requests and WebSocket upgrades, before rate limiting and routing.

Sits inside CORS (a refusal is readable by the page; preflights never need a token) and outside the
rate limiter (whose `token` keys read the identity set here). A refusal raises Unauthenticated or
PermissionDenied, which the error middleware renders in the client's protocol: gRPC-Web gets HTTP 200
with grpc-status 16 / 7; REST gets 401 / 403 with `WWW-Authenticate` and a JSON body.

WebSocket upgrades: a browser cannot set headers on one, so the gRPC bridges (grpc-websockets,
multiplexed calls) take the token from their first message and authenticate there; this middleware
only checks an upgrade that carries an Authorization header, or one to a path without such a bridge
(refused before the handshake: the client sees HTTP 403).
"""

from __future__ import annotations

from collections.abc import Callable

from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.auth.authenticator import Authenticator
from gateway.auth.identity import IDENTITY_SCOPE_KEY
from gateway.errors import GatewayError

__all__ = ["AuthMiddleware"]


class AuthMiddleware:
    def __init__(
        self, app: ASGIApp, *, authenticator: Authenticator, authenticates_in_band: Callable[[str], bool]
    ) -> None:
        self.app = app
        self.authenticator = authenticator
        self.authenticates_in_band = authenticates_in_band

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            identity = await self.authenticator.authenticate(scope["path"], scope["headers"])
            if identity is not None:
                scope[IDENTITY_SCOPE_KEY] = identity
        elif kind == "websocket":
            path = scope["path"]
            in_band = self.authenticates_in_band(path)
            if not in_band or any(name == b"authorization" for name, _ in scope["headers"]):
                try:
                    identity = await self.authenticator.authenticate(path, scope["headers"])
                except GatewayError as exc:
                    # Before the handshake: the server answers HTTP 403 (the reason is for logs).
                    await send({"type": "websocket.close", "code": 1008, "reason": exc.message[:120]})
                    return
                if identity is not None:
                    scope[IDENTITY_SCOPE_KEY] = identity
        await self.app(scope, receive, send)
