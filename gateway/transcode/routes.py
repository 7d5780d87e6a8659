"""The REST routes served now: the google.api.http bindings of every routed service, under /api/.

An annotation's path is served below /api/ (`get: "/v1/orders/{id}"` is `GET /api/v1/orders/{id}`):
the web shell owns the rest of the path space. The table is read from the descriptors the gateway
learns at run time (gateway.descriptors), asked for on each lookup: the catalog answers from memory
while a plugin's version stays the same, and a service's bindings are read again only when it answers
with another descriptor (the plugin re-registered with a new version). So a plugin's REST routes
appear, change and go with its registrations, without a gateway restart. A routed plugin that cannot
be asked for a moment keeps the routes it had: its calls answer 503 as any call to it would, not 404.

Unary and server-streaming methods get REST routes (a server stream's answer is newline-delimited JSON,
gateway/transcode/endpoint.py); a client or bidi stream has no plain HTTP request form (gRPC-Web, Connect
and the WebSocket bridges carry them). A method whose rule cannot be served (a field it names does not
exist, a malformed template) is left out and logged once per descriptor.

When several bindings match a request, the most specific wins: more literal segments first, then a
binding without `**`, then the longer template; ties are broken by service and template, so the
choice is the same on every gateway replica.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor

from gateway.descriptors import DescriptorsUnavailable
from gateway.transcode.http_rule import HttpBinding, InvalidHttpRule, http_bindings

__all__ = ["ALLOWED_VERBS", "PREFIX", "RestMatch", "RestRoute", "RestRoutes"]

logger = logging.getLogger(__name__)

PREFIX = "/api"  # every REST route's path starts here; the annotation's path follows
# The scope key under which a request whose path a route takes, but with another method, carries the
# methods that path does take: the router's fallback answers it 405 (gateway/shell.py api_not_found).
ALLOWED_VERBS = "upf.rest.allowed_verbs"

Describe = Callable[[str], Awaitable[ServiceDescriptor]]


@dataclass(frozen=True, slots=True)
class RestRoute:
    service: str  # the full name of the gRPC service
    method: MethodDescriptor
    binding: HttpBinding

    @property
    def path(self) -> str:
        """The route's path template as clients see it: the annotation's, below /api/."""
        return PREFIX + self.binding.template.source

    def _precedence(self) -> tuple[int, bool, int, str, str]:
        template = self.binding.template
        wildcard = any(segment.kind == "**" for segment in template.segments)
        return (-template.literal_count, wildcard, -len(template.segments), self.service, template.source)


@dataclass(frozen=True, slots=True)
class RestMatch:
    route: RestRoute
    variables: dict[str, str]  # field path -> the decoded text the request path gave it


class RestRoutes:
    """The table of REST routes, built from the descriptors of `services()` (the exposed services)."""

    def __init__(self, services: Callable[[], Iterable[str]], describe: Describe) -> None:
        self._services = services
        self._describe = describe
        # service -> (the descriptor its bindings were read from, those bindings)
        self._read: dict[str, tuple[ServiceDescriptor, list[RestRoute]]] = {}
        self._table: tuple[tuple[int, ...], list[RestRoute]] = ((), [])

    async def routes(self) -> list[RestRoute]:
        """Every route served now, most specific first."""
        names = sorted(self._services())
        described = await asyncio.gather(*(self._service(name) for name in names))
        key = tuple(id(service) for service in described if service is not None)
        if key != self._table[0]:
            routes = [route for service in described if service is not None for route in self._routes_of(service)]
            self._table = (key, sorted(routes, key=RestRoute._precedence))
            for name in set(self._read) - set(names):
                del self._read[name]  # a service that is no longer routed
        return self._table[1]

    async def match(self, verb: str, path: str) -> RestMatch | None:
        """The route for this HTTP method and request path (percent-encoded, /api/ included), if any."""
        if not path.startswith(PREFIX + "/"):
            return None
        rest = path[len(PREFIX) :]
        for route in await self.routes():
            if route.binding.verb != verb:
                continue
            variables = route.binding.template.match(rest)
            if variables is not None:
                return RestMatch(route, variables)
        return None

    async def verbs_at(self, path: str) -> list[str]:
        """The HTTP methods some route takes at this request path (as `match` reads it), sorted."""
        if not path.startswith(PREFIX + "/"):
            return []
        rest = path[len(PREFIX) :]
        routes = await self.routes()
        return sorted({route.binding.verb for route in routes if route.binding.template.match(rest) is not None})

    async def _service(self, name: str) -> ServiceDescriptor | None:
        try:
            return await self._describe(name)
        except DescriptorsUnavailable as exc:
            known = self._read.get(name)
            if exc.retryable and known is not None:
                # Routed but not reachable now: its routes stay, and a call answers 503 (the call
                # path's UNAVAILABLE, retried on another replica if there is one), not 404.
                return known[0]
            logger.debug("no REST routes for %s: %s", name, exc)
            return None

    def _routes_of(self, service: ServiceDescriptor) -> list[RestRoute]:
        read = self._read.get(service.full_name)
        if read is not None and read[0] is service:
            return read[1]
        routes: list[RestRoute] = []
        for method in service.methods:
            try:
                bindings = http_bindings(method)
            except InvalidHttpRule as exc:
                logger.warning("REST route not served: %s", exc)
                continue
            if bindings and method.client_streaming:
                logger.warning("REST route not served: %s takes a stream, which REST cannot send", method.full_name)
                continue
            routes += [RestRoute(service.full_name, method, binding) for binding in bindings]
        self._read[service.full_name] = (service, routes)
        return routes
