"""Channels to the plugins that provide what this plugin requires, found through the registry.

Resolution is on demand with a short cache, rather than a watch: a plugin calls its dependencies far
more often than providers come and go, a few seconds of staleness is acceptable (the registry already
excludes unhealthy and stopping instances), and a caller that sees UNAVAILABLE can `invalidate` to
resolve again at once. Channels are kept per endpoint and reused, so a re-resolution that picks the
same endpoint does not reconnect; they are closed only when the plugin stops, because calls may still
be running on a channel whose endpoint dropped out of the answer.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import grpc
from upf.registry.v1 import registry_pb2 as pb, registry_pb2_grpc

from common.rpc.channel import Channel

__all__ = ["DependencyUnavailable", "Resolver"]

_ROUTABLE_PHASES = (pb.PHASE_READY, pb.PHASE_DEGRADED)
_ROUTABLE_HEALTH = (pb.HEALTH_STATE_HEALTHY, pb.HEALTH_STATE_DEGRADED)


class DependencyUnavailable(Exception):
    """No healthy provider of a required interface (or target) right now; the message says why."""


@dataclass(slots=True)
class _Entry:
    endpoints: list[str]
    expires: float
    turn: int = 0


def routable(instance: pb.InstanceStatus) -> bool:
    return instance.phase in _ROUTABLE_PHASES and instance.health in _ROUTABLE_HEALTH


class Resolver:
    """`await channel(interface)` -> a channel to a healthy provider, round robin over its instances.

    Channels are common.rpc.Channel (grpc.aio-compatible, on the gateway's HTTP/2 client) unless
    `connect` makes them otherwise."""

    def __init__(
        self,
        registry: registry_pb2_grpc.RegistryAsyncStub,
        ranges: dict[str, str],
        *,
        cache_ttl: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
        connect: Callable[[str], grpc.aio.Channel] = Channel,
        call_timeout: float = 5.0,
    ) -> None:
        self._registry = registry
        self._ranges = ranges  # interface -> the semver range the manifest requires
        self._cache_ttl = cache_ttl
        self._clock = clock
        self._connect = connect
        self._timeout = call_timeout
        self._cache: dict[str, _Entry] = {}
        self._channels: dict[str, grpc.aio.Channel] = {}

    async def channel(self, interface: str) -> grpc.aio.Channel:
        """A provider of `interface`, in the range the manifest requires (any version if not required)."""
        return self._pick(await self._endpoints(f"interface {interface}", interface, self._by_interface))

    async def channel_to(self, target: str) -> grpc.aio.Channel:
        """An instance of a plugin id or a fully qualified gRPC service (ResolveEndpoint)."""
        return self._pick(await self._endpoints(f"target {target}", target, self._by_target))

    def invalidate(self, interface_or_target: str) -> None:
        """Forget the cached answer, e.g. after a call failed with UNAVAILABLE."""
        self._cache.pop(f"interface {interface_or_target}", None)
        self._cache.pop(f"target {interface_or_target}", None)

    async def close(self) -> None:
        channels, self._channels = list(self._channels.values()), {}
        for channel in channels:
            await channel.close(None)

    async def _endpoints(self, key: str, name: str, lookup: Callable[[str], Awaitable[list[str]]]) -> _Entry:
        entry = self._cache.get(key)
        now = self._clock()
        if entry is None or entry.expires <= now:
            endpoints = await lookup(name)
            entry = self._cache[key] = _Entry(endpoints, now + self._cache_ttl)
        return entry

    async def _by_interface(self, interface: str) -> list[str]:
        wanted = self._ranges.get(interface, "")
        reply = await self._registry.GetProviders(
            pb.GetProvidersRequest(interface=interface, range=wanted), timeout=self._timeout
        )
        # Providers come best first (highest interface version): use the best one that can take calls.
        for provider in reply.providers:
            endpoints = [i.endpoint for i in provider.instances if routable(i)]
            if endpoints:
                return endpoints
        registered = ", ".join(f"{p.plugin_id} {p.interface_version}" for p in reply.providers)
        raise DependencyUnavailable(
            f"no healthy provider of {interface} {wanted or '(any version)'}"
            + (f" (registered, not routable: {registered})" if registered else " is registered")
        )

    async def _by_target(self, target: str) -> list[str]:
        reply = await self._registry.ResolveEndpoint(pb.ResolveEndpointRequest(target=target), timeout=self._timeout)
        if not reply.endpoints:
            raise DependencyUnavailable(f"no endpoint for {target}: {reply.reason or 'nothing registered'}")
        return [e.endpoint for e in reply.endpoints]

    def _pick(self, entry: _Entry) -> grpc.aio.Channel:
        endpoint = entry.endpoints[entry.turn % len(entry.endpoints)]
        entry.turn += 1
        channel = self._channels.get(endpoint)
        if channel is None:
            channel = self._channels[endpoint] = self._connect(endpoint)
        return channel
