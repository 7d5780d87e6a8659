"""The routing table: fully qualified gRPC service -> its replicas, each reached by one UpstreamClient.

Calls carry raw gRPC frames, so the gateway proxies a service without its .proto.

Routes come from the configuration's `upstreams:` (static, fixed for the process's life) and, when a
registry is configured, from its health stream (gateway/upstream/registry_routes.py), which replaces
them with `UpstreamPool.update` while calls run. A service listed in both keeps its static endpoints:
the operator wrote them down on purpose (e.g. to pin a service while its plugins misbehave).
"""

from __future__ import annotations

import itertools
import random
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Literal

import grpc

from gateway.errors import GatewayError, PermissionDenied, UnknownService, UpstreamUnavailable
from gateway.upstream.breaker import BreakerPolicy, CircuitBreaker, Clock, TransitionListener
from gateway.upstream.client import UpstreamClient

__all__ = ["Balancing", "Replica", "Route", "UpstreamPool"]

Balancing = Literal["round_robin", "p2c"]
_CODE_COUNT = 1 + max(code.value[0] for code in grpc.StatusCode)


class Replica:
    """One replica of a service, with its circuit breaker (None when breakers are off) and the number
    of calls it has in flight (picked, not yet reported), which p2c balances on."""

    __slots__ = ("_on_idle", "address", "breaker", "client", "codes", "inflight")

    def __init__(
        self,
        address: str,
        client: UpstreamClient,
        breaker: CircuitBreaker | None = None,
        codes: list[int] | None = None,
    ) -> None:
        self.address = address
        self.client = client
        self.breaker = breaker
        self.inflight = 0
        # Calls ended per gRPC status code (indexed by its number), shared by the service's
        # endpoints and kept by the pool for the process's life: read by /metrics.
        self.codes = codes if codes is not None else [0] * _CODE_COUNT
        # Set once the endpoint has left the routing table: called when its last call ends, so the
        # pool can close a client that nobody routes to any more without cutting a running call.
        self._on_idle: Callable[[], None] | None = None

    def report(self, code: grpc.StatusCode) -> None:
        """How a call that `Route.pick` sent here ended (CANCELLED: it proved nothing)."""
        self.inflight -= 1
        self.codes[code.value[0]] += 1
        if self.breaker is not None:
            self.breaker.record(code)
        if self.inflight <= 0 and self._on_idle is not None:
            self._on_idle()


class Route:
    """A service and its replicas, chosen round robin or by the power of two choices."""

    __slots__ = ("_cycle", "_random", "balancing", "endpoints", "service")

    def __init__(
        self,
        service: str,
        endpoints: Sequence[Replica],
        *,
        balancing: Balancing = "round_robin",
        rng: random.Random | None = None,
    ) -> None:
        self.service = service
        self.endpoints = tuple(endpoints)
        self.balancing = balancing
        self._cycle: Iterator[Replica] = itertools.cycle(self.endpoints)
        self._random = rng or random.Random()

    def pick(self, avoid: Replica | None = None) -> Replica:
        """A replica whose breaker lets the call through; the caller must `report` how the call ended.

        `avoid`: a replica that just refused this call (a retry): another one is picked when the
        service has more than one, and UpstreamUnavailable raised when none of them may be called."""
        endpoint = self._pick() if avoid is None or len(self.endpoints) < 2 else self._pick_other(avoid)
        endpoint.inflight += 1
        return endpoint

    def _pick_other(self, avoid: Replica) -> Replica:
        for _ in range(len(self.endpoints)):
            endpoint = next(self._cycle)
            if endpoint is not avoid and (endpoint.breaker is None or endpoint.breaker.try_acquire()):
                return endpoint
        raise UpstreamUnavailable(f"{self.service} is unavailable: no other replica may be called")

    def _pick(self) -> Replica:
        if self.balancing == "p2c" and len(self.endpoints) > 1:
            # Two replicas at random, the one with fewer calls in flight first: close to least-loaded
            # without every gateway worker herding onto the same replica.
            first, second = self._random.sample(self.endpoints, 2)
            if second.inflight < first.inflight:
                first, second = second, first
            for endpoint in (first, second):
                if endpoint.breaker is None or endpoint.breaker.try_acquire():
                    return endpoint
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
        balancing: Balancing = "round_robin",
    ) -> None:
        self._max_message_bytes = max_message_bytes
        self._breakers = breakers
        self._clock = clock
        self._on_transition = on_transition
        self._balancing: Balancing = balancing
        self._static = {service: tuple(addresses) for service, addresses in upstreams.items()}
        # Services served by one process share its client, hence one HTTP/2 connection.
        self._clients: dict[str, UpstreamClient] = {}
        # Calls ended per service and gRPC status code (see Replica.codes), for /metrics.
        self.codes: dict[str, list[int]] = {}
        # Clients no route uses any more, kept open while some call still runs on them.
        self._retired: dict[str, tuple[UpstreamClient, list[Replica]]] = {}
        self._routes: dict[str, Route] = {}
        self._dynamic: dict[str, tuple[str, ...]] = {}
        self._internal: frozenset[str] = frozenset()
        self._registered: frozenset[str] = frozenset()  # services plugins have provided (update)
        self._apply()

    def _client(self, address: str) -> UpstreamClient:
        client = self._clients.get(address)
        if client is None:
            retired = self._retired.pop(address, None)
            client = retired[0] if retired is not None else None
            if client is None:
                client = UpstreamClient(address, max_message_bytes=self._max_message_bytes)
            self._clients[address] = client
        return client

    def _endpoint(self, service: str, address: str) -> Replica:
        # Per service and replica: one service failing on a shared process trips only its own breaker.
        breaker = (
            CircuitBreaker(f"{service}@{address}", self._breakers, clock=self._clock, listener=self._on_transition)
            if self._breakers is not None
            else None
        )
        codes = self.codes.setdefault(service, [0] * _CODE_COUNT)
        return Replica(address, self._client(address), breaker, codes)

    def update(
        self, routes: Mapping[str, Sequence[str]], *, internal: Iterable[str] = (), registered: Iterable[str] = ()
    ) -> None:
        """Replace the routes that came from the registry (service -> endpoints); static ones stay.
        `internal` names those of them that plugins provide only to each other (infrastructure): routed
        for the gateway's own calls (`route(internal=True)`), refused with PERMISSION_DENIED to calls
        from outside. `registered`: every service a registered plugin provides, with an instance that
        can take calls or not; one that has none now is UNAVAILABLE, not unknown (remembered for the
        process's life: a plugin whose last instance left is still expected back).

        Runs on the event loop between calls: each Route is swapped whole, so a pick sees the old
        or the new replicas, never a mix. An endpoint whose address stays keeps its Replica (its
        breaker state and in-flight count) and client (its connection)."""
        self._dynamic = {service: tuple(addresses) for service, addresses in routes.items() if addresses}
        self._registered = self._registered.union(registered, self._dynamic)
        self._internal = frozenset(internal).difference(self._static)  # a static upstream is the operator's choice
        self._apply()

    def _apply(self) -> None:
        wanted = {**self._dynamic, **self._static}  # static wins
        old_endpoints = {
            (service, endpoint.address): endpoint
            for service, route in self._routes.items()
            for endpoint in route.endpoints
        }
        routes: dict[str, Route] = {}
        for service, addresses in wanted.items():
            current = self._routes.get(service)
            if current is not None and tuple(e.address for e in current.endpoints) == addresses:
                routes[service] = current  # unchanged: keep its round-robin position too
                continue
            endpoints = [
                old_endpoints.get((service, address)) or self._endpoint(service, address)
                for address in dict.fromkeys(addresses)
            ]
            routes[service] = Route(service, endpoints, balancing=self._balancing)
        kept = {id(endpoint) for route in routes.values() for endpoint in route.endpoints}
        used = {endpoint.address for route in routes.values() for endpoint in route.endpoints}
        gone = [endpoint for endpoint in old_endpoints.values() if id(endpoint) not in kept]
        self._routes = routes
        for address in [address for address in self._clients if address not in used]:
            self._retired[address] = (self._clients.pop(address), [])
        for endpoint in gone:
            if endpoint.address in self._retired:
                self._retired[endpoint.address][1].append(endpoint)
                endpoint._on_idle = self._reap
        self._reap()

    def _reap(self) -> None:
        """Close the retired clients that no call runs on any more."""
        for address, (client, endpoints) in list(self._retired.items()):
            if all(endpoint.inflight <= 0 for endpoint in endpoints):
                del self._retired[address]
                client.close()

    def route(self, service: str, *, internal: bool = False) -> Route:
        """The route of a call from outside, or (`internal`) of the gateway's own call."""
        route = self._routes.get(service)
        if route is None or (not internal and service in self._internal):
            raise self.unroutable(service)
        return route

    def unroutable(self, service: str) -> GatewayError:
        """Why a call from outside to `service` is not served (also for an entry point that answers early)."""
        if service in self._internal:
            return PermissionDenied(
                f"{service} is internal to the platform: plugins call it directly, the gateway does not route it"
            )
        if service in self._registered:
            # Clients retry UNAVAILABLE; UNIMPLEMENTED would tell them the service does not exist.
            return UpstreamUnavailable(
                f"{service} is unavailable: no instance of it can take calls now (down, draining or unhealthy)"
            )
        return UnknownService(f"unknown service {service}: no upstream serves it")

    @property
    def routes(self) -> dict[str, Route]:
        """Every routed service and its replicas, now (read-only: for /api/admin/traffic)."""
        return self._routes

    def __contains__(self, service: object) -> bool:
        return service in self._routes

    @property
    def services(self) -> list[str]:
        return sorted(self._routes)

    @property
    def static_services(self) -> list[str]:
        return sorted(self._static)

    # --- lifecycle (gateway/lifecycle.py) ---------------------------------------------------

    async def start(self) -> None:
        """Nothing to open: an upstream's connection opens with its first call."""

    def status(self) -> None:
        return None

    async def close(self) -> None:
        for client in self._clients.values():
            client.close()
        for client, _endpoints in self._retired.values():
            client.close()
        self._retired.clear()
