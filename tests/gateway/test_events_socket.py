"""/api/events through a real gateway process, on both buses (memory, and NATS JetStream at 127.0.0.1:4222).

Choices pinned here (the protocol is described in gateway/events/endpoint.py):

- Topics from the URL (`?topics=a.*,b.>`) and from subscribe messages; `*` is one token, `>` (or
  `#`) the rest; events arrive in id order, each once, even when several patterns match.
- `data` is the payload as text when it is UTF-8, else base64 with `"encoding": "base64"`.
- A heartbeat message after heartbeatInterval seconds of silence.
- Bad input gets an error message naming what was wrong, and the socket stays open.
- `lastEventId` resumes: every retained matching event after it, once, then live ones.
- A client that does not read is cut with 1013 "slow consumer: N events behind" once queueSize
  messages wait for it; a fast client on the same topics gets every event; the cut client resumes
  from its last id without a gap or a repeat.
- Events are published with POST /api/events/{topic} (events.publish); it refuses wildcards and
  bodies over maxEventBytes, and is not there unless turned on.
- A shutdown closes the sockets with 1001 at once.
"""

from __future__ import annotations

import asyncio
import base64
import os
import re
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.exceptions import InvalidStatus
from websockets.typing import Origin

from tests.conftest import ALLOWED_ORIGIN
from tests.support.events import (
    delete_stream,
    events_client,
    events_url,
    new_stream,
    slow_socket,
)
from tests.support.processes import Gateway, run_gateway

MAX_TOPICS = 6
QUEUE_SIZE = 64
HEARTBEAT = 0.5


def _config(events: dict[str, Any]) -> dict[str, Any]:
    return {
        "grpcPort": 0,
        "cors": {"allowOrigins": [ALLOWED_ORIGIN]},
        "events": {
            "enabled": True,
            "publish": True,
            "heartbeatInterval": HEARTBEAT,
            "queueSize": QUEUE_SIZE,
            "maxTopicsPerConnection": MAX_TOPICS,
            "maxEventBytes": 64 * 1024,
            **events,
        },
    }


@pytest.fixture(scope="module", params=["memory", "nats"])
def gateway(request: pytest.FixtureRequest, work_dir: Path) -> Iterator[Gateway]:
    if request.param == "memory":
        with run_gateway(_config({"bus": "memory"}), work_dir) as running:
            yield running
        return
    stream = new_stream()
    try:
        with run_gateway(_config(stream.settings()), work_dir) as running:
            yield running
    finally:
        asyncio.run(delete_stream(stream))


@pytest.fixture
def root() -> str:
    """A topic root of the test's own: tests share the gateway and its bus."""
    return f"t{uuid.uuid4().hex[:10]}"


async def publish(gateway: Gateway, topic: str, data: bytes | str = b"") -> str:
    async with httpx.AsyncClient(timeout=10) as http:
        response = await http.post(f"{gateway.url}/api/events/{topic}", content=data)
    assert response.status_code == 200, response.text
    return str(response.json()["id"])


async def publish_many(gateway: Gateway, items: list[tuple[str, bytes]]) -> list[str]:
    ids = []
    async with httpx.AsyncClient(timeout=10) as http:
        for topic, data in items:
            response = await http.post(f"{gateway.url}/api/events/{topic}", content=data)
            assert response.status_code == 200, response.text
            ids.append(str(response.json()["id"]))
    return ids


def topics_of(events: list[dict[str, Any]]) -> list[str]:
    return [event["topic"] for event in events]


async def test_wildcards_select_the_events_in_id_order(gateway: Gateway, root: str) -> None:
    url = events_url(gateway, f"topics={root}.order.*,{root}.user.42,{root}.audit.%23")
    async with events_client(url) as client:
        assert (await client.expect("subscribed"))["topics"] == [
            f"{root}.order.*",
            f"{root}.user.42",
            f"{root}.audit.>",
        ]
        published = [
            (f"{root}.order.created", b'{"order": 7}'),
            (f"{root}.order.a.b", b"too deep for order.*"),
            (f"{root}.user.43", b"another user"),
            (f"{root}.user.42", "caf\u00e9".encode()),
            (f"{root}.audit.login.failed", b"\xff\xfe binary"),
            (f"{root}.audit", b"audit.> needs one more token"),
            (f"{root}.order.shipped", b""),
        ]
        ids = await publish_many(gateway, published)
        events = await client.events(4)
        assert topics_of(events) == [
            f"{root}.order.created",
            f"{root}.user.42",
            f"{root}.audit.login.failed",
            f"{root}.order.shipped",
        ]
        assert [event["id"] for event in events] == [ids[0], ids[3], ids[4], ids[6]]
        assert events[0]["data"] == '{"order": 7}'
        assert "encoding" not in events[0]
        assert events[1]["data"] == "caf\u00e9"
        assert events[2]["encoding"] == "base64"
        assert base64.b64decode(events[2]["data"]) == b"\xff\xfe binary"
        assert events[3]["data"] == ""
        for event in events:
            assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", event["time"])
        assert await client.quiet(0.3) == []


async def test_a_quiet_socket_gets_heartbeats(gateway: Gateway) -> None:
    async with events_client(events_url(gateway)) as client:
        started = time.monotonic()
        heartbeat = await client.next(5, heartbeats=True)
        assert heartbeat["type"] == "heartbeat"
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", heartbeat["time"])
        assert time.monotonic() - started >= HEARTBEAT * 0.8
        assert (await client.next(5, heartbeats=True))["type"] == "heartbeat"


async def test_subscribe_and_unsubscribe_messages_deliver_each_event_once(gateway: Gateway, root: str) -> None:
    async with events_client(events_url(gateway)) as client:
        assert (await client.subscribe(f"{root}.order.*"))["topics"] == [f"{root}.order.*"]
        first = await publish(gateway, f"{root}.order.1")
        assert (await client.expect("event"))["id"] == first
        before = await publish(gateway, f"{root}.user.1", b"before its subscription: not sent")
        # Overlapping patterns: an event both match comes once.
        subscribed = await client.subscribe(f"{root}.order.#", f"{root}.user.1", f"{root}.order.*")
        assert subscribed["topics"] == [f"{root}.order.>", f"{root}.user.1", f"{root}.order.*"]
        ids = await publish_many(
            gateway,
            [(f"{root}.order.2", b""), (f"{root}.order.2.items", b""), (f"{root}.user.1", b""), (f"{root}.other", b"")],
        )
        events = await client.events(3)
        assert [event["id"] for event in events] == ids[:3]
        assert before not in [event["id"] for event in events]
        await client.send({"type": "unsubscribe", "topics": [f"{root}.order.>", f"{root}.nope"]})
        assert (await client.expect("unsubscribed"))["topics"] == [f"{root}.order.>"]
        ids = await publish_many(gateway, [(f"{root}.order.3.items", b""), (f"{root}.order.3", b"")])
        assert [event["id"] for event in await client.events(1)] == [ids[1]]
        await client.send({"type": "unsubscribe", "topics": [f"{root}.order.*", f"{root}.user.1"]})
        await client.expect("unsubscribed")
        await publish(gateway, f"{root}.order.4")
        assert await client.quiet(0.3) == []


async def test_last_event_id_resumes_with_every_missed_event_once(gateway: Gateway, root: str) -> None:
    topics = f"{root}.order.*,{root}.user.>"
    async with events_client(events_url(gateway, f"topics={topics}")) as client:
        await client.expect("subscribed")
        seen = await publish_many(gateway, [(f"{root}.order.1", b"1"), (f"{root}.user.9.x", b"2")])
        last = (await client.events(2))[-1]["id"]
        assert last == seen[-1]
    missed = await publish_many(
        gateway,
        [(f"{root}.order.2", b"3"), (f"{root}.other.1", b"-"), (f"{root}.user.9", b"4"), (f"{root}.order.3", b"5")],
    )
    # In the URL ...
    async with events_client(events_url(gateway, f"topics={topics}&lastEventId={last}")) as client:
        await client.expect("subscribed")
        replayed = await client.events(3)
        assert [event["id"] for event in replayed] == [missed[0], missed[2], missed[3]]
        assert [event["data"] for event in replayed] == ["3", "4", "5"]
        live = await publish(gateway, f"{root}.order.4", b"6")
        assert (await client.expect("event"))["id"] == live
        assert await client.quiet(0.3) == []
    # ... or in the first subscribe message.
    async with events_client(events_url(gateway)) as client:
        await client.send({"type": "subscribe", "topics": [f"{root}.order.*"], "lastEventId": missed[2]})
        await client.expect("subscribed")
        assert [event["id"] for event in await client.events(2)] == [missed[3], live]
        assert await client.quiet(0.3) == []


async def test_bad_input_gets_an_error_message_and_the_socket_stays_open(gateway: Gateway, root: str) -> None:
    async with events_client(events_url(gateway)) as client:

        async def error_for(message: Any) -> dict[str, Any]:
            if isinstance(message, bytes | str):
                await client.ws.send(message)
            else:
                await client.send(message)
            return await client.expect("error")

        assert (await error_for("{not json"))["code"] == "bad_request"
        assert (await error_for(b"\x00binary"))["message"].startswith("send JSON text messages")
        assert (await error_for("[1, 2]"))["code"] == "bad_request"
        assert "unknown message type" in (await error_for({"type": "publish", "topics": ["a"]}))["message"]
        assert "filter" in (await error_for({"type": "subscribe", "topics": ["a"], "filter": 1}))["message"]
        assert "list of topic patterns" in (await error_for({"type": "subscribe", "topics": "a.b"}))["message"]
        assert "64 KiB" not in (await error_for("x" * 70_000))["message"]  # too large, said in bytes

        await client.send(
            {"type": "subscribe", "topics": [f"{root}.a..b", f"{root}.>.x", f"{root}.sp ace", f"{root}.ok"]}
        )
        errors = [await client.expect("error") for _ in range(3)]
        assert [(e["code"], e["topic"]) for e in errors] == [
            ("invalid_topic", f"{root}.a..b"),
            ("invalid_topic", f"{root}.>.x"),
            ("invalid_topic", f"{root}.sp ace"),
        ]
        assert (await client.expect("subscribed"))["topics"] == [f"{root}.ok"]

        # lastEventId once subscribed: refused, nothing added.
        await client.send({"type": "subscribe", "topics": [f"{root}.more"], "lastEventId": "1"})
        refused = await client.expect("error")
        assert (refused["code"], refused["lastEventId"]) == ("bad_request", "1")

        # More patterns than the connection may hold: the ones over the limit are refused by name.
        many = [f"{root}.n{index}" for index in range(MAX_TOPICS)]
        await client.send({"type": "subscribe", "topics": many})
        over = await client.expect("error")
        assert (over["code"], over["topic"]) == ("too_many_topics", many[-1])
        assert (await client.expect("subscribed"))["topics"] == many[:-1]
        await client.send({"type": "subscribe", "topics": [f"{root}.x{i}" for i in range(MAX_TOPICS + 1)]})
        assert (await client.expect("error"))["code"] == "too_many_topics"

        # Still working.
        event_id = await publish(gateway, f"{root}.ok", b"fine")
        assert (await client.expect("event"))["id"] == event_id


@pytest.mark.parametrize(
    ("last_event_id", "code"),
    [("abc", "unknown_event_id"), ("-1", "unknown_event_id"), ("999999999999", "unknown_event_id")],
)
async def test_an_unusable_last_event_id_is_an_error(
    gateway: Gateway, root: str, last_event_id: str, code: str
) -> None:
    async with events_client(events_url(gateway, f"topics={root}.a&lastEventId={last_event_id}")) as client:
        error = await client.expect("error")
        assert (error["code"], error["lastEventId"]) == (code, last_event_id)
        # Nothing was subscribed; the socket stays usable.
        await client.subscribe(f"{root}.a")
        event_id = await publish(gateway, f"{root}.a")
        assert (await client.expect("event"))["id"] == event_id


async def test_a_slow_consumer_is_cut_while_a_fast_one_gets_every_event(gateway: Gateway, root: str) -> None:
    count, size = 600, 16 * 1024
    # "Fast" is a client that keeps up: the publisher stays at most WINDOW events ahead of it (the
    # machine is shared, so reading speed alone proves nothing). The slow one stops reading.
    window = QUEUE_SIZE // 4
    url = events_url(gateway, f"topics={root}.load.*")
    async with events_client(url) as fast, events_client(url, sock=slow_socket(gateway.http_port), max_queue=1) as slow:
        await fast.expect("subscribed")
        await slow.expect("subscribed")
        received: list[dict[str, Any]] = []
        progress = asyncio.Condition()

        async def read_fast() -> None:
            while len(received) < count:
                event = await fast.expect("event", 60)
                async with progress:
                    received.append(event)
                    progress.notify_all()

        reading = asyncio.create_task(read_fast())
        ids: list[str] = []
        async with httpx.AsyncClient(timeout=10) as http:
            for n in range(count):
                async with progress:
                    await asyncio.wait_for(progress.wait_for(lambda: len(received) >= len(ids) - window), 60)
                response = await http.post(f"{gateway.url}/api/events/{root}.load.{n % 7}", content=b"x" * size)
                ids.append(str(response.json()["id"]))
        await asyncio.wait_for(reading, 60)
        assert [event["id"] for event in received] == ids

        # The slow one gets what was already on its way, then the close.
        got, closed = await slow.closed(timeout=60)
        assert closed.code == 1013
        assert re.fullmatch(r"slow consumer: \d+ events behind", closed.reason), closed.reason
        got_ids = [event["id"] for event in got if event["type"] == "event"]
        assert got_ids == ids[: len(got_ids)], "the slow consumer got a gap or a repeat before the cut"
        assert len(got_ids) < count

    # It comes back with its last id and gets the rest, once.
    last = got_ids[-1] if got_ids else str(int(ids[0]) - 1)
    async with events_client(events_url(gateway, f"topics={root}.load.*&lastEventId={last}")) as client:
        await client.expect("subscribed")
        rest = await client.events(count - len(got_ids), timeout=60)
        assert [event["id"] for event in rest] == ids[len(got_ids) :]
        assert await client.quiet(0.3) == []


async def test_origins_are_checked_before_the_upgrade(gateway: Gateway) -> None:
    with pytest.raises(InvalidStatus) as refused:
        async with events_client(events_url(gateway), origin=Origin("https://evil.example")):
            pass
    assert refused.value.response.status_code == 403
    async with events_client(events_url(gateway), origin=Origin(ALLOWED_ORIGIN)) as client:
        assert (await client.next(5, heartbeats=True))["type"] == "heartbeat"


async def test_the_publish_route_refuses_bad_topics_and_large_events(gateway: Gateway) -> None:
    async with httpx.AsyncClient(timeout=10) as http:
        wildcard = await http.post(f"{gateway.url}/api/events/order.*", content=b"")
        assert wildcard.status_code == 400
        assert wildcard.json()["code"] == "INVALID_ARGUMENT"
        assert "no wildcards" in wildcard.json()["message"]
        large = await http.post(f"{gateway.url}/api/events/order.big", content=b"x" * (64 * 1024 + 1))
        assert large.status_code == 413
        assert large.json()["code"] == "RESOURCE_EXHAUSTED"


async def test_a_shutdown_closes_the_sockets_with_1001(work_dir: Path) -> None:
    with run_gateway(_config({"bus": "memory", "publish": False}), work_dir) as gateway:
        async with httpx.AsyncClient(timeout=10) as http:
            assert (await http.post(f"{gateway.url}/api/events/order.x", content=b"")).status_code in (404, 405)
        async with events_client(events_url(gateway, "topics=order.*")) as client:
            await client.expect("subscribed")
            started = time.monotonic()
            os.kill(gateway.process.pid, signal.SIGTERM)
            _, closed = await client.closed(timeout=10)
            assert closed.code == 1001
            assert time.monotonic() - started < 3
        assert await asyncio.to_thread(gateway.process.stop, signal.SIGTERM, 20.0) == 0
