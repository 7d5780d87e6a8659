"""AccessLogMiddleware: one JSON access line per HTTP request (gateway/telemetry/access_log.py).

Outermost, so the line has the status the client got, errors rendered below included. A gRPC call
that came as an HTTP request (gRPC-Web, Connect) puts its fields on the request's line through the
slot left in the scope (gateway/telemetry/calls.py), so it is one line, not two. WebSockets pass
by: each call on one gets its own line when it ends.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.telemetry import ACCESS_SLOT, AccessSlot
from gateway.telemetry.access_log import request_id_from, write_line

__all__ = ["AccessLogMiddleware"]


class AccessLogMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        client: Callable[[Scope], str | None],
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.app = app
        self.client = client  # the client's address behind trusted proxies
        self.clock = clock

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = self.clock()
        slot = scope[ACCESS_SLOT] = AccessSlot(request_id_from(scope["headers"]))
        status: int | None = None

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            fields: dict[str, Any] = {
                "requestId": slot.request_id,
                "protocol": "http",
                "client": self.client(scope),
                "httpMethod": scope["method"],
                "path": scope["path"],  # never the query string: it may carry a token
                "httpStatus": status,  # None: the request ended without an answer (the client left)
            }
            fields.update(slot.fields)
            fields["durationMs"] = round((self.clock() - started) * 1000, 3)
            write_line(fields)
