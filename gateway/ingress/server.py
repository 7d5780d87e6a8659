"""Native gRPC ingress: the gateway's own HTTP/2 server (h2c, prior knowledge) proxying every call to the upstreams.

Why not grpc.aio's server: its machinery costs ~150 us of CPU per call, plus an async generator
and a pump task per proxied call, about as much again. The four call kinds differ on the wire
only in how many messages each side sends, so the proxy works at the frame level and needs no
descriptors: request headers open an upstream stream through the gateway's HTTP/2 client (the
service in :path picks the upstream).

This module is the listener. The HTTP/2 connection itself (frames, settings, connection windows)
is common.http2.server.ServerConnection; each of its streams is a call (gateway/ingress/call.py).

Shutdown: GOAWAY (new streams are refused), running calls finish within the grace period, then
the rest are cancelled.

Server reflection (gateway/reflection/) is answered here by the gateway itself, for every routed
plugin at once (gateway/ingress/local.py): a client lists and describes the port's services as it would
a single gRPC server's.

Connections are counted with the HTTP port's (gateway/edge/guard.py, the `edge` settings): beyond
`maxConnections` a new one is closed at once; one from an address that holds its share
(`maxConnectionsPerClient`; IPv6: its /64) has its calls answered RESOURCE_EXHAUSTED, then GOAWAY.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Mapping
from typing import Any

from common.http2.server import ServerConnection
from gateway.edge.guard import Admission, EdgeGuard
from gateway.errors import TooManyConnections
from gateway.ingress.call import IngressCall, OpenLocal, refuse_call, start_call
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
        guard: EdgeGuard | None = None,
        local: Mapping[str, LocalMethod] | None = None,
    ) -> None:
        self.config = config
        self.grace = grace  # seconds running calls get to finish at shutdown
        self.guard = guard  # None: connections are not counted
        # What the guard was told of each connection: its client's key and the admission.
        self._admissions: dict[ServerConnection[IngressServer], tuple[str | None, Admission]] = {}
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
        if self.guard is not None:
            key = self.guard.client_key(conn.peer[0] if conn.peer else None)
            admission = self.guard.admit_connection(key)
            self._admissions[conn] = key, admission
            if admission is Admission.SERVER_FULL:
                peer = f"{conn.peer[0]}:{conn.peer[1]}" if conn.peer else "a client"
                logger.warning(
                    "closing a native gRPC connection from %s: %d connections held", peer, self.guard.connections
                )
                conn.close_transport()
                return
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
        admitted = self._admissions.get(conn)
        if admitted is not None and admitted[1] is Admission.CLIENT_FULL:
            # As the HTTP port answers 429: the client learns why, and is asked to go.
            refuse_call(conn, stream_id, end_stream, TooManyConnections("too many connections from this address"))
            conn.go_away()
            return
        start_call(conn, stream_id, headers, end_stream)

    def connection_closed(self, conn: ServerConnection[IngressServer]) -> None:
        admitted = self._admissions.pop(conn, None)
        if admitted is not None and self.guard is not None:
            self.guard.release_connection(*admitted)
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
