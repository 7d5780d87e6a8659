"""Authentication for REST requests and WebSocket upgrades, before rate limiting and routing.

gRPC-Web calls pass by: they are authenticated with every other gRPC call (gateway/proxy/).

Sits inside CORS (a refusal is readable by the page; preflights never need a token) and outside the
rate limiter (whose `token` keys read the identity set here). A refusal raises Unauthenticated or
PermissionDenied, which the error middleware renders: 401 / 403 with `WWW-Authenticate` and a JSON body.

WebSocket upgrades: a browser cannot set headers on one. It may offer the token as a subprotocol,
`bearer.<token>` beside the real one (`new WebSocket(url, ["upf-events.v1", "bearer." + token])`:
the handshake header is not logged, unlike a query string); it is taken out of the offered list
here. The gRPC bridges (grpc-websockets, multiplexed calls) may instead take the token from their
first message and authenticate there; this middleware checks an upgrade that carries a token, or one
to a path without such a bridge (refused before the handshake: the client sees HTTP 403).
"""

from __future__ import annotations

from collections.abc import Callable

from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.auth.authenticator import Authenticator
from gateway.auth.identity import IDENTITY_SCOPE_KEY
from gateway.errors import GatewayError
from gateway.proxy import is_call_path

__all__ = ["TOKEN_SUBPROTOCOL", "AuthMiddleware"]

TOKEN_SUBPROTOCOL = "bearer."


def _has_authorization(headers: list[tuple[bytes, bytes]]) -> bool:
    return any(name == b"authorization" for name, _ in headers)


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
            if is_call_path(scope["path"]):
                await self.app(scope, receive, send)  # a gRPC-Web call: admitted by gateway/proxy/
                return
            identity = await self.authenticator.authenticate(scope["path"], scope["headers"])
            if identity is not None:
                scope[IDENTITY_SCOPE_KEY] = identity
        elif kind == "websocket":
            path = scope["path"]
            headers = scope["headers"]
            offered = scope.get("subprotocols") or ()
            carried = next((name for name in offered if name.startswith(TOKEN_SUBPROTOCOL)), None)
            if carried is not None:
                scope["subprotocols"] = [name for name in offered if not name.startswith(TOKEN_SUBPROTOCOL)]
                token = carried[len(TOKEN_SUBPROTOCOL) :].encode("latin-1")
                headers = [*(h for h in headers if h[0] != b"authorization"), (b"authorization", b"Bearer " + token)]
            if carried is not None or not self.authenticates_in_band(path) or _has_authorization(headers):
                try:
                    identity = await self.authenticator.authenticate(path, headers)
                except GatewayError as exc:
                    # Before the handshake: the server answers HTTP 403 (the reason is for logs).
                    await send({"type": "websocket.close", "code": 1008, "reason": exc.message[:120]})
                    return
                if identity is not None:
                    scope[IDENTITY_SCOPE_KEY] = identity
        await self.app(scope, receive, send)
