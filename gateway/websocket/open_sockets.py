"""The open WebSockets of one app, so that a shutdown can drain them.

Every WebSocket endpoint registers its sockets here: grpc-websockets (one call per socket,
grpcws.py), upf-mux.v1 (many calls per socket, mux.py) and /api/events (gateway/events/endpoint.py),
after `Upgrade.accept` (handshake.py). Made by gateway/app.py and handed to the endpoints;
`drain()` runs once, at shutdown, before uvicorn's own shutdown (which would close every socket
with 1012 at once):

  1. `draining` is set: the endpoints refuse new upgrades (HTTP 503) and, on a mux socket, new calls.
  2. Every socket is told `going_away()`: one without a call in flight closes with 1001 at once;
     the others let their calls run on (a mux socket sends GOAWAY first) and close with 1001 when
     the last one ends.
  3. After `grace` seconds the sockets still open are cut: `cut` is set and their task cancelled;
     each ends its calls with UNAVAILABLE "the gateway is shutting down" and closes with 1001.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from typing import Protocol

__all__ = ["CLOSE_GOING_AWAY", "SHUTTING_DOWN", "Drainable", "OpenSockets"]

logger = logging.getLogger(__name__)

CLOSE_GOING_AWAY = 1001  # RFC 6455: the server is going down
SHUTTING_DOWN = "the gateway is shutting down"


class Drainable(Protocol):
    """What OpenSockets needs of a socket."""

    cut: bool  # set before OpenSockets cancels the socket's task: the cancellation is the drain's

    async def going_away(self) -> None:
        """The drain has begun: close now if no call is in flight, else once the last one ends."""


class OpenSockets:
    def __init__(self, grace: float) -> None:
        self.grace = grace
        self.draining = False
        self._open: dict[Drainable, asyncio.Task[object]] = {}
        self._kinds: dict[str, int] = {}
        self._empty = asyncio.Event()
        self._empty.set()

    def __len__(self) -> int:
        return len(self._open)

    def by_kind(self) -> dict[str, int]:
        """Open sockets per kind (grpc-websockets, upf-mux, events), for /metrics; every kind seen so far."""
        return dict(self._kinds)

    @contextlib.contextmanager
    def registered(self, socket: Drainable, kind: str) -> Iterator[None]:
        """While the socket is served; entered from the task that serves it (uvicorn's task for the
        connection), which a drain past its grace cancels. `kind`: the endpoint's protocol."""
        task = asyncio.current_task()
        assert task is not None
        self._open[socket] = task
        self._kinds[kind] = self._kinds.get(kind, 0) + 1
        self._empty.clear()
        try:
            yield
        finally:
            self._kinds[kind] -= 1
            self._open.pop(socket, None)
            if not self._open:
                self._empty.set()

    async def drain(self) -> None:
        """Close idle sockets now, wait up to the grace for calls in flight, then cut the rest."""
        self.draining = True
        if self._open:
            logger.info("WebSockets: draining %d socket(s), up to %g s for their calls", len(self._open), self.grace)
        for socket in list(self._open):
            await socket.going_away()
        if await self._wait(self.grace):
            return
        remaining = list(self._open.items())
        logger.warning("WebSockets: cutting %d socket(s) with calls running after the drain grace", len(remaining))
        for socket, task in remaining:
            socket.cut = True
            task.cancel()
        # Briefly: a cut socket only sends its calls' final status; a client that takes nothing is
        # left to uvicorn's shutdown, which closes the connections.
        await self._wait(1.0)

    async def _wait(self, seconds: float) -> bool:
        try:
            async with asyncio.timeout(seconds):
                await self._empty.wait()
        except TimeoutError:
            return False
        return True
