"""`GET /healthz` (the process answers) and `GET /readyz` (start-up finished, calls can be served)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse

from gateway.lifecycle import Components

__all__ = ["Readiness", "healthz"]


async def healthz(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


class Readiness:
    """Flipped by the lifespan: ready after start-up, not ready again once shutdown begins.

    The body also holds each component's status (`Component.status`, e.g. "registry": {"reachable":
    false, ...}): things worth seeing that do not make the gateway unready (the last known routes
    keep serving).
    """

    def __init__(self, components: Components) -> None:
        self.ready = False
        self.reason = "starting"
        self._components = components

    async def readyz(self, request: Request) -> JSONResponse:
        extra = self._components.statuses()
        if self.ready:
            return JSONResponse({"status": "ready", **extra})
        return JSONResponse({"status": "not ready", "reason": self.reason, **extra}, status_code=503)
