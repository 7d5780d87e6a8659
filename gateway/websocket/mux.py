"""upf-mux.v1: many gRPC calls of every kind on one WebSocket, so a browser is not held to six
HTTP/1.1 connections. gateway/websocket/MUX.md is the protocol. The endpoint is built from:

    mux_frames.py   the wire vocabulary: frame types, error and close codes, payload layouts
    mux_socket.py   MuxSocket: one socket's reader, the frames from the client, the socket's window
    mux_stream.py   MuxStream: one call's state and flow control, both ways
    mux_call.py     run_call: one call's task, placed through the shared call path and relayed
    mux_outbox.py   MuxOutbox: the one writer that sends what the calls queue

Flow control, and what the gateway holds per socket:
  - client -> upstream: the client may send a stream `streamWindow` bytes, and all streams together
    `connectionWindow` bytes, before the gateway gives credit back (WINDOW_UPDATE), which it does
    only once the upstream has taken the bytes. So what waits in the gateway for a slow upstream is
    bounded by the windows, and a client that sends past them is cut (1002).
  - upstream -> client: a stream reads its next message from the upstream only once the previous
    one has been queued, and queues DATA only while the client's window for it is open and the
    outbox has room; the rest waits in the upstream HTTP/2 stream, whose window the gateway
    reopens only as it reads. A stream the client does not read holds at most one message here and
    stops only its own upstream.
"""

from __future__ import annotations

from collections.abc import Sequence

from starlette.types import Receive, Scope, Send

from gateway.proxy import ProxyConfig
from gateway.websocket.grpcws import MESSAGE_SLACK
from gateway.websocket.handshake import Upgrade
from gateway.websocket.mux_frames import MAX_WINDOW, SUBPROTOCOL, Settings
from gateway.websocket.mux_socket import MuxSocket
from gateway.websocket.open_sockets import OpenSockets

__all__ = ["MuxEndpoint"]


class MuxEndpoint:
    """Mounted with WebSocketRoute on /api/mux."""

    def __init__(
        self,
        config: ProxyConfig,
        *,
        allow_origins: Sequence[str],
        sockets: OpenSockets | None = None,
        max_streams: int = 100,
        stream_window: int = 256 * 1024,
        connection_window: int = 1024 * 1024,
    ) -> None:
        self.config = config
        self.sockets = sockets if sockets is not None else OpenSockets(grace=10.0)
        self.upgrade = Upgrade(self.sockets, allow_origins, SUBPROTOCOL, required=True)
        max_message_bytes = config.max_message_bytes
        self.settings = Settings(
            max_streams=max_streams,
            max_message_bytes=max_message_bytes,
            stream_window=min(stream_window, MAX_WINDOW),
            connection_window=min(connection_window, MAX_WINDOW),
            max_frame_bytes=max_message_bytes + 5,  # one whole gRPC frame
        )
        self.max_size = max_message_bytes + MESSAGE_SLACK  # a WebSocket message (uvicorn's ws_max_size)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not await self.upgrade.accept(scope, receive, send):
            return
        socket = MuxSocket(self, scope, receive, send)
        with self.sockets.registered(socket, "upf-mux"):
            await socket.run()
