"""Before a WebSocket upgrade is accepted: the Origin check, the subprotocol, refusals as HTTP
answers, and the drain. Every WebSocket endpoint (grpc-websockets, upf-mux.v1, /api/events) starts
with `Upgrade.accept`; what follows it is the endpoint's own."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Sequence

from starlette.types import Receive, Scope, Send

from gateway.websocket.open_sockets import CLOSE_GOING_AWAY, SHUTTING_DOWN, OpenSockets

__all__ = ["OriginPolicy", "Upgrade", "choose_subprotocol", "refuse_upgrade"]


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


class Upgrade:
    """The steps every WebSocket endpoint takes before its socket is its own.

    An endpoint names its subprotocol and whether a client must offer it; `accept` does the rest,
    in this order: the Origin (HTTP 403), the subprotocol (HTTP 400 when `required` and not
    offered), a drain under way (HTTP 503), then the accept, echoing the subprotocol as the client
    spelled it (none when it was not offered). A drain that begins while the accept goes out closes
    the new socket at once with 1001. An accepted socket is then served under
    `sockets.registered(socket)`, so that a drain reaches it.
    """

    def __init__(self, sockets: OpenSockets, allow_origins: Sequence[str], subprotocol: str, *, required: bool) -> None:
        self.sockets = sockets
        self.origin_policy = OriginPolicy(allow_origins)
        self.subprotocol = subprotocol
        self.required = required
        self._missing = f"expected the {subprotocol} subprotocol (Sec-WebSocket-Protocol)\n".encode()

    async def accept(self, scope: Scope, receive: Receive, send: Send) -> bool:
        """Accept the upgrade, or refuse it: False when refused, closed at once, or the client left first."""
        if (await receive())["type"] != "websocket.connect":
            return False
        if not self.origin_policy.allowed(scope["headers"]):
            await refuse_upgrade(scope, send, 403, b"origin not allowed\n")
            return False
        subprotocol = choose_subprotocol(scope, self.subprotocol)
        if subprotocol is None and self.required:
            await refuse_upgrade(scope, send, 400, self._missing)
            return False
        if self.sockets.draining:
            await refuse_upgrade(scope, send, 503, b"the gateway is shutting down\n")
            return False
        await send({"type": "websocket.accept", "subprotocol": subprotocol})
        if self.sockets.draining:  # the drain began while the accept went out: it has told its sockets
            with contextlib.suppress(OSError):  # gone already: nothing to close
                await send({"type": "websocket.close", "code": CLOSE_GOING_AWAY, "reason": SHUTTING_DOWN})
            return False
        return True
