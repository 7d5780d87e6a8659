"""IMessageBus conformance: the same tests for every backend (memory, NATS, RabbitMQ, Redis Streams).

A capability a backend does not list must be refused with UNIMPLEMENTED, and one it lists must work
(the Dapr rule: the suite checks the claims both ways).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets

import grpc
import pytest

from plugins.messagebus.plugin import manifest_of
from plugins.sdk.messagebus import (
    Deliver,
    InvalidMessage,
    Message,
    MessageBusError,
    NoReply,
    NotSupported,
    Outgoing,
    Subscription,
)
from plugins.sdk.plugin import load_manifest_text
from tests.conformance.messagebus.conftest import Bus

WAIT = 10.0  # seconds any expected delivery may take, at most


def subject(name: str) -> str:
    """A subject of this test's own: tests and runs never see each other's messages."""
    return f"t{secrets.token_hex(4)}.{name}"


async def take(messages: Subscription, count: int, *, ack: bool = True) -> list[Message]:
    got: list[Message] = []
    async with asyncio.timeout(WAIT):
        async for message in messages:
            if ack:
                await message.ack()
            got.append(message)
            if len(got) == count:
                return got
    raise AssertionError(f"the subscription ended after {len(got)} of {count} messages")


async def test_capabilities_match_the_manifest(bus: Bus) -> None:
    capabilities = await bus.a.capabilities()
    _, manifest = load_manifest_text(manifest_of(bus.backend))
    assert capabilities.backend == bus.backend
    assert capabilities.capabilities == set(manifest.provides[0].capabilities)
    assert {"queue-groups", "request-reply"} <= capabilities.capabilities


async def test_fan_out_reaches_every_subscriber_in_order(bus: Bus) -> None:
    topic = subject("order.created")
    base = topic.split(".")[0]
    async with (
        bus.a.subscribe(topic) as first,
        bus.b.subscribe(topic) as second,
        bus.a.subscribe(f"{base}.order.*") as wildcard,
        bus.b.subscribe(f"{base}.>") as everything,
        bus.a.subscribe(f"{base}.other") as other,
    ):
        sent = [f"m{i}".encode() for i in range(30)]
        for payload in sent:
            await bus.a.publish(topic, payload, {"trace-id": "t1"})
        await bus.a.publish(f"{base}.other", b"x")
        for messages in (first, second, wildcard):
            got = await take(messages, len(sent))
            assert [m.payload for m in got] == sent  # the order published, per subject
            assert {m.subject for m in got} == {topic}
            assert got[0].headers == {"trace-id": "t1"}
            assert all(m.delivery_count == 1 for m in got)
        assert [m.payload for m in await take(everything, 31)] == [*sent, b"x"]
        assert [m.payload for m in await take(other, 1)] == [b"x"]


async def test_a_queue_group_gives_each_message_to_one_member(bus: Bus) -> None:
    topic = subject("job")
    async with bus.a.subscribe_queue(topic, "workers") as one, bus.a.subscribe_queue(topic, "workers") as two:
        sent = {f"job{i}".encode() for i in range(40)}
        for payload in sorted(sent):
            await bus.a.publish(topic, payload)
        got: dict[bytes, int] = {}
        all_in = asyncio.Event()

        async def drain(messages: Subscription) -> None:
            async for message in messages:
                await message.ack()
                got[message.payload] = got.get(message.payload, 0) + 1
                if set(got) == sent:
                    all_in.set()

        tasks = [asyncio.create_task(drain(one)), asyncio.create_task(drain(two))]
        try:
            async with asyncio.timeout(WAIT):
                await all_in.wait()
        finally:
            for task in tasks:
                task.cancel()
        assert set(got.values()) == {1}


async def test_nak_with_delay_and_the_ack_wait_bring_a_message_again(bus: Bus) -> None:
    topic = subject("retry")
    loop = asyncio.get_running_loop()
    async with bus.a.subscribe(topic, durable="retrying", ack_wait=1.0) as messages:
        await bus.a.publish(topic, b"once")
        first = (await take(messages, 1, ack=False))[0]
        assert first.delivery_count == 1
        naked_at = loop.time()
        await first.nak(delay=0.4)
        second = (await take(messages, 1, ack=False))[0]
        assert loop.time() - naked_at >= 0.35
        assert (second.payload, second.delivery_count) == (b"once", 2)
        # Not settled: the ack wait (1 s) brings it once more.
        third = (await take(messages, 1, ack=False))[0]
        assert (third.payload, third.delivery_count) == (b"once", 3)
        await third.ack()
        await bus.a.publish(topic, b"next")
        assert [m.payload for m in await take(messages, 1)] == [b"next"]


async def test_a_durable_resumes_where_it_stopped(bus: Bus) -> None:
    topic = subject("ledger")
    async with bus.a.subscribe(topic, durable="ledger") as messages:
        published = [await bus.a.publish(topic, f"{i}".encode()) for i in range(3)]
        assert [m.payload for m in await take(messages, 3)] == [b"0", b"1", b"2"]
    later = [await bus.a.publish(topic, f"{i}".encode()) for i in range(3, 5)]
    async with bus.a.subscribe(topic, durable="ledger") as messages:
        assert [m.payload for m in await take(messages, 2)] == [b"3", b"4"]
    caps = (await bus.a.capabilities()).capabilities
    if "replay" not in caps:
        with pytest.raises(NotSupported, match="replay"):
            await bus.a.subscribe(topic, deliver=Deliver.all()).open()
        return
    ids = [p.sequence for p in published + later]
    assert ids == sorted(ids)
    assert ids[0] > 0
    async with bus.a.subscribe(topic, deliver=Deliver.all()) as messages:
        everything = await take(messages, 5)
        assert [m.payload for m in everything] == [b"0", b"1", b"2", b"3", b"4"]
    async with bus.a.subscribe(topic, deliver=Deliver.from_sequence(ids[2])) as messages:
        assert [m.payload for m in await take(messages, 3)] == [b"2", b"3", b"4"]
    async with bus.a.subscribe(topic, deliver=Deliver.from_time(everything[3].timestamp)) as messages:
        assert [m.payload for m in await take(messages, 2)] == [b"3", b"4"]


async def test_request_reply_and_timeout(bus: Bus) -> None:
    topic = subject("price.quote")
    async with bus.b.subscribe(topic) as requests:

        async def respond() -> None:
            async for request in requests:
                await bus.b.reply(request, request.payload + b" costs 42", {"unit": "EUR"})
                await request.ack()

        responder = asyncio.create_task(respond())
        try:
            reply = await bus.a.request(topic, b"apple", timeout=5.0)
            assert (reply.payload, reply.headers) == (b"apple costs 42", {"unit": "EUR"})
        finally:
            responder.cancel()
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(NoReply, match="no reply"):
        await bus.a.request(subject("nobody.home"), b"?", timeout=0.3)
    assert loop.time() - started < 3.0


async def test_bad_input_is_refused_naming_the_field(bus: Bus) -> None:
    for bad in ("", "a..b", ".a", "a.*", "a.>", "a b"):
        with pytest.raises(InvalidMessage, match="subject"):
            await bus.a.publish(bad, b"x")
    with pytest.raises(InvalidMessage, match="payload"):
        await bus.a.publish("a.b", b"x" * ((await bus.a.capabilities()).max_payload_bytes + 1))
    for bad_header in ("bad name", "upf-reply-to", ""):
        with pytest.raises(InvalidMessage, match="headers"):
            await bus.a.publish("a.b", b"x", {bad_header: "1"})
    with pytest.raises(InvalidMessage, match="subject"):
        await bus.a.subscribe("a.>.b").open()
    with pytest.raises(InvalidMessage, match=r"start\.durable"):
        await bus.a.subscribe("a.b", durable="no spaces").open()
    with pytest.raises(InvalidMessage, match=r"start\.ack_wait"):
        await bus.a.subscribe("a.b", ack_wait=-1).open()
    with pytest.raises(InvalidMessage, match=r"start\.start_sequence"):
        await bus.a.subscribe("a.b", deliver=Deliver.from_sequence(0)).open()
    with pytest.raises(InvalidMessage, match="timeout"):
        await bus.a.request("a.b", b"", timeout=-1)
    with pytest.raises(InvalidMessage, match="reply subjects"):
        await bus.a.subscribe("_INBOX.>").open()


async def test_callers_are_kept_apart(bus: Bus) -> None:
    topic = subject("order.paid")
    # The same durable and queue names in two plugins are two consumers: neither takes the other's.
    async with (
        bus.a.subscribe(topic, durable="billing") as a_durable,
        bus.b.subscribe(topic, durable="billing") as b_durable,
        bus.a.subscribe_queue(topic, "workers") as a_queue,
        bus.b.subscribe_queue(topic, "workers") as b_queue,
    ):
        for i in range(5):
            await bus.a.publish(topic, f"{i}".encode())
        for messages in (a_durable, b_durable, a_queue, b_queue):
            assert [m.payload for m in await take(messages, 5)] == [b"0", b"1", b"2", b"3", b"4"]
    # No identity, no bus.
    for call in (bus.anonymous.publish(topic, b"x"), bus.anonymous.subscribe(topic).open()):
        with pytest.raises(MessageBusError) as refused:
            await call
        assert refused.value.code == grpc.StatusCode.UNAUTHENTICATED


async def test_a_subscriber_holds_at_most_max_in_flight_unsettled_messages(bus: Bus) -> None:
    topic = subject("flow")
    async with bus.a.subscribe(topic, durable="slow", max_in_flight=3) as messages:
        for i in range(6):
            await bus.a.publish(topic, f"{i}".encode())
        held = await take(messages, 3, ack=False)
        # Nothing more while three are unsettled (a bounded look: the absence of a delivery).
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.5):
                await anext(messages)
        await held[0].ack()
        assert [m.payload for m in await take(messages, 1)] == [b"3"]


async def test_subscribers_that_leave_at_once_take_no_messages_with_them(bus: Bus) -> None:
    # Subscriptions of one durable opened and closed while messages arrive: each one's broker read
    # must end with it. A read left running would take messages for a subscriber that is gone, and
    # they would come back only after the 30 s ack wait (on Python 3.11 a cancelled Redis read can
    # run on: common/tasks.py).
    topic = subject("leaving")
    await (await bus.a.subscribe(topic, durable="stay").open()).close()
    expected: set[bytes] = set()
    for round_ in range(10):
        payloads = [f"{round_}-{i}".encode() for i in range(100)]
        expected.update(payloads)
        publishing = asyncio.gather(*(bus.a.publish(topic, payload) for payload in payloads))
        await (await bus.a.subscribe(topic, durable="stay").open()).close()
        await publishing
    got: set[bytes] = set()
    async with bus.a.subscribe(topic, durable="stay", max_in_flight=1000) as messages:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(WAIT):  # well within the ack wait
                async for message in messages:
                    await message.ack()
                    got.add(message.payload)
                    if got == expected:
                        break
    assert len(expected - got) == 0, f"{len(expected - got)} of {len(expected)} messages held back"


async def test_a_batch_is_stored_in_order_or_refused_whole(bus: Bus) -> None:
    topic, other = subject("batch"), subject("batch-other")
    async with bus.a.subscribe(topic) as messages:
        batch = [Outgoing(topic if i % 3 else other, f"{i}".encode(), {"n": str(i)}) for i in range(30)]
        results = await bus.a.publish_batch(batch)
        assert len(results) == 30
        if "sequence" in (await bus.a.capabilities()).capabilities:
            assert [r.sequence for r in results] == sorted(r.sequence for r in results)
        expected = [f"{i}".encode() for i in range(30) if i % 3]
        got = await take(messages, len(expected))
        assert [m.payload for m in got] == expected
        assert got[0].headers == {"n": "1"}
        with pytest.raises(InvalidMessage, match=r"messages\[2\]\.subject"):
            await bus.a.publish_batch([Outgoing(topic, b"no"), Outgoing(topic, b"no"), Outgoing("bad..subject")])
        # Nothing of the refused batch was stored: the next message is the next one seen.
        await bus.a.publish(topic, b"after")
        assert [m.payload for m in await take(messages, 1)] == [b"after"]
