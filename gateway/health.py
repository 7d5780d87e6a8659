"""`GET /healthz` (the process answers) and `GET /readyz` (start-up finished, calls can be served)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse

__all__ = ["Readiness", "healthz"]


async def healthz(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


class Readiness:
    """Flipped by the lifespan: ready after start-up, not ready again once shutdown begins."""

    def __init__(self) -> None:
        self.ready = False
        self.reason = "starting"
        # Extra sections of the body, e.g. "registry": {"reachable": false, ...}: things worth
        # seeing that do not make the gateway unready (the last known routes keep serving).
        self.details: dict[str, Callable[[], Any]] = {}

    async def readyz(self, request: Request) -> JSONResponse:
        extra = {name: detail() for name, detail in self.details.items()}
        if self.ready:
            return JSONResponse({"status": "ready", **extra})
        return JSONResponse({"status": "not ready", "reason": self.reason, **extra}, status_code=503)
