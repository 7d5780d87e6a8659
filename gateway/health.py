"""`GET /healthz` (the process answers) and `GET /readyz` (start-up finished, calls can be served)."""

from __future__ import annotations

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

    async def readyz(self, request: Request) -> JSONResponse:
        if self.ready:
            return JSONResponse({"status": "ready"})
        return JSONResponse({"status": "not ready", "reason": self.reason}, status_code=503)
