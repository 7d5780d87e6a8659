"""`POST /api/events/{topic}`: publish one event (the request body, as is) to the gateway's bus.

Off unless `events.publish` is on: it is for plugins and tests until the IMessageBus plugin
exists, and for trusted callers, not for browsers at large. When auth put an Identity in the scope,
the caller needs the permission `events:publish:<topic>` (or `events:publish:*`, `events:*`, `*`).

    200 {"id": "42"}                              stored; the id subscribers will see
    400 {"code": "INVALID_ARGUMENT", ...}         not a topic (no wildcards when publishing)
    403 {"code": "PERMISSION_DENIED", ...}
    413 {"code": "RESOURCE_EXHAUSTED", ...}       body over events.maxEventBytes
    503 {"code": "UNAVAILABLE", ...}              the bus cannot be reached
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse

from gateway.auth.identity import identity_of
from gateway.events.bus import BusUnavailable, MessageBus
from gateway.events.topics import InvalidTopic, check_topic

__all__ = ["PublishEndpoint"]


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"code": code, "message": message}, status_code=status)


class PublishEndpoint:
    def __init__(self, bus: MessageBus, *, max_event_bytes: int) -> None:
        self.bus = bus
        self.max_event_bytes = max_event_bytes

    async def handle(self, request: Request) -> JSONResponse:
        topic: str = request.path_params["topic"]
        try:
            check_topic(topic)
        except InvalidTopic as exc:
            return _error(400, "INVALID_ARGUMENT", str(exc))
        identity = identity_of(request.scope)
        if identity is not None and not identity.permits(f"events:publish:{topic}"):
            needed = f"events:publish:{topic}"
            return _error(403, "PERMISSION_DENIED", f"publishing to {topic} needs the permission {needed}")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > self.max_event_bytes:
                limit = self.max_event_bytes
                return _error(413, "RESOURCE_EXHAUSTED", f"an event may be at most {limit} bytes (maxEventBytes)")
        try:
            event_id = await self.bus.publish(topic, bytes(body))
        except BusUnavailable as exc:
            return _error(503, "UNAVAILABLE", str(exc))
        except ValueError as exc:  # e.g. larger than NATS takes
            return _error(413, "RESOURCE_EXHAUSTED", str(exc))
        return JSONResponse({"id": event_id})
