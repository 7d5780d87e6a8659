"""/api/events behind auth, in-process (uvicorn on loopback) with the memory bus.

A tiny ASGI wrapper stands in for the auth middleware: it puts an Identity with the permissions
of the `x-test-permissions` header into the scope, as auth will.

- Subscribing to pattern P needs `events:P`, `events:*` / `*`, or `events:G` for a G covering P.
  A refused pattern gets a `forbidden` error naming it; the others are subscribed and the socket
  stays open. Without an Identity (auth off) everything is allowed (test_events_socket.py).
- Publishing to topic T needs `events:publish:T` (or `events:publish:*`, `events:*`, `*`).
- A lastEventId whose successors left the ring is `event_id_too_old`, and the socket stays open.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.app import create_app
from gateway.auth.identity import IDENTITY_SCOPE_KEY, Identity
from gateway.events import MemoryBus
from gateway.settings import GatewaySettings
from tests.support.events import events_client, events_url
from tests.support.processes import free_port


def with_permissions(app: ASGIApp) -> ASGIApp:
    async def authenticated(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            granted = dict(scope["headers"]).get(b"x-test-permissions")
            if granted is not None:
                permissions = tuple(p for p in granted.decode().split(",") if p)
                scope[IDENTITY_SCOPE_KEY] = Identity(subject="alice", issuer="test", permissions=permissions)
        await app(scope, receive, send)

    return authenticated


def gateway_app(**events: Any) -> Starlette:
    settings = GatewaySettings.model_validate(
        {"grpcPort": 0, "events": {"enabled": True, "publish": True, "heartbeatInterval": 5, **events}}
    )
    return create_app(settings)


@asynccontextmanager
async def serving(app: ASGIApp) -> AsyncIterator[str]:
    server = uvicorn.Server(
        uvicorn.Config(
            app, host="127.0.0.1", port=free_port(), lifespan="on", ws="websockets-sansio", log_level="warning"
        )
    )
    task = asyncio.create_task(server.serve())
    try:
        async with asyncio.timeout(10):
            while not server.started:  # noqa: ASYNC110  (uvicorn has no event for it)
                await asyncio.sleep(0.01)
        yield f"http://127.0.0.1:{server.config.port}"
    finally:
        server.should_exit = True
        await task


def bus_of(app: Starlette) -> MemoryBus:
    bus = app.state.events.bus
    assert isinstance(bus, MemoryBus)
    return bus


async def test_each_pattern_needs_a_permission_covering_it() -> None:
    app = gateway_app()
    async with serving(with_permissions(app)) as url:
        headers = {"x-test-permissions": "events:order.*,events:user.42,orders:read"}
        topics = "order.*,order.created,user.42,user.43,admin.%3E,%3E,order.%23"
        async with events_client(events_url(url, f"topics={topics}"), additional_headers=headers) as client:
            refused = [await client.expect("error") for _ in range(4)]
            assert [(error["code"], error["topic"]) for error in refused] == [
                ("forbidden", "user.43"),
                ("forbidden", "admin.>"),
                ("forbidden", ">"),
                ("forbidden", "order.#"),
            ]
            assert refused[0]["message"] == "not allowed to subscribe to user.43 (needs events:user.43)"
            assert (await client.expect("subscribed"))["topics"] == ["order.*", "order.created", "user.42"]

            bus = bus_of(app)
            wanted = [bus.publish_nowait("order.created", b"a"), bus.publish_nowait("user.42", b"b")]
            bus.publish_nowait("user.43", b"not for alice")
            assert [event["id"] for event in await client.events(2)] == wanted  # order.created once

            await client.send({"type": "subscribe", "topics": ["admin.users", "user.42"]})
            error = await client.expect("error")
            assert (error["code"], error["topic"]) == ("forbidden", "admin.users")
            assert (await client.expect("subscribed"))["topics"] == ["user.42"]
            event_id = bus.publish_nowait("user.42", b"c")
            assert (await client.expect("event"))["id"] == event_id


async def test_events_star_allows_every_pattern() -> None:
    app = gateway_app()
    async with serving(with_permissions(app)) as url:
        headers = {"x-test-permissions": "events:*"}
        async with events_client(events_url(url, "topics=%3E"), additional_headers=headers) as client:
            assert (await client.expect("subscribed"))["topics"] == [">"]
            event_id = bus_of(app).publish_nowait("anything.at.all", b"")
            assert (await client.expect("event"))["id"] == event_id


async def test_publishing_needs_the_publish_permission_for_the_topic() -> None:
    app = gateway_app()
    async with serving(with_permissions(app)) as url, httpx.AsyncClient(timeout=10) as http:

        async def post(permissions: str) -> httpx.Response:
            headers = {"x-test-permissions": permissions}
            return await http.post(f"{url}/api/events/order.created", content=b"{}", headers=headers)

        for refused in ("events:order.*", "events:publish:order.other", "events:publish:order.*"):
            response = await post(refused)
            assert response.status_code == 403, refused
            assert response.json() == {
                "code": "PERMISSION_DENIED",
                "message": "publishing to order.created needs the permission events:publish:order.created",
            }
        for allowed in ("events:publish:order.created", "events:publish:*", "events:*", "*"):
            response = await post(allowed)
            assert response.status_code == 200, allowed
        assert await bus_of(app).last_id() == "4"


async def test_a_last_event_id_older_than_the_ring_is_too_old() -> None:
    app = gateway_app(maxMessages=5)
    async with serving(app) as url:
        bus = bus_of(app)
        ids = [bus.publish_nowait("order.x", str(n).encode()) for n in range(10)]
        async with events_client(events_url(url, f"topics=order.*&lastEventId={ids[2]}")) as client:
            error = await client.expect("error")
            assert (error["code"], error["lastEventId"]) == ("event_id_too_old", ids[2])
            assert error["message"] == f"the events after id {ids[2]} are no longer retained (the oldest is {ids[5]})"
            # Within the ring, it works on the same socket.
            await client.send({"type": "subscribe", "topics": ["order.*"], "lastEventId": ids[4]})
            await client.expect("subscribed")
            assert [event["data"] for event in await client.events(5)] == ["5", "6", "7", "8", "9"]
