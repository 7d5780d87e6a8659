"""message-bus-redis: Redis Streams.

- Every subject is in one stream, `<prefix>:stream`, so that a filter with wildcards is one consumer
  group and sequences are global (entry ids are `0-<sequence>`, made by a script with INCR, so that
  "deliver from sequence n" is a plain XGROUP CREATE at `0-<n-1>`). Replies (_INBOX.x) go to a short
  capped stream of their own, `<prefix>:inbox`.
- A durable or queue group is a consumer group (`<namespace>__d__<name>` / `__q__`); each subscription
  is a consumer in it. A plain subscription makes its own group and destroys it at the end. The group's
  subject is kept in `<prefix>:filters`: another subject for the same durable is refused.
- Entries that do not match the filter are acknowledged at once (one stream serves all subjects).
- At least once: what a subscriber does not XACK stays pending; XAUTOCLAIM takes it back once it has
  been idle for the ack wait, raising its delivery count. A nak sets the entry's idle time so that it is
  claimable after its delay (XCLAIM IDLE): a nak delay longer than the ack wait counts as the ack wait.
- An ack is XACK: recorded once Redis answers (durable across a Redis restart with appendfsync always).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, cast

from redis import exceptions as redis_errors
from redis.asyncio import Redis

from common.redis_pool import pooled_client
from common.resp import Script, commands_for
from plugins.messagebus.backend import BusUnavailable, ConsumerConflict, ConsumerSpec, Deliver, Outgoing, Received
from plugins.messagebus.subjects import is_inbox, matches

__all__ = ["RedisBus"]

CAPABILITIES = frozenset({"queue-groups", "request-reply", "replay", "sequence", "delayed-nak", "persistence"})
_ERRORS = (redis_errors.ConnectionError, redis_errors.TimeoutError, OSError)
_COMMAND_TIMEOUT = 10.0  # seconds, as the redis-py client's socket timeout
_PUBLISH = """
local sequence = redis.call('INCR', KEYS[2])
redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[6], '0-' .. sequence,
           's', ARGV[1], 'p', ARGV[2], 'h', ARGV[3], 't', ARGV[4], 'r', ARGV[5])
return sequence
"""
INBOX_MAX_LEN = 10_000


class RedisBus:
    name = "redis"
    capabilities = CAPABILITIES
    max_payload = 1024 * 1024

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "upf:bus",
        max_len: int = 1_000_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._url = url
        self._prefix = prefix
        self._stream = f"{prefix}:stream"
        self._sequence = f"{prefix}:sequence"
        self._inbox = f"{prefix}:inbox"
        self._filters = f"{prefix}:filters"
        self._max_len = max_len  # entries kept (approximately); older ones are trimmed
        self._clock = clock
        self.client = pooled_client(url, socket_connect_timeout=2.0, socket_timeout=10.0)
        self._publish = self.client.register_script(_PUBLISH)  # batches: one redis-py pipeline, in order
        # Single publishes share one pipelining connection: a tenth of redis-py's CPU per command, and
        # concurrent publishes leave in one write (common/resp.py).
        self._fast = commands_for(url, self.client, timeout=_COMMAND_TIMEOUT, connect_timeout=2.0)
        self._publish_one = Script(_PUBLISH)

    def stream_of(self, subject: str) -> str:
        return self._inbox if is_inbox(subject) else self._stream

    async def publish(self, message: Outgoing) -> tuple[int, str]:
        fields = self._fields(message)
        try:
            if is_inbox(message.subject):
                entry = await self.client.xadd(self._inbox, fields, maxlen=INBOX_MAX_LEN, approximate=True)  # type: ignore[arg-type]
                return 0, _text(entry)
            keys = [self._stream, self._sequence]
            args: list[Any] = [*fields.values(), self._max_len]
            async with asyncio.timeout(_COMMAND_TIMEOUT):
                sequence = int(await self._fast.run(self._publish_one, keys, args))
        except _ERRORS as exc:
            raise BusUnavailable(f"Redis cannot be reached ({exc})") from None
        except TimeoutError:
            raise BusUnavailable(f"Redis did not store the message within {_COMMAND_TIMEOUT:g} s") from None
        return sequence, str(sequence)

    async def publish_many(self, messages: Sequence[Outgoing]) -> list[tuple[int, str]]:
        # One pipeline, in order (concurrent calls would take several connections, in any order).
        if any(is_inbox(message.subject) for message in messages):
            return [await self.publish(message) for message in messages]
        try:
            async with self.client.pipeline(transaction=False) as pipe:
                for message in messages:
                    args: list[Any] = [*self._fields(message).values(), self._max_len]
                    await self._publish(keys=[self._stream, self._sequence], args=args, client=pipe)
                sequences: Any = await pipe.execute()
        except _ERRORS as exc:
            raise BusUnavailable(f"Redis cannot be reached ({exc})") from None
        return [(int(sequence), str(sequence)) for sequence in sequences]

    def _fields(self, message: Outgoing) -> dict[str, Any]:
        return {
            "s": message.subject,
            "p": message.payload,
            "h": json.dumps(dict(message.headers)),
            "t": repr(self._clock()),
            "r": message.reply_to,
        }

    async def consumer(self, spec: ConsumerSpec) -> _RedisConsumer:
        stream = self.stream_of(spec.filter)
        group = spec.name or f"eph-{secrets.token_hex(8)}"
        try:
            known = await self.client.hget(self._filters, group)
            if known is not None and _text(known) != spec.filter:
                raise ConsumerConflict(f'it exists with the subject "{_text(known)}"')
            start = await self._start(spec, stream)
            try:
                await self.client.xgroup_create(stream, group, id=start, mkstream=True)
            except redis_errors.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
            await self.client.hset(self._filters, group, spec.filter)
        except _ERRORS as exc:
            raise BusUnavailable(f"Redis cannot be reached ({exc})") from None
        # Blocking reads get a connection of their own, closed first on close(): a read cancelled on
        # our side stays blocked in Redis until its connection goes, and would take entries for a
        # consumer that is gone (they would wait for the ack wait).
        reader = Redis.from_url(
            self._url, socket_connect_timeout=2.0, socket_timeout=10.0, single_connection_client=True
        )
        return _RedisConsumer(self, reader, stream, group, spec, ephemeral=spec.name is None)

    async def _start(self, spec: ConsumerSpec, stream: str) -> str:
        if spec.deliver is Deliver.ALL:
            return "0-0"
        if spec.deliver is Deliver.BY_SEQUENCE:
            return f"0-{spec.start_sequence - 1}"
        if spec.deliver is Deliver.BY_TIME:
            return f"0-{await self._first_at(stream, spec.start_time) - 1}"
        return "$"

    async def _first_at(self, stream: str, when: float) -> int:
        """The first sequence published at or after `when` (binary search over the entries' times)."""
        first: Any = await self.client.xrange(stream, count=1)
        last: Any = await self.client.xrevrange(stream, count=1)
        if not first or not last:
            return int(await self.client.get(self._sequence) or 0) + 1

        async def time_from(sequence: int) -> tuple[int, float]:
            entries: Any = await self.client.xrange(stream, min=f"0-{sequence}", count=1)
            entry = entries[0]
            return _sequence_of(entry[0]), float(entry[1][b"t"])

        low, high = _sequence_of(first[0][0]), _sequence_of(last[0][0])
        if float(last[0][1][b"t"]) < when:
            return high + 1
        while low < high:
            middle = (low + high) // 2
            found, at = await time_from(middle)
            if at >= when:
                high = middle
            else:
                low = found + 1
        return low

    async def close(self) -> None:
        await self._fast.aclose()
        await self.client.aclose()

    async def destroy(self) -> None:
        """Delete this bus's keys (tests)."""
        keys = [key async for key in self.client.scan_iter(match=f"{self._prefix}:*")]
        if keys:
            await self.client.delete(*keys)


class _RedisConsumer:
    def __init__(
        self, bus: RedisBus, reader: Redis, stream: str, group: str, spec: ConsumerSpec, *, ephemeral: bool
    ) -> None:
        self._bus = bus
        self._client = bus.client
        self._reader = reader
        self._stream = stream
        self._group = group
        self._name = f"c-{secrets.token_hex(6)}"
        self._spec = spec
        self._ephemeral = ephemeral
        self._ack_wait_ms = max(int(spec.ack_wait * 1000), 1)
        # Blocking reads end this often, so that entries due again are claimed without much delay.
        self._block_ms = max(min(self._ack_wait_ms // 4, 500), 20)
        self._batch = max(1, min(spec.max_in_flight, 64))
        self._buffer: deque[tuple[bytes, dict[bytes, bytes], int]] = deque()
        # Entries handed out and not settled: at most max_in_flight (Redis itself has no such limit).
        self._outstanding: set[bytes] = set()
        self._settled = asyncio.Event()

    async def next(self) -> Received:
        while len(self._outstanding) >= self._spec.max_in_flight:
            self._settled.clear()
            # A settle wakes us; so does the ack wait, after which held entries are claimable again.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._settled.wait(), self._spec.ack_wait)
            if not self._settled.is_set():
                self._outstanding.clear()
        try:
            while not self._buffer:
                if not await self._claim():
                    await self._read()
        except redis_errors.ResponseError as exc:
            if "NOGROUP" in str(exc):  # Redis lost the group (restarted without persistence)
                raise BusUnavailable("the consumer group is gone; subscribe again") from None
            raise
        except _ERRORS as exc:
            raise BusUnavailable(f"Redis cannot be reached ({exc})") from None
        entry_id, fields, count = self._buffer.popleft()
        self._outstanding.add(entry_id)
        sequence = 0 if self._stream == self._bus._inbox else _sequence_of(entry_id)
        return Received(
            _text(fields[b"s"]), fields[b"p"], json.loads(fields[b"h"]), str(sequence) if sequence else _text(entry_id),
            sequence, float(fields[b"t"]), _text(fields[b"r"]), count, entry_id,
        )  # fmt: skip

    async def _claim(self) -> bool:
        """Entries of this group idle for the ack wait (unacknowledged or nak'ed), taken by this consumer."""
        reply: Any = await self._client.xautoclaim(
            self._stream, self._group, self._name, self._ack_wait_ms, "0-0", count=self._batch
        )
        entries = [(entry_id, fields) for entry_id, fields in reply[1] if fields]
        if not entries:
            return False
        async with self._client.pipeline(transaction=False) as pipe:
            for entry_id, _fields in entries:
                pipe.xpending_range(self._stream, self._group, entry_id, entry_id, 1, self._name)
            pending: Any = await pipe.execute()
        for (entry_id, fields), rows in zip(entries, pending, strict=True):
            count = int(rows[0]["times_delivered"]) if rows else 2
            self._buffer.append((entry_id, fields, count))
        return True

    async def _read(self) -> None:
        reply: Any = await self._reader.xreadgroup(
            self._group, self._name, {self._stream: ">"}, count=self._batch, block=self._block_ms
        )
        for _stream, entries in reply or ():
            for entry_id, fields in entries:
                if matches(self._spec.filter, _text(fields[b"s"])):
                    self._buffer.append((entry_id, fields, 1))
                else:
                    await self._client.xack(self._stream, self._group, entry_id)

    def _release(self, handle: object) -> None:
        self._outstanding.discard(cast(bytes, handle))
        self._settled.set()

    async def ack(self, handle: object) -> None:
        self._release(handle)
        try:
            await self._client.xack(self._stream, self._group, cast(bytes, handle))
        except _ERRORS as exc:
            raise BusUnavailable(f"the ack did not reach Redis ({exc})") from None

    async def nak(self, handle: object, delay: float) -> None:
        self._release(handle)
        idle = max(self._ack_wait_ms - int(delay * 1000), 0)
        try:
            await self._client.xclaim(
                self._stream,
                self._group,
                self._name,
                0,
                [cast(bytes, handle)],
                idle=idle,
                justid=True,
            )
        except _ERRORS as exc:
            raise BusUnavailable(f"the nak did not reach Redis ({exc})") from None

    async def close(self) -> None:
        with contextlib.suppress(*_ERRORS):
            await self._reader.aclose()
        try:
            if self._ephemeral:
                await self._client.xgroup_destroy(self._stream, self._group)
                await self._client.hdel(self._bus._filters, self._group)
                return
            # What this consumer still holds (read but not handed out, or read by a blocking call that
            # was cancelled) is made claimable by the others at once; then the consumer is forgotten.
            # (DELCONSUMER would drop its pending entries, so they move first.)
            mine: Any = await self._client.xpending_range(self._stream, self._group, "-", "+", 10_000, self._name)
            ids: list[Any] = [row["message_id"] for row in mine]
            if ids:
                await self._client.xclaim(
                    self._stream, self._group, f"{self._name}-gone", 0, list(ids), idle=self._ack_wait_ms, justid=True
                )
            await self._client.xgroup_delconsumer(self._stream, self._group, self._name)
        except (*_ERRORS, redis_errors.ResponseError):
            pass


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _sequence_of(entry_id: Any) -> int:
    return int(_text(entry_id).split("-")[1])
