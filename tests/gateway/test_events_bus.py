"""The message bus interface, the same tests for the in-memory bus and NATS JetStream (127.0.0.1:4222).

- Ids are decimal strings that grow; a subscriber sees matching events in id order, each once.
- subscribe(patterns) is live only; subscribe(patterns, id) replays what is retained after `id`
  first. An id the bus never issued is UnknownEventId; one whose successors were dropped is
  EventIdTooOld, with the oldest id still there.
- position() is where a replacement subscription may start: past events that did not match when
  the bus can tell (memory: always; JetStream: when the consumer is idle and drained).
- Topics and patterns (NATS style, `#` read as `>`), and which permissions cover which patterns.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from gateway.auth.identity import Identity
from gateway.events.bus import Event, EventIdTooOld, MessageBus, SubscriberLagged, Subscription, UnknownEventId
from gateway.events.endpoint import event_message, topic_permitted
from gateway.events.jetstream import JetStreamBus
from gateway.events.memory import MemoryBus
from gateway.events.topics import InvalidTopic, check_topic, common_filter, parse_pattern
from gateway.settings import ConfigError, load_settings
from tests.support.events import EventStream, delete_stream, new_stream, shared_nats


async def jetstream_bus(stream: EventStream, **options: object) -> JetStreamBus:
    bus = JetStreamBus(
        url=stream.url,
        stream=stream.name,
        subject_prefix=stream.prefix,
        storage="memory",
        consumer_heartbeat=0.3,
        **options,  # type: ignore[arg-type]
    )
    await bus.start()
    assert bus.status()["connected"], bus.status()
    return bus


@pytest.fixture(params=["memory", "nats"])
async def bus(request: pytest.FixtureRequest) -> AsyncIterator[MessageBus]:
    if request.param == "memory":
        yield MemoryBus(max_messages=1000)
        return
    stream = new_stream()
    jetstream = await jetstream_bus(stream)
    try:
        yield jetstream
    finally:
        await jetstream.close()
        await delete_stream(stream)


async def take(subscription: Subscription, count: int, timeout: float = 10.0) -> list[Event]:
    async with asyncio.timeout(timeout):
        return [await anext(subscription) for _ in range(count)]


async def nothing_more(subscription: Subscription, seconds: float = 0.3) -> None:
    try:
        async with asyncio.timeout(seconds):
            extra = await anext(subscription)
    except TimeoutError:
        return
    raise AssertionError(f"unexpected {extra}")


async def test_live_subscribers_get_matching_events_in_order_once(bus: MessageBus) -> None:
    before = await bus.publish("order.early", b"before")
    subscription = await bus.subscribe(["order.*", "order.>", "user.42", "audit.#"])
    try:
        topics = ["order.created", "order.items.added", "user.42", "user.43", "audit.a.b", "audit", "order.paid"]
        ids = [await bus.publish(topic, topic.encode()) for topic in topics]
        assert [int(i) for i in ids] == sorted(int(i) for i in ids)
        assert int(ids[0]) > int(before)
        events = await take(subscription, 5)
        assert [e.topic for e in events] == ["order.created", "order.items.added", "user.42", "audit.a.b", "order.paid"]
        assert [e.id for e in events] == [ids[0], ids[1], ids[2], ids[4], ids[6]]
        assert events[0].data == b"order.created"
        assert all(event.time > 0 for event in events)
        await nothing_more(subscription)
        assert await bus.last_id() == ids[-1]
    finally:
        await subscription.close()


async def test_a_subscription_from_an_id_replays_then_goes_live(bus: MessageBus) -> None:
    ids = [await bus.publish(f"a.{n}", str(n).encode()) for n in range(5)]
    subscription = await bus.subscribe(["a.*"], ids[1])
    try:
        assert [e.id for e in await take(subscription, 3)] == ids[2:]
        live = await bus.publish("a.live", b"")
        assert [e.id for e in await take(subscription, 1)] == [live]
        await nothing_more(subscription)
    finally:
        await subscription.close()


async def test_ids_the_bus_did_not_issue_are_refused(bus: MessageBus) -> None:
    newest = await bus.publish("a.b", b"")
    with pytest.raises(UnknownEventId, match="newer than the newest"):
        await bus.subscribe(["a.*"], str(int(newest) + 5))
    for bad in ("x1", "-3", "1.5", "", "12345678901234567890"):
        with pytest.raises(UnknownEventId, match="not an event id"):
            await bus.subscribe(["a.*"], bad)
    with pytest.raises(InvalidTopic):
        await bus.subscribe(["a..b"])
    with pytest.raises(InvalidTopic):
        await bus.publish("a.*", b"")


async def test_position_lets_a_replacement_start_past_events_that_did_not_match(bus: MessageBus) -> None:
    subscription = await bus.subscribe(["quiet.*"], await bus.last_id())
    try:
        seen = await bus.publish("quiet.seen", b"")
        assert [e.id for e in await take(subscription, 1)] == [seen]
        busy = [await bus.publish("busy.x", b"") for _ in range(5)]
        # JetStream knows only once its consumer has caught up with the stream: poll (the bus has
        # no event to wait for).
        async with asyncio.timeout(10):
            while await subscription.position() != busy[-1]:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        # A match the subscription has not handed out yet: the position must not pass it.
        unread = await bus.publish("quiet.unread", b"")
        position = await subscription.position()
    finally:
        await subscription.close()
    replacement = await bus.subscribe(["quiet.*"], position)
    try:
        # Ids come in order, so `unread` first means `seen` was not handed out again.
        assert [e.id for e in await take(replacement, 1)] == [unread]
        live = await bus.publish("quiet.live", b"")
        assert [e.id for e in await take(replacement, 1)] == [live]
    finally:
        await replacement.close()


async def test_retention_drops_the_oldest_and_resuming_before_them_is_too_old() -> None:
    memory = MemoryBus(max_messages=3)
    stream = new_stream()
    jetstream = await jetstream_bus(stream, max_messages=3)
    try:
        for bus in (memory, jetstream):
            ids = [await bus.publish("a.b", str(n).encode()) for n in range(6)]
            with pytest.raises(EventIdTooOld, match="no longer retained") as too_old:
                await bus.subscribe(["a.*"], ids[1])
            assert str(too_old.value.oldest) == ids[3]
            subscription = await bus.subscribe(["a.*"], ids[2])  # the one before the oldest: fine
            try:
                assert [e.data for e in await take(subscription, 3)] == [b"3", b"4", b"5"]
            finally:
                await subscription.close()
    finally:
        await jetstream.close()
        await delete_stream(stream)


async def test_a_memory_subscriber_that_falls_behind_the_ring_is_told() -> None:
    bus = MemoryBus(max_messages=4)
    subscription = await bus.subscribe(["a.*"])
    for n in range(6):
        await bus.publish("a.b", str(n).encode())
    with pytest.raises(SubscriberLagged, match="fell behind"):
        await anext(subscription)


async def test_the_memory_ring_drops_events_older_than_max_age() -> None:
    now = [1000.0]
    bus = MemoryBus(max_messages=100, max_age=60, clock=lambda: now[0])
    first = await bus.publish("a.b", b"old")
    now[0] += 61
    second = await bus.publish("a.b", b"new")
    with pytest.raises(EventIdTooOld):
        await bus.subscribe(["a.*"], str(int(first) - 1))
    subscription = await bus.subscribe(["a.*"], first)
    assert (await anext(subscription)).id == second


async def test_a_jetstream_consumer_deleted_under_a_subscription_is_replaced_without_repeats() -> None:
    stream = new_stream()
    bus = await jetstream_bus(stream)
    nc = await shared_nats()
    try:
        subscription = await bus.subscribe(["a.*"])
        first = [await bus.publish("a.b", str(n).encode()) for n in range(3)]
        assert [e.id for e in await take(subscription, 3)] == first
        js = nc.jetstream()
        for consumer in await js.consumers_info(stream.name):
            await js.delete_consumer(stream.name, consumer.name)
        later = [await bus.publish("a.b", str(n).encode()) for n in range(3, 6)]
        # Noticed by the consumer's status or its missing heartbeats (3 x 0.3 s), then replaced.
        assert [e.id for e in await take(subscription, 3)] == later
        await nothing_more(subscription)
        await subscription.close()
    finally:
        await nc.close()
        await bus.close()
        await delete_stream(stream)


async def test_an_existing_stream_gets_the_configured_subjects_and_limits() -> None:
    stream = new_stream()
    nc = await shared_nats()
    try:
        js = nc.jetstream()
        await js.add_stream(name=stream.name, subjects=[f"{stream.prefix}-other.>"], max_msgs=10, storage="memory")
        bus = await jetstream_bus(stream, max_messages=20, max_age=3600)
        info = await js.stream_info(stream.name)
        assert info.config.subjects == [f"{stream.prefix}-other.>", f"{stream.prefix}.>"]
        assert (info.config.max_msgs, info.config.max_age) == (20, 3600)
        assert await bus.publish("a.b", b"") == "1"
        await bus.close()
    finally:
        await nc.close()
        await delete_stream(stream)


# Topics, patterns, permissions, the event message ---------------------------------------------------


def test_patterns_match_tokens_nats_style() -> None:
    assert parse_pattern("order.*").matches("order.created")
    assert not parse_pattern("order.*").matches("order.a.b")
    assert not parse_pattern("order.*").matches("order")
    assert parse_pattern("order.>").matches("order.a.b")
    assert not parse_pattern("order.>").matches("order")
    assert parse_pattern("order.#").text == "order.>"
    assert parse_pattern("*.created").matches("order.created")
    assert parse_pattern(">").matches("anything.at.all")
    assert parse_pattern("user.42").matches("user.42")
    assert not parse_pattern("user.42").matches("user.421")
    for bad in ("", "a..b", ".a", "a.", "a.>.b", "a.#.b", "a b", "a.b*", "a:b", "$SYS.x", "a." * 20 + "b", "x" * 300):
        with pytest.raises(InvalidTopic):
            parse_pattern(bad)
    with pytest.raises(InvalidTopic, match="no wildcards"):
        check_topic("order.*")


def test_coverage_and_the_common_filter() -> None:
    def covers(a: str, b: str) -> bool:
        return parse_pattern(a).covers(parse_pattern(b))

    assert covers("order.*", "order.created")
    assert covers("order.*", "order.*")
    assert not covers("order.*", "order.>")
    assert covers("order.>", "order.*")
    assert covers("order.>", "order.a.b")
    assert not covers("order.>", "order")
    assert covers(">", "a")
    assert not covers("*.>", ">")
    assert not covers("order.created", "order.*")
    assert not covers("a.b.>", "a.*.c")

    def common(*patterns: str) -> str | None:
        return common_filter([parse_pattern(p) for p in patterns])

    assert common("order.*") == "order.*"
    assert common("order.*", "order.created.x") == "order.>"
    assert common("app.order.*", "app.user.42") == "app.>"
    assert common("order.*", "user.*") is None
    assert common("order", "order.created") is None
    assert common("*.a", "*.b") is None


def test_permissions_cover_the_patterns_subscribed() -> None:
    def allowed(permissions: tuple[str, ...], pattern: str) -> bool:
        identity = Identity(subject="u", issuer="test", permissions=permissions)
        return topic_permitted(identity, parse_pattern(pattern))

    assert topic_permitted(None, parse_pattern(">"))  # auth off
    assert allowed(("events:*",), ">")
    assert allowed(("*",), "order.*")
    assert allowed(("events:order.*",), "order.*")
    assert allowed(("events:order.*",), "order.created")
    assert not allowed(("events:order.*",), "order.>")
    assert not allowed(("events:order.*",), "user.42")
    assert allowed(("events:order.>",), "order.a.b")
    assert allowed(("events:order.>",), "order.#")
    assert not allowed(("events:publish:order.created",), "order.created")
    assert not allowed(("orders:*",), "order.created")
    assert not allowed((), "order.created")


def test_event_messages_carry_text_or_base64() -> None:
    text = event_message(Event("7", "order.created", '{"a": "é"}'.encode(), 1_800_000_000.5))
    assert text == (
        '{"type":"event","id":"7","topic":"order.created","time":"2027-01-15T08:00:00.500Z",'
        '"data":"{\\"a\\": \\"é\\"}"}'
    )
    binary = event_message(Event("8", "a.b", b"\xff\x00", 1_800_000_000))
    assert binary.endswith('"data":"/wA=","encoding":"base64"}')


# Settings -------------------------------------------------------------------------------------------


def test_events_settings_and_their_errors() -> None:
    settings = load_settings(None, {"UPF_EVENTS__ENABLED": "true", "UPF_EVENTS__BUS": "nats"})
    assert (settings.events.enabled, settings.events.bus, settings.events.nats_url) == (
        True,
        "nats",
        "nats://127.0.0.1:4222",
    )
    assert (settings.events.queue_size, settings.events.heartbeat_interval) == (256, 15.0)
    assert settings.events.publish is False
    assert settings.events.allow_origins is None  # then cors.allowOrigins
    with pytest.raises(ConfigError, match=r"events.bus: Input should be 'memory', 'nats' or 'plugin'"):
        load_settings(None, {"UPF_EVENTS__BUS": "kafka"})
    with pytest.raises(ConfigError, match=r"events.natsUrl: 'http://x' is not a nats://"):
        load_settings(None, {"UPF_EVENTS__NATS_URL": "http://x"})
    with pytest.raises(ConfigError, match=r"events.subjectPrefix: String should match pattern"):
        load_settings(None, {"UPF_EVENTS__SUBJECT_PREFIX": "a.>"})
    with pytest.raises(ConfigError, match=r"events.queueSize: Input should be greater than or equal to 1"):
        load_settings(None, {"UPF_EVENTS__QUEUE_SIZE": "0"})
    with pytest.raises(ConfigError, match=r"events.topics: unknown key"):
        load_settings(None, {"UPF_EVENTS__TOPICS": "[a]"})
