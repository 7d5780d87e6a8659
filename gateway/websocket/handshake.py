"""Before a WebSocket upgrade is accepted: the Origin check, the subprotocol, and refusals as HTTP answers."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from starlette.types import Scope, Send

__all__ = ["OriginPolicy", "choose_subprotocol", "refuse_upgrade"]


class OriginPolicy:
    """CORS does not protect WebSockets: a page on any site could open one with the user's cookies.

    An upgrade is allowed when `cors.allowOrigins` lists its Origin (or holds "*"), when the Origin
    is the gateway's own (its host is the Host header), or when there is none (not a browser:
    browsers always send it, so such a client carries no ambient cookies).
    """

    def __init__(self, allow_origins: Sequence[str]) -> None:
        self.any_origin = "*" in allow_origins
        self.origins = frozenset(origin.encode("latin-1") for origin in allow_origins if origin != "*")

    def allowed(self, headers: Iterable[tuple[bytes, bytes]]) -> bool:
        origin = host = None
        for name, value in headers:
            if name == b"origin":
                origin = value
            elif name == b"host":
                host = value
        if origin is None:
            return True
        if self.any_origin or origin in self.origins:
            return True
        # The gateway's own origin: a page it served (scheme aside, the Origin's host is the Host header).
        return host is not None and origin.partition(b"://")[2].lower() == host.lower()


def choose_subprotocol(scope: Scope, wanted: str) -> str | None:
    """The offered subprotocol that is `wanted` (compared without case), as the client spelled it."""
    return next((name for name in scope.get("subprotocols", ()) if name.lower() == wanted), None)


async def refuse_upgrade(scope: Scope, send: Send, status: int, body: bytes) -> None:
    """An HTTP answer instead of the upgrade (ASGI's websocket.http.response), else a bare 403."""
    if "websocket.http.response" in (scope.get("extensions") or {}):
        headers = [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode())]
        await send({"type": "websocket.http.response.start", "status": status, "headers": headers})
        await send({"type": "websocket.http.response.body", "body": body})
    else:
        await send({"type": "websocket.close", "code": 1008})  # before the accept, servers answer 403
