"""Native gRPC ingress: a grpc.aio server that proxies any method, of any call kind, to the upstreams.

One generic handler serves every path with a bytes-in, bytes-out stream-stream behaviour: on the
wire the four call kinds differ only in how many messages each side sends, so the proxy needs no
descriptors. Metadata, deadline, cancellation and the final status (with trailing metadata such as
grpc-status-details-bin) pass through.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, cast

import grpc

from gateway.errors import GatewayError
from gateway.upstream.pool import UpstreamPool

__all__ = ["IngressServer"]

if TYPE_CHECKING:
    _GenericHandler = grpc.GenericRpcHandler[bytes, bytes]
else:  # grpc's classes are generic only in the stubs
    _GenericHandler = grpc.GenericRpcHandler

logger = logging.getLogger(__name__)

# Set by grpc itself on the upstream call, or meaningless on the next hop.
_NOT_FORWARDED = frozenset({"user-agent", "grpc-accept-encoding", "grpc-encoding", "grpc-timeout", "te", "host"})


class _ProxyHandler(_GenericHandler):
    def __init__(self, pool: UpstreamPool, max_timeout: float | None) -> None:
        self.pool = pool
        self.max_timeout = max_timeout
        self._handlers: dict[str, grpc.RpcMethodHandler[bytes, bytes]] = {}

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler[bytes, bytes] | None:
        path = handler_call_details.method
        handler = self._handlers.get(path)
        if handler is None:
            service = path[1:].partition("/")[0]
            if service not in self.pool:
                return None  # grpc answers UNIMPLEMENTED
            handler = self._handlers[path] = grpc.stream_stream_rpc_method_handler(functools.partial(self._proxy, path))
        return handler

    async def _proxy(
        self, path: str, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext[bytes, bytes]
    ) -> AsyncIterator[bytes]:
        service = path[1:].partition("/")[0]
        try:
            endpoint = self.pool.route(service).pick()
        except GatewayError as exc:
            await context.abort(exc.code, exc.message)
        metadata = tuple(
            (key, value) for key, value in (context.invocation_metadata() or ()) if key not in _NOT_FORWARDED
        )
        timeout = context.time_remaining()
        if self.max_timeout is not None:
            timeout = self.max_timeout if timeout is None else min(timeout, self.max_timeout)
        call = endpoint.stream_stream(path)(requests, metadata=metadata, timeout=timeout)
        try:
            initial = await call.initial_metadata()
            if initial:
                await context.send_initial_metadata(initial)
            async for reply in call:
                yield reply
            code, details, trailing = await call.code(), await call.details(), await call.trailing_metadata()
        except grpc.aio.AioRpcError as exc:
            code, details = exc.code(), exc.details() or ""
            trailing = cast("grpc.aio.Metadata", exc.trailing_metadata())  # at run time; the stubs say tuple
            if code is grpc.StatusCode.UNAVAILABLE and not exc.initial_metadata():
                details = f"{service} is unavailable at {endpoint.address}: {details}"
        finally:
            # The client cancelled or the deadline passed: the handler is cancelled, so is the upstream.
            if not call.done():
                call.cancel()
        if trailing:
            context.set_trailing_metadata(tuple(trailing))
        if code is not grpc.StatusCode.OK:
            context.set_code(code)
            context.set_details(details or "")


class IngressServer:
    def __init__(
        self, pool: UpstreamPool, *, host: str, port: int, max_message_bytes: int, max_timeout: float | None = None
    ) -> None:
        self.pool = pool
        self.max_timeout = max_timeout
        self.address = f"{host}:{port}"
        self.max_message_bytes = max_message_bytes
        self._server: grpc.aio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", self.max_message_bytes),
                ("grpc.max_send_message_length", self.max_message_bytes),
            ]
        )
        server.add_generic_rpc_handlers((_ProxyHandler(self.pool, self.max_timeout),))
        self.port = server.add_insecure_port(self.address)
        if self.port == 0:
            raise OSError(f"cannot listen for native gRPC on {self.address}")
        await server.start()
        self._server = server
        logger.info("native gRPC ingress listening on %s", self.address)

    async def stop(self, grace: float) -> None:
        if self._server is not None:
            await self._server.stop(grace)
            self._server = None
