"""The routing table: fully qualified gRPC service -> its replicas, each reached by one UpstreamClient.

Calls carry raw gRPC frames, so the gateway proxies a service without its .proto.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping, Sequence

from gateway.errors import UnknownService
from gateway.upstream.client import UpstreamClient

__all__ = ["Endpoint", "Route", "UpstreamPool"]


class Endpoint:
    """One replica of a service."""

    __slots__ = ("address", "client")

    def __init__(self, address: str, client: UpstreamClient) -> None:
        self.address = address
        self.client = client


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
    """Connections open on first use, inside the running event loop."""

    def __init__(self, upstreams: Mapping[str, Sequence[str]], *, max_message_bytes: int) -> None:
        self._max_message_bytes = max_message_bytes
        # Services served by one process share its client, hence one HTTP/2 connection.
        self._clients: dict[str, UpstreamClient] = {}
        self._routes = {
            service: Route(service, [Endpoint(address, self._client(address)) for address in addresses])
            for service, addresses in upstreams.items()
        }

    def _client(self, address: str) -> UpstreamClient:
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

    def close(self) -> None:
        for client in self._clients.values():
            client.close()
