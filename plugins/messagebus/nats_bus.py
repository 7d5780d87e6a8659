"""message-bus-nats: NATS JetStream.

- Messages go to the stream `<prefix>` (dots and dashes as "_") on subjects `<prefix>.<subject>`, on
  file storage: they survive this plugin and the server. Reply subjects (_INBOX.x) go to a second,
  short-lived stream on `<prefix>-inbox.x`, out of reach of any `>` filter.
- A subscription is a pull consumer with explicit acks: durables and queue groups are durable
  consumers (a queue group's members pull from the same one, so each message goes to one member); a
  plain subscription makes its own consumer and deletes it at the end. The server keeps the ack wait,
  counts deliveries (num_delivered), and delays a nak (NAK with a delay).
- An ack is a double ack (ack_sync): it returns once the server recorded it. A server stopped right
  after such an ack may still deliver the message again once it is back (JetStream writes consumer
  state to disk in the background): the plugin remembers the last `ACKED_REMEMBERED` stream
  sequences acked on each consumer and acks such a redelivery again instead of handing it out. That
  memory is the process's: a plugin restarted together with the server does not have it.
- NATS unreachable: calls raise BusUnavailable; nats-py reconnects by itself, and the connection is
  made again at the next call if it was closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import re
from collections import OrderedDict, deque
from collections.abc import Sequence
from typing import Any, TypeVar

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, RetentionPolicy, StorageType, StreamConfig

from common.tasks import cancel_and_wait
from plugins.messagebus.backend import BusUnavailable, ConsumerConflict, ConsumerSpec, Deliver, Outgoing, Received
from plugins.messagebus.subjects import INBOX_PREFIX, is_inbox

__all__ = ["NatsBus"]

CAPABILITIES = frozenset({"queue-groups", "request-reply", "replay", "sequence", "delayed-nak", "persistence"})
_ERRORS = (nats.errors.Error, OSError, asyncio.TimeoutError)
_REPLY_TO = "Upf-Reply-To"
_POLICIES = {
    Deliver.NEW: DeliverPolicy.NEW,
    Deliver.ALL: DeliverPolicy.ALL,
    Deliver.BY_SEQUENCE: DeliverPolicy.BY_START_SEQUENCE,
    Deliver.BY_TIME: DeliverPolicy.BY_START_TIME,
}
INBOX_MAX_AGE = 300.0  # seconds replies are kept: far longer than any request waits
_PULL_WAIT = 1.0  # seconds a pull request waits at the server for messages
_DRAIN_MARGIN = 0.2  # seconds a closing durable reads its inbox after its last pull request ran out
ACKED_REMEMBERED = 10_000  # stream sequences acked per consumer that a redelivery is checked against
_V = TypeVar("_V")


class NatsBus:
    name = "nats"
    capabilities = CAPABILITIES

    def __init__(self, url: str, *, prefix: str = "upf.bus", connect_timeout: float = 2.0) -> None:
        self._url = url
        self._prefix = prefix
        self._inbox = f"{prefix}-inbox"
        self._stream = re.sub(r"[^A-Za-z0-9_-]", "_", prefix)
        self._inbox_stream = f"{self._stream}_inbox"
        self._connect_timeout = connect_timeout
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        self._streams_ready = False
        self._connecting = asyncio.Lock()
        # (stream, consumer) -> stream sequences whose ack the server confirmed, oldest first
        self._acked: dict[tuple[str, str], OrderedDict[int, None]] = {}
        self._delivered: dict[tuple[str, str], OrderedDict[int, int]] = {}
        self.max_payload = 1024 * 1024  # the server's max_payload, once connected

    # --- names in NATS ---------------------------------------------------------------------------

    def to_nats(self, subject: str) -> str:
        if is_inbox(subject):
            return f"{self._inbox}.{subject.removeprefix(INBOX_PREFIX)}"
        return f"{self._prefix}.{subject}"

    def from_nats(self, subject: str) -> str:
        if subject.startswith(self._inbox + "."):
            return INBOX_PREFIX + subject[len(self._inbox) + 1 :]
        return subject[len(self._prefix) + 1 :]

    def _stream_of(self, subject: str) -> str:
        return self._inbox_stream if is_inbox(subject) else self._stream

    # --- connection --------------------------------------------------------------------------------

    async def jetstream(self) -> JetStreamContext:
        async with self._connecting:
            if self._nc is None or self._nc.is_closed:
                try:
                    self._nc = await nats.connect(
                        self._url,
                        connect_timeout=self._connect_timeout,
                        # Few attempts: nats-py makes them on the first connect too (with -1 it would
                        # never answer while NATS is down). A connection that gave up is closed, and
                        # the next call connects again.
                        allow_reconnect=True,
                        max_reconnect_attempts=3,
                        reconnect_time_wait=0.5,
                        error_cb=_ignore,
                        disconnected_cb=_nothing,
                    )
                except _ERRORS as exc:
                    self._nc = None
                    raise BusUnavailable(f"NATS at {self._url} cannot be reached ({_describe(exc)})") from None
                self._js = self._nc.jetstream(timeout=self._connect_timeout)
                self._streams_ready = False
                self.max_payload = self._nc.max_payload
            if not self._nc.is_connected:
                raise BusUnavailable(f"NATS at {self._url} is unreachable; reconnecting")
            assert self._js is not None
            if not self._streams_ready:
                try:
                    await self._ensure_streams(self._js)
                except _ERRORS as exc:
                    raise BusUnavailable(f"JetStream streams cannot be set up ({_describe(exc)})") from None
                self._streams_ready = True
            return self._js

    async def _ensure_streams(self, js: JetStreamContext) -> None:
        wanted = [
            StreamConfig(name=self._stream, subjects=[f"{self._prefix}.>"], storage=StorageType.FILE),
            StreamConfig(
                name=self._inbox_stream,
                subjects=[f"{self._inbox}.>"],
                storage=StorageType.MEMORY,
                retention=RetentionPolicy.LIMITS,
                max_age=INBOX_MAX_AGE,
            ),
        ]
        for config in wanted:
            try:
                await js.stream_info(str(config.name))
            except nats.js.errors.NotFoundError:
                await js.add_stream(config)

    # --- the Backend protocol ---------------------------------------------------------------------

    async def publish(self, message: Outgoing) -> tuple[int, str]:
        js = await self.jetstream()
        headers = dict(message.headers)
        if message.reply_to:
            headers[_REPLY_TO] = message.reply_to
        try:
            ack = await js.publish(self.to_nats(message.subject), message.payload, headers=headers or None)
        except nats.errors.NoRespondersError:
            self._streams_ready = False  # the stream was deleted under us: made again at the next call
            raise BusUnavailable("the JetStream stream is missing; it is made again at the next call") from None
        except _ERRORS as exc:
            raise BusUnavailable(f"publishing to NATS failed ({_describe(exc)})") from None
        return ack.seq, str(ack.seq)

    async def publish_many(self, messages: Sequence[Outgoing]) -> list[tuple[int, str]]:
        # One connection writes in call order, so the batch keeps its order while the PubAcks are
        # awaited together.
        return list(await asyncio.gather(*(self.publish(message) for message in messages)))

    async def consumer(self, spec: ConsumerSpec) -> _NatsConsumer:
        js = await self.jetstream()
        stream = self._stream_of(spec.filter)
        filter_subject = self.to_nats(spec.filter)
        durable = spec.name
        try:
            if durable is not None:
                try:
                    info = await js.consumer_info(stream, durable)
                except nats.js.errors.NotFoundError:
                    info = None
                if info is not None and info.config.filter_subject != filter_subject:
                    existing = self.from_nats(info.config.filter_subject or "")
                    raise ConsumerConflict(f'it exists with the subject "{existing}"')
                if info is None:
                    await js.add_consumer(stream, self._config(spec, durable, filter_subject))
            else:
                config = self._config(spec, None, filter_subject)
                config.inactive_threshold = 60.0  # the server drops it if we vanish without deleting it
                durable = (await js.add_consumer(stream, config)).name
            assert durable is not None
            subscription = await js.pull_subscribe_bind(durable, stream)
        except _ERRORS as exc:
            raise BusUnavailable(f"a NATS consumer cannot be made ({_describe(exc)})") from None
        return _NatsConsumer(self, js, subscription, stream, durable, spec, ephemeral=spec.name is None)

    def _config(self, spec: ConsumerSpec, durable: str | None, filter_subject: str) -> ConsumerConfig:
        start_time = None
        if spec.deliver is Deliver.BY_TIME:
            # A microsecond early: times travel as floats and microsecond datetimes, and must not land
            # just after the message they were read from.
            start_time = datetime.datetime.fromtimestamp(spec.start_time - 1e-6, datetime.UTC)
        return ConsumerConfig(
            durable_name=durable,
            deliver_policy=_POLICIES[spec.deliver],
            opt_start_seq=spec.start_sequence if spec.deliver is Deliver.BY_SEQUENCE else None,
            opt_start_time=start_time,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=spec.ack_wait,
            max_ack_pending=spec.max_in_flight,
            filter_subject=filter_subject,
        )

    def acked(self, stream: str, consumer: str) -> OrderedDict[int, None]:
        """The stream sequences acked on this consumer, shared by its subscriptions in this process."""
        return self._acked.setdefault((stream, consumer), OrderedDict())

    def delivered(self, stream: str, consumer: str) -> OrderedDict[int, int]:
        """The delivery count last handed out per stream sequence on this consumer, likewise shared."""
        return self._delivered.setdefault((stream, consumer), OrderedDict())

    async def close(self) -> None:
        if self._nc is not None and not self._nc.is_closed:
            await self._nc.close()

    async def destroy(self) -> None:
        """Delete this bus's streams (tests)."""
        js = await self.jetstream()
        for stream in (self._stream, self._inbox_stream):
            with contextlib.suppress(nats.js.errors.NotFoundError):
                await js.delete_stream(stream)


class _NatsConsumer:
    def __init__(
        self,
        bus: NatsBus,
        js: JetStreamContext,
        subscription: JetStreamContext.PullSubscription,
        stream: str,
        durable: str,
        spec: ConsumerSpec,
        *,
        ephemeral: bool,
    ) -> None:
        self._bus = bus
        self._js = js
        self._subscription = subscription
        self._stream = stream
        self._durable = durable
        self._ephemeral = ephemeral
        self._batch = max(1, min(spec.max_in_flight, 64))
        self._buffer: deque[Msg] = deque()
        # A durable's acks are shared by its subscriptions; an ephemeral consumer dies with its stream,
        # so its own (keeping it in the bus would keep one table per subscription ever made).
        self._acked: OrderedDict[int, None] = OrderedDict() if ephemeral else bus.acked(stream, durable)
        self._delivered: OrderedDict[int, int] = OrderedDict() if ephemeral else bus.delivered(stream, durable)
        self._pull_expires = 0.0  # loop time when the last pull request sent to the server runs out
        self._fetching: asyncio.Task[list[Msg]] | None = None

    async def next(self) -> Received:
        while True:
            msg = await self._next_msg()
            if msg.metadata.sequence.stream not in self._acked:
                break
            with contextlib.suppress(*_ERRORS):  # acked before: settled again, never handed out twice
                await msg.ack()
        headers = dict(msg.headers or {})
        reply_to = headers.pop(_REPLY_TO, "")
        metadata = msg.metadata
        timestamp = _timestamp(msg)
        sequence = metadata.sequence.stream
        # Never lower than the count this consumer last handed out: nats-server (2.9.10 here) now and then
        # counts a redelivery after a delayed nak and an ack wait as the first again (its ack subject
        # said 1 for a third delivery, consumer sequence 3), which would tell a subscriber it is new.
        count = max(metadata.num_delivered or 1, self._delivered.get(sequence, 0) + 1)
        _remember(self._delivered, sequence, count)
        return Received(
            self._bus.from_nats(msg.subject), msg.data, headers, str(sequence),
            sequence, timestamp, reply_to, count, msg,
        )  # fmt: skip

    async def _next_msg(self) -> Msg:
        while not self._buffer:
            nc = self._bus._nc
            if nc is None or not nc.is_connected:
                raise BusUnavailable("NATS is unreachable; subscribe again once it is back")
            if self._fetching is None:
                self._pull_expires = asyncio.get_running_loop().time() + _PULL_WAIT
                self._fetching = asyncio.create_task(self._subscription.fetch(self._batch, timeout=_PULL_WAIT))
            try:
                # Shielded: a fetch cancelled halfway (its subscriber left) would drop what it had already
                # taken from the inbox, and those messages would wait out the ack wait. close() collects it.
                fetched = await asyncio.shield(self._fetching)
            except TimeoutError:
                # Nothing yet. nats-py 2.15+ raises a plain asyncio.TimeoutError, not its own
                # nats.errors.TimeoutError, from some of fetch's timeout exits (nats.py PR #1008):
                # with the connection up, both mean "no message within the second".
                self._fetching = None
                continue
            except _ERRORS as exc:
                self._fetching = None
                raise BusUnavailable(f"fetching from NATS failed ({_describe(exc)})") from None
            self._fetching = None
            self._buffer.extend(fetched)
        return self._buffer.popleft()

    async def ack(self, handle: object) -> None:
        assert isinstance(handle, Msg)
        try:
            await handle.ack_sync(timeout=2.0)
        except nats.errors.MsgAlreadyAckdError:
            pass
        except _ERRORS as exc:
            raise BusUnavailable(f"the ack did not reach NATS ({_describe(exc)})") from None
        _remember(self._acked, handle.metadata.sequence.stream, None)

    async def nak(self, handle: object, delay: float) -> None:
        assert isinstance(handle, Msg)
        try:
            await handle.nak(delay=delay or None)
        except nats.errors.MsgAlreadyAckdError:
            pass
        except _ERRORS as exc:
            raise BusUnavailable(f"the nak did not reach NATS ({_describe(exc)})") from None

    async def close(self) -> None:
        try:
            if self._ephemeral:
                # Its pull requests go with it: nothing it was given waits for another subscriber.
                if self._fetching is not None:
                    await cancel_and_wait(self._fetching)
                    if not self._fetching.cancelled():
                        self._fetching.exception()  # seen: not reported as never retrieved
                await self._subscription.unsubscribe()
                await self._js.delete_consumer(self._stream, self._durable)
                return
            # Fetched but never handed out: back at once rather than after the ack wait.
            await self._give_back(list(self._buffer))
            self._buffer.clear()
            await self._drain()
            await self._subscription.unsubscribe()
        except (*_ERRORS, nats.js.errors.NotFoundError):
            pass  # the ack wait gives back what could not be nak'ed

    async def _drain(self) -> None:
        """What the durable's open pull requests still bring, given back as it comes, until they run out.

        A pull request still open at the server (its fetch was cancelled with the stream, or a fetch
        returned before its batch was full) takes messages published until it runs out, into an inbox
        that nobody would read once unsubscribed: they would wait out the ack wait before another
        subscriber of the durable got them. No new request is made: it would take more."""
        if self._fetching is not None:  # left by a subscriber that went while it ran
            with contextlib.suppress(TimeoutError, *_ERRORS):
                await self._give_back(await self._fetching)
            self._fetching = None
        # The server counts a request's time from its arrival, a little after _pull_expires was set, and
        # what it delivered just before running out may still be on its way: a short margin.
        inbox = self._subscription._sub
        loop = asyncio.get_running_loop()
        deadline = self._pull_expires + _DRAIN_MARGIN
        with contextlib.suppress(TimeoutError, nats.errors.TimeoutError):
            while (wait := deadline - loop.time()) > 0:
                msg = await inbox.next_msg(timeout=wait)
                if not JetStreamContext.is_status_msg(msg):  # 408 and the like: a request ran out
                    await self._give_back([msg])

    async def _give_back(self, messages: list[Msg]) -> None:
        """Nak'ed without delay: another subscriber of the durable gets them now."""
        # One that fails (NATS went away) does not keep the others back; the ack wait brings it back.
        await asyncio.gather(*(msg.nak() for msg in messages), return_exceptions=True)


def _remember(table: OrderedDict[int, _V], sequence: int, value: _V) -> None:
    """`value` for `sequence`, the most recent entry; the oldest go beyond ACKED_REMEMBERED."""
    table[sequence] = value
    table.move_to_end(sequence)
    if len(table) > ACKED_REMEMBERED:
        table.popitem(last=False)


def _timestamp(msg: Msg) -> float:
    """When the message was stored, from its ack subject's nanoseconds (nats-py's metadata rounds them to
    the nearest microsecond, which may be after the message)."""
    tokens = (msg.reply or "").split(".")
    # $JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ns>.<pending>, or with <domain>.<hash>
    # after ACK and a random token at the end (the newer form).
    index = 7 if len(tokens) == 9 else 9
    try:
        return int(tokens[index]) / 1e9
    except (IndexError, ValueError):
        return msg.metadata.timestamp.timestamp() if msg.metadata.timestamp else 0.0


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


async def _ignore(exc: Exception) -> None:
    """nats-py reports connection trouble here; the calls that meet it answer UNAVAILABLE instead."""


async def _nothing(*_args: Any) -> None:
    pass
