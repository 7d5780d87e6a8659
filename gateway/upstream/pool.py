"""The routing table: fully qualified gRPC service -> its replicas, each reached by one UpstreamClient.

Calls carry raw gRPC frames, so the gateway proxies a service without its .proto.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator, Mapping, Sequence

import grpc

from gateway.errors import UnknownService, UpstreamUnavailable
from gateway.upstream.breaker import BreakerPolicy, CircuitBreaker, Clock, TransitionListener
from gateway.upstream.client import UpstreamClient

__all__ = ["Endpoint", "Route", "UpstreamPool"]


class Endpoint:
    """One replica of a service, with its circuit breaker (None when breakers are off)."""

    __slots__ = ("address", "breaker", "client")

    def __init__(self, address: str, client: UpstreamClient, breaker: CircuitBreaker | None = None) -> None:
        self.address = address
        self.client = client
        self.breaker = breaker

    def report(self, code: grpc.StatusCode) -> None:
        """How a call that `Route.pick` sent here ended (CANCELLED: it proved nothing)."""
        if self.breaker is not None:
            self.breaker.record(code)


class Route:
    """A service and its replicas, chosen round robin."""

    __slots__ = ("_cycle", "endpoints", "service")

    def __init__(self, service: str, endpoints: Sequence[Endpoint]) -> None:
        self.service = service
        self.endpoints = tuple(endpoints)
        self._cycle: Iterator[Endpoint] = itertools.cycle(self.endpoints)

    def pick(self) -> Endpoint:
        """The next replica, round robin, skipping those whose breaker is open; the caller must
        `report` how the call ended."""
        for _ in range(len(self.endpoints)):
            endpoint = next(self._cycle)
            if endpoint.breaker is None or endpoint.breaker.try_acquire():
                return endpoint
        wait = min(endpoint.breaker.retry_after for endpoint in self.endpoints if endpoint.breaker is not None)
        raise UpstreamUnavailable(
            f"{self.service} is unavailable: the circuit breaker of every replica is open (next probe in {wait:.1f} s)"
        )


class UpstreamPool:
    """Connections open on first use, inside the running event loop."""

    def __init__(
        self,
        upstreams: Mapping[str, Sequence[str]],
        *,
        max_message_bytes: int,
        breakers: BreakerPolicy | None = None,
        clock: Clock = time.monotonic,
        on_transition: TransitionListener | None = None,
    ) -> None:
        self._max_message_bytes = max_message_bytes
        # Services served by one process share its client, hence one HTTP/2 connection.
        self._clients: dict[str, UpstreamClient] = {}
        self._routes = {
            service: Route(
                service,
                [
                    Endpoint(
                        address,
                        self._client(address),
                        # Per service and replica: one service failing on a shared process trips only its own.
                        CircuitBreaker(f"{service}@{address}", breakers, clock=clock, listener=on_transition)
                        if breakers is not None
                        else None,
                    )
                    for address in addresses
                ],
            )
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
