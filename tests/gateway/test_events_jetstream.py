"""/api/events on NATS JetStream, with real gateway processes and nats-servers.

- Ids are stream sequences shared by every gateway on the stream: a client that loses its socket
  reconnects to *another* gateway with its last id and gets every event it missed, each once, then
  live ones. Plugins publish straight into the stream (`<subjectPrefix>.<topic>`).
- NATS down when the gateway starts: the gateway starts anyway and is ready (gRPC-Web does not
  need NATS); /readyz says why events are not available; a socket gets an `unavailable` error and
  close 1013; publishing answers 503. Once NATS is up, it connects and creates its stream.
- NATS restarting under an open socket: the socket stays open, and the events published after
  the restart arrive once (the gateway's consumers are replaced when their heartbeats stop).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.events import (
    EventStream,
    NatsServer,
    delete_stream,
    events_client,
    events_url,
    new_stream,
    shared_nats,
)
from tests.support.processes import Gateway, run_gateway, wait_until


def _config(events: dict[str, Any]) -> dict[str, Any]:
    return {"grpcPort": 0, "events": {"publish": True, "heartbeatInterval": 0.5, "consumerHeartbeat": 0.5, **events}}


@pytest.fixture
def stream() -> Iterator[EventStream]:
    created = new_stream()
    try:
        yield created
    finally:
        asyncio.run(delete_stream(created))


async def publish(gateway: Gateway, topic: str, data: bytes = b"") -> str:
    async with httpx.AsyncClient(timeout=10) as http:
        response = await http.post(f"{gateway.url}/api/events/{topic}", content=data)
    assert response.status_code == 200, response.text
    return str(response.json()["id"])


def events_status(gateway: Gateway) -> dict[str, Any]:
    response = httpx.get(f"{gateway.url}/readyz", timeout=5)
    assert response.status_code == 200, response.text
    return dict(response.json()["events"])


async def test_a_client_reconnecting_to_another_gateway_gets_every_missed_event_once(
    stream: EventStream, work_dir: Path
) -> None:
    settings = stream.settings()
    with run_gateway(_config(settings), work_dir) as first, run_gateway(_config(settings), work_dir) as second:
        topics = "topics=order.*,user.42.%3E"
        async with events_client(events_url(first, topics)) as client:
            await client.expect("subscribed")
            seen = [await publish(first, "order.created"), await publish(second, "user.42.login")]
            received = await client.events(2)
            assert [event["id"] for event in received] == seen
            last = received[-1]["id"]
        # While the client is away: events from both gateways and from a plugin, some not for it.
        nc = await shared_nats()
        try:
            js = nc.jetstream()
            missed = [
                await publish(first, "order.paid", b"1"),
                await publish(second, "order.paid.late", b"not for order.*"),
                str((await js.publish(f"{stream.prefix}.user.42.logout", b"2")).seq),
                await publish(second, "user.43.login", b"not for user.42.>"),
                str((await js.publish(f"{stream.prefix}.order.shipped", b"3")).seq),
            ]
        finally:
            await nc.close()
        async with events_client(events_url(second, f"{topics}&lastEventId={last}")) as client:
            await client.expect("subscribed")
            replayed = await client.events(3)
            assert [event["id"] for event in replayed] == [missed[0], missed[2], missed[4]]
            assert [(event["topic"], event["data"]) for event in replayed] == [
                ("order.paid", "1"),
                ("user.42.logout", "2"),
                ("order.shipped", "3"),
            ]
            live = await publish(first, "order.delivered")
            assert (await client.expect("event"))["id"] == live
            assert await client.quiet(0.5) == []


async def test_nats_down_at_start_then_up_then_restarted(work_dir: Path) -> None:
    nats_server = NatsServer(work_dir)
    stream = EventStream(name="UPF_EVENTS_DOWN", prefix="upf.down", url=nats_server.url)
    # File storage: the stream outlives the nats-server restart below.
    settings = {**stream.settings(), "storage": "file"}
    try:
        with run_gateway(_config(settings), work_dir) as gateway:
            status = events_status(gateway)  # ready: events are not the gateway's only job
            assert status["connected"] is False
            assert "Connect call failed" in status["error"] or "refused" in status["error"].lower()
            async with events_client(events_url(gateway, "topics=order.*")) as client:
                received, closed = await client.closed()
            assert [(m["type"], m["code"]) for m in received] == [("error", "unavailable")]
            assert nats_server.url in received[0]["message"]
            assert (closed.code, closed.reason) == (1013, "the message bus is unavailable")
            async with httpx.AsyncClient(timeout=10) as http:
                refused = await http.post(f"{gateway.url}/api/events/order.x", content=b"")
            assert refused.status_code == 503
            assert refused.json()["code"] == "UNAVAILABLE"

            nats_server.start()
            wait_until(lambda: events_status(gateway)["connected"], timeout=30, what="the gateway to reach NATS")
            async with events_client(events_url(gateway, "topics=order.*")) as client:
                await client.expect("subscribed")
                before = [await publish(gateway, f"order.{n}") for n in range(3)]
                assert [event["id"] for event in await client.events(3)] == before

                nats_server.stop()
                wait_until(lambda: not events_status(gateway)["connected"], what="the gateway to notice")
                nats_server.start()
                wait_until(lambda: events_status(gateway)["connected"], timeout=30, what="the gateway to reconnect")
                after = [await publish(gateway, f"order.{n}") for n in range(3, 6)]
                assert [int(i) for i in after] == list(range(int(before[-1]) + 1, int(before[-1]) + 4))
                assert [event["id"] for event in await client.events(3, timeout=30)] == after
                assert await client.quiet(0.5) == []
    finally:
        nats_server.stop()
