"""Native gRPC ingress: a grpc.aio server that proxies any method, of any call kind, to the upstreams.

One generic handler serves every path with a bytes-in, bytes-out stream-stream behaviour: on the
wire the four call kinds differ only in how many messages each side sends, so the proxy needs no
descriptors. Metadata, deadline, cancellation and the final status (with trailing metadata such as
grpc-status-details-bin) pass through.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import logging
from collections.abc import AsyncIterator, Iterable
from typing import TYPE_CHECKING
from urllib.parse import unquote

import grpc

from gateway.errors import GatewayError
from gateway.grpcweb.framing import encode_frame
from gateway.grpcweb.metadata import response_metadata
from gateway.upstream.headers import encode_header
from gateway.upstream.http2 import Http2Stream, StreamError
from gateway.upstream.outcome import outcome
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
            client = self.pool.route(service).pick().client
        except GatewayError as exc:
            await context.abort(exc.code, exc.message)
        timeout = context.time_remaining()
        if self.max_timeout is not None:
            timeout = self.max_timeout if timeout is None else min(timeout, self.max_timeout)
        try:
            stream = await client.open(path, _encode_metadata(context.invocation_metadata() or ()), timeout)
        except StreamError as exc:
            message = (
                f"{service} is unavailable: {exc.message}" if exc.code is grpc.StatusCode.UNAVAILABLE else exc.message
            )
            await context.abort(exc.code, message)
        pump = asyncio.ensure_future(_pump(requests, stream))
        try:
            frame = await stream.read()
            if stream.headers is not None and (initial := _decode_metadata(response_metadata(stream.headers))):
                await context.send_initial_metadata(initial)
            while frame is not None:
                yield frame[5:]
                frame = await stream.read()
        finally:
            # The client cancelled or the deadline passed: the handler is cancelled, so is the upstream call.
            pump.cancel()
            if not stream.ended:
                stream.cancel()
        result = outcome(stream, service)
        if result.metadata:
            context.set_trailing_metadata(_decode_metadata(result.metadata))
        if result.code is not grpc.StatusCode.OK:
            context.set_code(result.code)
            context.set_details(unquote(result.message.decode("ascii", "replace")))


async def _pump(requests: AsyncIterator[bytes], stream: Http2Stream) -> None:
    """Forward the client's messages upstream, then half-close."""
    async for message in requests:
        await stream.send(encode_frame(message), end_stream=False)
    await stream.send(b"", end_stream=True)


def _encode_metadata(metadata: Iterable[tuple[str, str | bytes]]) -> bytes:
    parts = []
    for key, value in metadata:
        if key in _NOT_FORWARDED:
            continue
        if isinstance(value, bytes):
            value = base64.b64encode(value).rstrip(b"=").decode("ascii")
        parts.append(encode_header(key.encode("ascii"), value.encode("latin-1")))
    return b"".join(parts)


def _decode_metadata(metadata: Iterable[tuple[bytes, bytes]]) -> tuple[tuple[str, str | bytes], ...]:
    pairs: list[tuple[str, str | bytes]] = []
    for name, value in metadata:
        key = name.decode("ascii")
        if key.endswith("-bin"):
            pairs.append((key, base64.b64decode(value + b"=" * (-len(value) % 4))))
        else:
            pairs.append((key, value.decode("latin-1")))
    return tuple(pairs)


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
