"""`Server`: a gRPC server for plugins on the HTTP/2 core the gateway's ingress uses (common/http2/).

Why not grpc.aio's server: a bare unary call costs its process ~260 us of CPU there (bench/README.md,
"Cache plugins"), more than the Redis or SQL round trip a plugin makes for it; `python -m
bench.rpc_server` compares the two. This server is a drop-in for the part of grpc.aio.Server that
generated code, grpc's health and reflection servicers and the plugin SDK use (it is a
grpc.aio.Server, so `enable_server_reflection` picks its asyncio servicer): handlers are added
the same ways, interceptors run as grpc.aio runs them, servicers get a grpc.aio.ServicerContext
(common/rpc/context.py) and statuses follow grpcio's.

Each client connection is a ServerConnection; each of its streams a ServedCall (common/rpc/call.py)
whose handler runs in a task of its own (common/rpc/dispatch.py).

`stop(grace)`: GOAWAY, so clients open no new streams here (one opened anyway is refused with
REFUSED_STREAM, which clients retry elsewhere); the calls already accepted run on for `grace`
seconds, and only those still running then are cancelled.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import socket
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, cast

import grpc
import grpc.aio

from common.http2.codes import ErrorCode
from common.http2.headers import decode_timeout
from common.http2.server import ServerConnection
from common.http2.writer import rst_stream
from common.rpc.call import ServedCall
from common.rpc.connection import RpcConnection
from common.rpc.dispatch import run_call
from common.rpc.wire import (
    ACCEPT_ENCODING,
    RESPONSE_START,
    Metadata,
    RequestMessages,
    request_metadata,
    status_block,
)

__all__ = ["DEFAULT_MAX_MESSAGE_BYTES", "Server"]

logger = logging.getLogger(__name__)

DEFAULT_MAX_MESSAGE_BYTES = 4 * 1024 * 1024  # grpc's default receive limit
_UNWIND_SECONDS = 5.0  # how long stop() waits for cancelled handlers to return
_ACCEPT_ENCODING_FIELD = b"\x00\x14grpc-accept-encoding" + bytes((len(ACCEPT_ENCODING),)) + ACCEPT_ENCODING.encode()


class _CallDetails(grpc.HandlerCallDetails):
    """What a generic handler and a server interceptor are told of a call."""

    __slots__ = ("invocation_metadata", "method")

    def __init__(self, method: str, invocation_metadata: Metadata) -> None:
        self.method = method
        self.invocation_metadata = invocation_metadata


class Server(grpc.aio.Server):
    def __init__(
        self,
        *,
        interceptors: Sequence[grpc.aio.ServerInterceptor[Any, Any]] = (),
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    ) -> None:
        self.max_message_bytes = max_message_bytes
        self._interceptors = tuple(interceptors)
        self._methods: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}  # registered methods, by path
        self._generic: list[grpc.GenericRpcHandler[Any, Any]] = []
        self._sockets: list[socket.socket] = []
        self._listeners: list[asyncio.AbstractServer] = []
        self.connections: set[ServerConnection[Any]] = set()
        self._tasks: set[asyncio.Task[None]] = set()  # handler tasks still running
        self._closing = False
        self._idle = asyncio.Event()
        self._terminated = asyncio.Event()

    # --- grpc.aio.Server ------------------------------------------------------------------------

    def add_generic_rpc_handlers(self, generic_rpc_handlers: Iterable[grpc.GenericRpcHandler[Any, Any]]) -> None:
        self._generic.extend(generic_rpc_handlers)

    def add_registered_method_handlers(self, service_name: str, method_handlers: dict[str, Any]) -> None:
        for name, handler in method_handlers.items():
            self._methods[f"/{service_name}/{name}"] = handler

    def add_insecure_port(self, address: str) -> int:
        """Bind `address` ("host:port", port 0 picks one) now; serve it from `start()`. Returns the port."""
        host, _, port_text = address.rpartition(":")
        host = host.strip("[]")
        try:
            family, kind, proto, _, bind_to = socket.getaddrinfo(
                host or None, int(port_text), type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
            )[0]
            sock = socket.socket(family, kind, proto)
        except (OSError, ValueError) as exc:
            raise OSError(f"cannot listen on {address}: {exc}") from None
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # not SO_REUSEPORT: a taken port fails
            sock.bind(bind_to)
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            raise OSError(f"cannot listen on {address}: {exc.strerror or exc} (is the port in use?)") from None
        self._sockets.append(sock)
        return int(sock.getsockname()[1])

    def add_secure_port(self, address: str, server_credentials: grpc.ServerCredentials) -> int:
        raise NotImplementedError("common.rpc.Server serves h2c only; TLS ends in front of plugins")

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        for sock in self._sockets:
            listener = await loop.create_server(lambda: RpcConnection(self), sock=sock, backlog=1024)
            self._listeners.append(listener)
        self._sockets.clear()
        self._idle.set()

    async def stop(self, grace: float | None = None) -> None:
        if self._closing:
            await self._terminated.wait()
            return
        self._closing = True
        for listener in self._listeners:
            listener.close()  # no new connections
        for sock in self._sockets:  # bound, never started
            sock.close()
        for conn in list(self.connections):
            conn.go_away()
        if self.connections and grace:
            self._idle.clear()
            try:
                await asyncio.wait_for(self._idle.wait(), grace)
            except TimeoutError:
                logger.warning("gRPC calls still running after %g s: cancelled", grace)
        for conn in list(self.connections):
            conn.abort_calls()
        if self._tasks:
            # The cancelled handlers unwind (their finally blocks run) before stop() returns.
            _, stuck = await asyncio.wait(list(self._tasks), timeout=_UNWIND_SECONDS)
            if stuck:
                logger.warning("%d gRPC handlers ignored their cancellation: left running", len(stuck))
        self._terminated.set()

    async def wait_for_termination(self, timeout: float | None = None) -> bool:
        if self._terminated.is_set():
            return True
        try:
            await asyncio.wait_for(self._terminated.wait(), timeout)
        except TimeoutError:
            return False
        return True

    # --- ServerOwner (common.http2.server) --------------------------------------------------------

    def connection_opened(self, conn: ServerConnection[Any]) -> None:
        self.connections.add(conn)
        self._idle.clear()
        if self._closing:
            conn.go_away()

    def connection_closed(self, conn: ServerConnection[Any]) -> None:
        self.connections.discard(conn)
        if not self.connections:
            self._idle.set()

    def start_stream(
        self, conn: ServerConnection[Any], stream_id: int, headers: list[tuple[bytes, bytes]], end_stream: bool
    ) -> None:
        path = method = content_type = b""
        encoding = b"identity"
        timeout: float | None = None
        for name, value in headers:
            if name == b":path":
                path = value
            elif name == b":method":
                method = value
            elif name == b"content-type":
                content_type = value
            elif name == b"grpc-timeout":
                timeout = decode_timeout(value)  # a malformed one is ignored, as grpc servers do
            elif name == b"grpc-encoding":
                encoding = value.strip().lower()
        if not path or not method:
            conn.write(rst_stream(stream_id, ErrorCode.PROTOCOL_ERROR))  # malformed request
            return
        if method != b"POST" or not content_type.startswith(b"application/grpc"):
            status = b"405" if method != b"POST" else b"415"
            conn.write_headers(stream_id, b"\x08\x03" + status, end_stream=True)  # :status, static name 8
            if not end_stream:
                conn.write(rst_stream(stream_id, ErrorCode.NO_ERROR))
            return
        if encoding not in (b"identity", b"gzip"):
            block = status_block(
                grpc.StatusCode.UNIMPLEMENTED, f"grpc-encoding {encoding.decode('latin-1')!r} is not supported"
            )
            # No RST_STREAM after it, as in ServedCall.finish: grpcio's client would report INTERNAL.
            conn.write_headers(stream_id, RESPONSE_START + _ACCEPT_ENCODING_FIELD + block, end_stream=True)
            return
        reader = RequestMessages(self.max_message_bytes, gzip=encoding == b"gzip")
        conn = cast(RpcConnection, conn)  # the only kind start() makes
        call = ServedCall(conn, stream_id, path.decode("latin-1"), request_metadata(headers), reader, timeout)
        conn.streams[stream_id] = call
        if end_stream:
            call.on_data(b"", True)
        task = call.task = conn.loop.create_task(run_call(call, self._find_handler))
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)

    # --- handlers ---------------------------------------------------------------------------------

    async def _find_handler(self, path: str, metadata: Metadata) -> grpc.RpcMethodHandler[Any, Any] | None:
        if not self._interceptors:
            handler = self._methods.get(path)
            return handler if handler is not None else self._lookup(_CallDetails(path, metadata))
        return await self._intercepted(iter(self._interceptors), _CallDetails(path, metadata))

    async def _intercepted(
        self, interceptors: Iterator[grpc.aio.ServerInterceptor[Any, Any]], details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        """The first interceptor is the outermost, as in grpc.aio; the innermost continuation looks up."""
        interceptor = next(interceptors, None)
        if interceptor is None:
            return self._lookup(details)
        # grpc-stubs say a continuation always finds a handler; it answers None for an unknown method.
        continuation: Any = functools.partial(self._intercepted, interceptors)
        return await interceptor.intercept_service(continuation, details)

    def _lookup(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = self._methods.get(details.method)
        if handler is not None:
            return handler
        for generic in self._generic:
            handler = generic.service(details)
            if handler is not None:
                return handler
        return None
