"""Upstream gRPC services: one grpc.aio channel per endpoint, picked per call.

Calls are made with raw bytes (no serializer), so the gateway proxies a service without its .proto.
Multi-callables are cached per method: creating one costs more than using it.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping, Sequence
from typing import TypeAlias

import grpc

from gateway.errors import UnknownService
from gateway.upstream.client import UpstreamClient

__all__ = ["Endpoint", "Route", "UpstreamPool"]

_UnaryStream: TypeAlias = "grpc.aio.UnaryStreamMultiCallable[bytes, bytes]"
_StreamStream: TypeAlias = "grpc.aio.StreamStreamMultiCallable[bytes, bytes]"


class Endpoint:
    """One replica of a service: its address, its channel, its cached multi-callables."""

    __slots__ = ("_pool", "_stream_stream", "_unary_stream", "address", "client")

    def __init__(self, address: str, pool: UpstreamPool) -> None:
        self.address = address
        self._pool = pool
        self.client = pool.client(address)
        self._unary_stream: dict[str, _UnaryStream] = {}
        self._stream_stream: dict[str, _StreamStream] = {}

    def unary_stream(self, path: str) -> _UnaryStream:
        # One request message and any number of responses covers unary and server-streaming
        # methods alike: they are the same on the wire.
        call = self._unary_stream.get(path)
        if call is None:
            call = self._unary_stream[path] = self._pool.channel(self.address).unary_stream(path, None, None)
        return call

    def stream_stream(self, path: str) -> _StreamStream:
        call = self._stream_stream.get(path)
        if call is None:
            call = self._stream_stream[path] = self._pool.channel(self.address).stream_stream(path, None, None)
        return call


class Route:
    """A service and its replicas, chosen round robin."""

    __slots__ = ("_cycle", "endpoints", "service")

    def __init__(self, service: str, endpoints: Sequence[Endpoint]) -> None:
        self.service = service
        self.endpoints = tuple(endpoints)
        self._cycle: Iterator[Endpoint] = itertools.cycle(self.endpoints)

    def pick(self) -> Endpoint:
        return next(self._cycle)


class UpstreamPool:
    """The routing table: fully qualified service name -> Route.

    Channels open on first use, inside the running event loop (grpc.aio binds a channel to its loop).
    """

    def __init__(self, upstreams: Mapping[str, Sequence[str]], *, max_message_bytes: int) -> None:
        self._options = [
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
        ]
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._clients: dict[str, UpstreamClient] = {}
        self._max_message_bytes = max_message_bytes
        self._routes = {
            service: Route(service, [Endpoint(address, self) for address in addresses])
            for service, addresses in upstreams.items()
        }

    def channel(self, address: str) -> grpc.aio.Channel:
        # Services that share a process share its channel (one HTTP/2 connection).
        channel = self._channels.get(address)
        if channel is None:
            channel = self._channels[address] = grpc.aio.insecure_channel(address, options=self._options)
        return channel

    def client(self, address: str) -> UpstreamClient:
        client = self._clients.get(address)
        if client is None:
            client = self._clients[address] = UpstreamClient(address, max_message_bytes=self._max_message_bytes)
        return client

    def route(self, service: str) -> Route:
        route = self._routes.get(service)
        if route is None:
            raise UnknownService(f"unknown service {service}: no upstream serves it")
        return route

    def __contains__(self, service: object) -> bool:
        return service in self._routes

    @property
    def services(self) -> list[str]:
        return sorted(self._routes)

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close(grace=None)
        self._channels.clear()
        for client in self._clients.values():
            client.close()
