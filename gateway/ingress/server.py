"""Native gRPC ingress: the gateway's own HTTP/2 server (h2c, prior knowledge) proxying every call to the upstreams.

Why not grpc.aio's server: its machinery costs ~150 us of CPU per call, plus an async generator
and a pump task per proxied call, about as much again. The four call kinds differ on the wire
only in how many messages each side sends, so the proxy works at the frame level and needs no
descriptors: request headers open an upstream stream through the gateway's HTTP/2 client (the
service in :path picks the upstream).

This module is the listener. The HTTP/2 connection itself (frames, settings, connection windows)
is gateway.http2.server.ServerConnection; each of its streams is a call (gateway/ingress/call.py).

Shutdown: GOAWAY (new streams are refused), running calls finish within the grace period, then
the rest are cancelled.

Server reflection (gateway/reflection/) is answered here by the gateway itself, for every routed
plugin at once (gateway/ingress/local.py): a client lists and describes the port's services as it would
a single gRPC server's.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Mapping
from typing import Any

from gateway.http2.server import ServerConnection
from gateway.ingress.call import IngressCall, OpenLocal, start_call
from gateway.ingress.local import LocalCall, LocalMethod
from gateway.proxy import ProxyConfig

__all__ = ["IngressServer"]

logger = logging.getLogger(__name__)


def _listening_socket(host: str, port: int) -> socket.socket:
    """A listening socket with SO_REUSEPORT, so every worker process can listen on grpcPort."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def _opener(method: LocalMethod) -> OpenLocal:
    def open_local(
        conn: ServerConnection[IngressServer], stream_id: int, path: str, scope: dict[str, Any]
    ) -> IngressCall:
        return LocalCall(conn, stream_id, path, method, scope)

    return open_local


class IngressServer:
    """The listener: one ServerConnection per client, whose streams become calls (gateway/ingress/call.py)."""

    def __init__(
        self,
        config: ProxyConfig,
        *,
        host: str,
        port: int,
        grace: float = 5.0,
        local: Mapping[str, LocalMethod] | None = None,
    ) -> None:
        self.config = config
        self.grace = grace  # seconds running calls get to finish at shutdown
        # Call paths the gateway answers itself (server reflection) instead of proxying them.
        self.local: dict[str, OpenLocal] = {path: _opener(method) for path, method in (local or {}).items()}
        self.address = f"{host}:{port}"
        self.max_message_bytes = config.max_message_bytes
        self.port = 0
        self.connections: set[ServerConnection[IngressServer]] = set()
        self.closing = False
        self._host = host.strip("[]")
        self._requested_port = port
        self._server: asyncio.AbstractServer | None = None
        self._idle: asyncio.Event | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            sock = _listening_socket(self._host, self._requested_port)
        except OSError as exc:
            raise OSError(f"cannot listen for native gRPC on {self.address}: {exc}") from None
        self.port = sock.getsockname()[1]
        self._server = await loop.create_server(lambda: ServerConnection(self), sock=sock, backlog=1024)
        self._idle = asyncio.Event()
        self._idle.set()
        logger.info("native gRPC ingress listening on %s", self.address)

    def connection_opened(self, conn: ServerConnection[IngressServer]) -> None:
        self.connections.add(conn)
        if self.closing:
            conn.go_away()

    def start_stream(
        self,
        conn: ServerConnection[IngressServer],
        stream_id: int,
        headers: list[tuple[bytes, bytes]],
        end_stream: bool,
    ) -> None:
        start_call(conn, stream_id, headers, end_stream)

    def connection_closed(self, conn: ServerConnection[IngressServer]) -> None:
        self.connections.discard(conn)
        if not self.connections and self._idle is not None:
            self._idle.set()

    def status(self) -> None:
        return None

    async def close(self) -> None:
        """Graceful: GOAWAY to every client; calls still running after `grace` seconds are cancelled."""
        grace = self.grace
        server = self._server
        if server is None:
            return
        self._server = None
        self.closing = True
        server.close()  # no new connections
        for conn in list(self.connections):
            conn.go_away()
        if self.connections and self._idle is not None:
            self._idle.clear()
            try:
                await asyncio.wait_for(self._idle.wait(), grace)
            except TimeoutError:
                logger.warning("native gRPC calls still running after %g s: cancelled", grace)
        for conn in list(self.connections):
            conn.abort_calls()
        # Let the closed transports report connection_lost before the loop moves on.
        await asyncio.sleep(0)
