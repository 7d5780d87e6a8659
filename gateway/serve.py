"""Running the gateway: uvicorn for HTTP (gRPC-Web, REST) with the native gRPC ingress on the same loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import signal
import socket
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import uvicorn
from uvicorn.supervisors import multiprocess

from common.auth.revocations import Revocations
from gateway.app import create_app
from gateway.edge import EdgeConfig, EdgeHttpToolsProtocol, EdgeWebSocketProtocol
from gateway.settings import CONFIG_ENV, GatewaySettings
from gateway.websocket import max_websocket_message

__all__ = ["run_gateway", "serve_gateway"]

logger = logging.getLogger(__name__)


def _uvicorn_options(settings: GatewaySettings) -> dict[str, object]:
    return {
        "host": settings.host,
        "port": settings.http_port,
        "log_level": settings.log_level,
        "access_log": False,  # the gateway's own, in JSON (accessLog: gateway/middleware/access_log.py)
        # httptools, with writes corked (gateway/corking.py) and limits on request heads, slow clients
        # and connections per client (gateway/edge/, settings.edge).
        "http": EdgeHttpToolsProtocol,
        "loop": "uvloop",
        "lifespan": "on",
        # Long server streams must not be cut by the gateway (grpcwebproxy's 10 s write timeout, Envoy's 15 s).
        "timeout_keep_alive": 75,
        # At least the WebSocket drain's grace (gateway/websocket/grpcws.py), so what uvicorn waits
        # for after the drain is never given less time than the calls the drain let finish.
        "timeout_graceful_shutdown": max(10, math.ceil(settings.websocket.drain_grace)),
        "server_header": False,
        # X-Forwarded-For is for the gateway's own policies to judge (trusted proxies are its config),
        # not for uvicorn to apply to every request.
        "proxy_headers": False,
        # grpc-websockets (gateway/websocket/): the websockets sans-I/O protocol reads no further from
        # a socket while a message waits for the app, which is the bridge's flow control; a message
        # past the limit closes the socket with 1009; server pings keep idle sockets open behind proxies.
        "ws": EdgeWebSocketProtocol,  # uvicorn's websockets-sansio, counted per client (gateway/edge/)
        "ws_max_size": max_websocket_message(settings.max_message_bytes),
        "ws_ping_interval": settings.websocket.ping_interval,
        "ws_ping_timeout": settings.websocket.ping_timeout,
        # No permessage-deflate, though browsers offer it: its zlib state costs ~35 KiB per socket
        # (measured, bench/ws_idle.py), more than the rest of an idle socket, and gRPC messages are
        # protobuf (compressed with grpc-encoding when worth it), which gains little from it.
        "ws_per_message_deflate": False,
    }


class _WebSocketHandshakeLines(logging.Filter):
    """Drops the lines logged per WebSocket connection when the access log is off.

    uvicorn logs every handshake (`<client> - "WebSocket /path" [accepted]`, or its status), and the
    websockets protocol it drives logs "connection open" / "connection closed", all on uvicorn.error
    at INFO whatever `access_log` says: they are access-log lines, so accessLog false silences them
    too, and logLevel info stays about the gateway, not about each client.
    """

    _PER_CONNECTION = frozenset({"connection open", "connection closed", "connection rejected (%d %s)"})

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.msg
        if not isinstance(message, str):
            return True
        return not (message.startswith('%s - "WebSocket %s"') or message in self._PER_CONNECTION)


def _quiet_websocket_handshakes(access_log: bool) -> None:
    """Installed in each process that serves (workers configure logging themselves), once."""
    if access_log:
        return
    error_log = logging.getLogger("uvicorn.error")
    if not any(isinstance(existing, _WebSocketHandshakeLines) for existing in error_log.filters):
        error_log.addFilter(_WebSocketHandshakeLines())


class _Server(uvicorn.Server):
    """uvicorn's server, but a SIGTERM or SIGINT that ends in a graceful shutdown exits with 0.

    uvicorn raises the signal again once it has shut down, so the process dies "by signal" (exit
    143) after a perfectly clean stop; orchestrators then report a failure.

    It also drains the app's WebSockets (`drain`, the app's state.drain) before uvicorn's own
    shutdown: that one first tells every connection to shut down, which closes WebSockets with 1012
    at once, and only then waits for tasks and runs the lifespan's shutdown.
    """

    def __init__(self, config: uvicorn.Config, drain: Callable[[], Awaitable[None]] | None = None) -> None:
        super().__init__(config)
        self._drain = drain

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        # uvicorn's access log is off (the gateway writes its own); its handshake lines follow accessLog.
        _quiet_websocket_handshakes(bool(self._app_state("access_log")))
        await super().startup(sockets)

    def _app_state(self, name: str) -> Any:
        """A hook (or a setting) of the loaded app's state (a worker process loads the app itself)."""
        app = self.config.loaded_app if self.config.loaded else None
        while app is not None:  # through any middleware uvicorn wrapped around it
            hook = getattr(getattr(app, "state", None), name, None)
            if hook is not None:
                return hook
            app = getattr(app, "app", None)
        return None

    async def _wait(self, work: Awaitable[None], what: str) -> None:
        running = asyncio.ensure_future(work)
        # A second Ctrl+C (force_exit) stops waiting, as it does in uvicorn's own wait.
        while not running.done() and not self.force_exit:
            await asyncio.wait((running,), timeout=0.1)
        if not running.done():
            running.cancel()
        elif running.exception() is not None:
            logger.error("%s failed", what, exc_info=running.exception())

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        # First out of the proxy's rotation, ports still open (/readyz fails for shutdownDelay s);
        # only then closed to new connections and drained.
        leave_rotation = self._app_state("leave_rotation")
        if leave_rotation is not None:
            await self._wait(leave_rotation(), "leaving the rotation")
        self._drain = self._drain or self._app_state("drain")
        if self._drain is not None:
            # No new connections while draining (uvicorn's shutdown closes them again, harmlessly).
            for server in self.servers:
                server.close()
            for sock in sockets or []:
                sock.close()
            await self._wait(self._drain(), "draining WebSockets")
        await super().shutdown(sockets)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.handle_exit, sig, None)
        try:
            yield
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)


class _WorkerProcess(multiprocess.Process):
    """A uvicorn worker process whose server drains its own WebSockets before shutting down."""

    @property
    def server(self) -> uvicorn.Server:
        if self._server is None:
            self._server = _Server(config=self.config)
        return self._server


async def serve_gateway(settings: GatewaySettings, *, revocations: Revocations | None = None) -> None:
    """Serve one gateway process until it is told to stop (SIGINT / SIGTERM)."""
    app = create_app(settings, revocations=revocations)
    config = EdgeConfig(app, edge=settings.edge, **_uvicorn_options(settings))
    await _Server(config, drain=app.state.drain).serve()


def run_gateway(settings: GatewaySettings, config_path: str | None) -> None:
    if settings.workers == 1:
        uvicorn_loop = _uvicorn_options(settings)["loop"]
        if uvicorn_loop == "uvloop":
            import uvloop

            uvloop.run(serve_gateway(settings))
        else:
            asyncio.run(serve_gateway(settings))
        return
    # Several worker processes: each rebuilds the settings from the same file and UPF_* variables.
    # Native gRPC ingress listens in every worker (its listening socket sets SO_REUSEPORT).
    if config_path is not None:
        os.environ[CONFIG_ENV] = config_path
    config = EdgeConfig(
        "gateway.app:create_app_from_environment",
        edge=settings.edge,
        factory=True,
        workers=settings.workers,
        # The supervisor pings each worker and replaces one that does not answer in time. A spawned
        # worker answers only once it has imported the gateway, which on a busy host took over uvicorn's
        # default 5 s: workers were killed and respawned in a loop and the gateway never served.
        timeout_worker_healthcheck=30,
        **_uvicorn_options(settings),
    )
    # uvicorn.run's supervisor, with workers that drain (uvicorn's own would close every WebSocket
    # with 1012 at once). It makes its workers from the module's Process class, hence the swap.
    sock = config.bind_socket()
    original = multiprocess.Process
    multiprocess.Process = _WorkerProcess  # type: ignore[misc]
    try:
        multiprocess.Multiprocess(config, sockets=[sock]).run()
    finally:
        multiprocess.Process = original  # type: ignore[misc]
        sock.close()
