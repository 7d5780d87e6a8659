"""uvicorn's Config, carrying the edge limits to every process that serves (worker processes included)."""

from __future__ import annotations

from typing import Any

import uvicorn

from gateway.edge.guard import EdgeGuard, process_guard
from gateway.settings import EdgeSettings

__all__ = ["EdgeConfig"]


class EdgeConfig(uvicorn.Config):
    """A uvicorn Config with the gateway's edge limits; each process counts its own connections
    (with its native gRPC port: gateway/edge/guard.py).

    Worker processes get the Config pickled: the limits travel with it, the counts do not.
    """

    def __init__(self, app: Any, *, edge: EdgeSettings, **options: Any) -> None:
        super().__init__(app, **options)
        self.edge = edge
        self._guard: EdgeGuard | None = None

    @property
    def guard(self) -> EdgeGuard:
        if self._guard is None:
            self._guard = process_guard(self.edge)
        return self._guard

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_guard"] = None
        return state
