"""Live events: `/api/events` (a WebSocket of bus events) and the bus behind it.

bus.py        the internal MessageBus interface (until the IMessageBus plugin exists)
topics.py     topics and NATS-style patterns
memory.py     the in-process bus (a bounded ring)
jetstream.py  the NATS JetStream bus
plugin_bus.py the deployment's IMessageBus plugin, relayed (identity.py: the gateway's caller identity)
endpoint.py   the WebSocket endpoint and its JSON protocol
publish.py    POST /api/events/{topic}, when events.publish is on
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from starlette.routing import BaseRoute, Route, WebSocketRoute

from gateway.auth.identity import Identity
from gateway.events.bus import Event, MessageBus
from gateway.events.endpoint import EventsEndpoint
from gateway.events.identity import GatewayIdentity
from gateway.events.jetstream import JetStreamBus
from gateway.events.memory import MemoryBus
from gateway.events.plugin_bus import PluginBus
from gateway.events.publish import PublishEndpoint
from gateway.settings import EventsSettings
from gateway.websocket.open_sockets import OpenSockets

__all__ = ["Event", "JetStreamBus", "LiveEvents", "MemoryBus", "MessageBus", "PluginBus", "bus_from_settings"]


#: service -> the endpoints the registry routes it to (RegistryRoutes), for `bus: plugin`.
Endpoints = Callable[[str], Sequence[str]]


def bus_from_settings(
    settings: EventsSettings, *, registry_url: str | None = None, endpoints: Endpoints | None = None, host: str = ""
) -> MessageBus:
    if settings.bus == "plugin":
        # What is missing is said by /readyz and the log, and the gateway serves the rest meanwhile (as
        # with a bus that is down): `upf run` fills both in itself.
        problem = None
        if registry_url is None or endpoints is None:
            problem = "events.bus: plugin finds the IMessageBus plugin through the registry: set registryUrl"
        elif not settings.registration_credential:
            problem = (
                f"events.bus: plugin: the gateway registers as {settings.plugin_id} and needs "
                f"events.registrationCredential (upf registry --credential-for {settings.plugin_id})"
            )
        identity = GatewayIdentity(
            registry_url or "", plugin_id=settings.plugin_id, credential=settings.registration_credential, host=host
        )
        return PluginBus(
            endpoints or (lambda _service: []),
            identity,
            max_messages=settings.max_messages,
            max_age=settings.max_age,
            misconfigured=problem,
        )
    if settings.bus == "nats":
        return JetStreamBus(
            url=settings.nats_url,
            stream=settings.stream,
            subject_prefix=settings.subject_prefix,
            max_age=settings.max_age,
            max_messages=settings.max_messages,
            max_bytes=settings.max_bytes,
            storage=settings.storage,
            consumer_heartbeat=settings.consumer_heartbeat,
        )
    return MemoryBus(max_messages=settings.max_messages, max_age=settings.max_age)


class LiveEvents:
    """What gateway/app.py mounts when events.enabled: the routes, and the bus to start and close."""

    def __init__(
        self,
        settings: EventsSettings,
        *,
        cors_origins: Sequence[str],
        sockets: OpenSockets,
        still_valid: Callable[[Identity], str | None] | None = None,
        registry_url: str | None = None,
        endpoints: Endpoints | None = None,
        host: str = "",
    ) -> None:
        self.bus = bus_from_settings(settings, registry_url=registry_url, endpoints=endpoints, host=host)
        self.endpoint = EventsEndpoint(
            self.bus,
            sockets=sockets,
            allow_origins=settings.allow_origins if settings.allow_origins is not None else cors_origins,
            heartbeat_interval=settings.heartbeat_interval,
            queue_size=settings.queue_size,
            max_topics=settings.max_topics_per_connection,
            still_valid=still_valid,
        )
        self.publisher = (
            PublishEndpoint(self.bus, max_event_bytes=settings.max_event_bytes) if settings.publish else None
        )

    def routes(self) -> list[BaseRoute]:
        routes: list[BaseRoute] = [WebSocketRoute("/api/events", self.endpoint)]
        if self.publisher is not None:
            routes.append(Route("/api/events/{topic}", self.publisher.handle, methods=["POST"]))
        return routes

    async def start(self) -> None:
        await self.bus.start()

    async def close(self) -> None:
        await self.bus.close()

    def status(self) -> Mapping[str, Any]:
        return self.bus.status()
