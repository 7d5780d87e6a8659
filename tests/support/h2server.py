"""A scriptable HTTP/2 server (the h2 library on asyncio) for protocol cases a grpcio server never
produces: non-gRPC answers, resets, GOAWAY, padding, CONTINUATION, tiny windows, stream limits."""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.settings


@dataclass
class Request:
    stream_id: int
    headers: dict[bytes, bytes]
    body: bytearray = field(default_factory=bytearray)
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    reset: asyncio.Event = field(default_factory=asyncio.Event)
    reset_code: int | None = None


Handler = Callable[["ServerConnection", Request], Awaitable[None]]


class ServerConnection(asyncio.Protocol):
    def __init__(self, server: H2Server) -> None:
        self.server = server
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding=None))
        self.transport: asyncio.Transport | None = None
        self.requests: dict[int, Request] = {}
        self.window_open = asyncio.Event()
        self.pings_acked = 0
        self.goaway_code: int | None = None  # the error code of the client's GOAWAY, once it sends one
        self.goaway = asyncio.Event()
        self.tasks: set[asyncio.Task[None]] = set()

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.conn.initiate_connection()
        if self.server.settings:
            self.conn.update_settings(self.server.settings)
        self.flush()
        self.server.connections.append(self)

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data and self.transport is not None:
            self.transport.write(data)

    def data_received(self, data: bytes) -> None:
        for event in self.conn.receive_data(data):
            if isinstance(event, h2.events.RequestReceived):
                request = Request(event.stream_id, dict(event.headers))
                self.requests[event.stream_id] = request
                self.server.seen.append(request)
                self.server.active += 1
                self.server.max_active = max(self.server.max_active, self.server.active)
                task = asyncio.ensure_future(self._run(request))
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)
            elif isinstance(event, h2.events.DataReceived):
                request = self.requests[event.stream_id]
                request.body += event.data
                if self.server.acknowledge_data:
                    self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.StreamEnded):
                self.requests[event.stream_id].ended.set()
            elif isinstance(event, h2.events.StreamReset):
                reset = self.requests.get(event.stream_id)
                if reset is not None:
                    reset.reset_code = event.error_code
                    reset.reset.set()
            elif isinstance(event, h2.events.WindowUpdated):
                self.window_open.set()
            elif isinstance(event, h2.events.PingAckReceived):
                self.pings_acked += 1
            elif isinstance(event, h2.events.ConnectionTerminated):
                self.goaway_code = event.error_code
                self.goaway.set()
        self.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        for request in self.requests.values():
            request.reset.set()

    async def _run(self, request: Request) -> None:
        try:
            await self.server.handler(self, request)
        except Exception:
            pass
        finally:
            self.server.active -= 1
            self.flush()

    # --- helpers for handlers -------------------------------------------------------------------

    def respond(self, stream_id: int, headers: list[tuple[bytes, bytes]], *, end: bool = False, **kw: Any) -> None:
        self.conn.send_headers(stream_id, headers, end_stream=end, **kw)
        self.flush()

    async def send_data(self, stream_id: int, data: bytes, *, end: bool = False, pad: int | None = None) -> None:
        """Send within the client's flow-control windows, waiting for WINDOW_UPDATE as needed."""
        while True:
            window = min(self.conn.local_flow_control_window(stream_id), self.conn.max_outbound_frame_size)
            size = min(window, len(data))
            if size or not data:
                chunk, data = data[:size], data[size:]
                self.conn.send_data(stream_id, chunk, end_stream=end and not data, pad_length=pad)
                self.flush()
                if not data:
                    return
                continue
            self.window_open.clear()
            await self.window_open.wait()

    def raw(self, data: bytes) -> None:
        assert self.transport is not None
        self.flush()
        self.transport.write(data)


def grpc_frame(payload: bytes, flags: int = 0) -> bytes:
    return struct.pack(">BI", flags, len(payload)) + payload


GRPC_HEADERS = [(b":status", b"200"), (b"content-type", b"application/grpc")]


class H2Server:
    def __init__(self, handler: Handler, settings: dict[int, int] | None = None) -> None:
        self.handler = handler
        self.settings = settings or {}
        self.acknowledge_data = True
        self.connections: list[ServerConnection] = []
        self.seen: list[Request] = []
        self.active = 0
        self.max_active = 0
        self.port = 0
        self._server: asyncio.AbstractServer | None = None

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[H2Server]:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: ServerConnection(self), "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        try:
            yield self
        finally:
            self._server.close()
            for connection in self.connections:
                if connection.transport is not None:
                    connection.transport.close()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


SETTINGS = h2.settings.SettingCodes
