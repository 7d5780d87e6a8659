"""The token bucket over a small pipelined RESP2 client: one connection, one round trip per decision.

Why not redis-py here: through redis-py a decision costs 55-114 us of gateway CPU (connection pool
checkout, per-command timeouts, its generic reply parser), against a budget of 15 us (issue 5). The
bucket needs one command, EVALSHA of token_bucket.lua, so this client speaks just enough RESP2 for
it, the way gateway/upstream/http2.py speaks just enough HTTP/2 for gRPC:

- one TCP connection, opened on first use and again after it is lost; AUTH and SELECT from the
  `redis://[[user]:password@]host[:port][/db]` URL when it is opened;
- commands pipelined on it: each decision writes its command and waits for its reply; replies come
  back in the order the commands went out, so a deque of futures matches them. Writes of one loop
  iteration leave in one send() (gateway/corking.py);
- EVALSHA, and on NOSCRIPT (a restarted or flushed Redis) EVAL of the whole script, which also
  caches it again for the EVALSHAs that follow;
- failure is a StoreError for every pending decision, at once: when the connection is lost, and
  when the oldest reply is older than `timeout` (then the connection is dropped too, since the
  replies still owed on it could no longer be matched). One watchdog timer per connection, armed
  for the oldest pending reply, not one timer per request.

Only what the script and the handshake return is parsed: simple strings, errors, integers, bulk
strings and arrays of those. rediss:// and unix:// URLs stay with redis-py (gateway/ratelimit/redis.py);
RateLimiter.from_settings chooses.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections import deque
from collections.abc import Sequence
from typing import cast
from urllib.parse import unquote, urlsplit

from common.corking import CorkedTransport
from gateway.ratelimit.bucket import Decision, StoreError, refill_seconds
from gateway.ratelimit.redis import _MULTI_SCRIPT, _SCRIPT, DEFAULT_PREFIX

_MULTI_SHA = hashlib.sha1(_MULTI_SCRIPT.encode()).hexdigest().encode()

__all__ = ["RespClient", "RespError", "RespScript", "RespTokenBucket", "handles_url"]

Reply = int | bytes | None | list["Reply"]


class RespError(Exception):
    """An error reply from Redis (`-NOSCRIPT ...`, `-WRONGPASS ...`): the command failed, the connection is fine."""


class _ProtocolError(Exception):
    """Bytes that are not a RESP2 reply: the connection cannot be trusted any longer."""


def handles_url(url: str) -> bool:
    """Whether RespClient speaks to this URL: plain TCP redis:// only (no TLS, no Unix sockets)."""
    return url.startswith("redis://")


def bulks(*parts: bytes) -> bytes:
    """RESP2 bulk strings, without the array header."""
    return b"".join(b"$%d\r\n%s\r\n" % (len(part), part) for part in parts)


def command(*parts: bytes) -> bytes:
    """A command as a RESP2 array of bulk strings."""
    return b"*%d\r\n" % len(parts) + bulks(*parts)


# The token bucket script's reply, [allowed, remaining, "retry_after", "reset_after"], matched in one
# C call: the generic parser below takes several microseconds of Python for it.
_BUCKET_REPLY = re.compile(rb"\*4\r\n:(-?\d+)\r\n:(-?\d+)\r\n\$\d+\r\n([^\r]*)\r\n\$\d+\r\n([^\r]*)\r\n")


# token_buckets.lua's reply for two buckets (a per-client and a method limit), likewise in one call.
_PAIR_REPLY = re.compile(rb"\*2\r\n" + _BUCKET_REPLY.pattern * 2)


def _parse(buf: bytearray, pos: int) -> tuple[Reply | RespError, int] | None:
    """One reply starting at `pos` and the position after it, or None when it has not all arrived."""
    bucket = _BUCKET_REPLY.match(buf, pos)
    if bucket is not None:
        allowed, remaining, retry_after, reset_after = bucket.groups()
        return [int(allowed), int(remaining), retry_after, reset_after], bucket.end()
    pair = _PAIR_REPLY.match(buf, pos)
    if pair is not None:
        a1, r1, ra1, rs1, a2, r2, ra2, rs2 = pair.groups()
        return [[int(a1), int(r1), ra1, rs1], [int(a2), int(r2), ra2, rs2]], pair.end()
    end = buf.find(b"\r\n", pos)
    if end < 0:
        return None
    kind = buf[pos]
    if kind == 0x3A:  # ':' integer
        return int(buf[pos + 1 : end]), end + 2
    if kind == 0x24:  # '$' bulk string
        size = int(buf[pos + 1 : end])
        if size < 0:
            return None, end + 2
        stop = end + 2 + size
        if len(buf) < stop + 2:
            return None
        return bytes(buf[end + 2 : stop]), stop + 2
    if kind == 0x2A:  # '*' array
        count = int(buf[pos + 1 : end])
        at = end + 2
        items: list[Reply] = []
        for _ in range(count):
            parsed = _parse(buf, at)
            if parsed is None:
                return None
            item, at = parsed
            if isinstance(item, RespError):
                item = None  # only inside MULTI/EXEC, which this client never sends
            items.append(item)
        return items, at
    if kind == 0x2B:  # '+' simple string
        return bytes(buf[pos + 1 : end]), end + 2
    if kind == 0x2D:  # '-' error
        return RespError(buf[pos + 1 : end].decode("utf-8", "replace")), end + 2
    raise _ProtocolError(f"unexpected reply type {chr(kind)!r}")


class _Connection(asyncio.Protocol):
    """One connection's replies, matched in order to the futures of the commands that asked for them."""

    def __init__(self, client: RespClient, loop: asyncio.AbstractEventLoop) -> None:
        self.client = client
        self.loop = loop
        self.transport: CorkedTransport | None = None
        self.raw: asyncio.Transport | None = None
        self.closed = False
        # (future, loop time the command was written), oldest first: the order replies arrive in.
        self.pending: deque[tuple[asyncio.Future[Reply], float]] = deque()
        self.buffer = bytearray()
        self.watchdog: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.raw = cast(asyncio.Transport, transport)
        self.transport = CorkedTransport(self.raw, self.loop)

    def request(self, payload: bytes) -> asyncio.Future[Reply]:
        future: asyncio.Future[Reply] = self.loop.create_future()
        if self.closed or self.transport is None or self.raw is None:
            future.set_exception(StoreError("the Redis connection is closed"))
            return future
        now = self.loop.time()
        if self.watchdog is None:
            # Armed once and left running while commands come and go: one timer per `timeout`
            # seconds, not one set and cancelled per command (a few us each with one in flight).
            self.watchdog = self.loop.call_at(now + self.client.timeout, self._check_age)
        if self.pending:
            self.transport.write(payload)  # merged with the other commands of this loop iteration
        else:
            # Nothing in flight, so nothing corked: out at once, without a flush callback (the
            # usual case on a quiet gateway; a busy one always has commands in flight).
            self.raw.write(payload)
        self.pending.append((future, now))
        return future

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        pending = self.pending
        pos = 0
        try:
            while True:
                parsed = _parse(buffer, pos)
                if parsed is None:
                    break
                if not pending:
                    raise _ProtocolError("a reply nobody asked for")
                reply, pos = parsed
                future = pending.popleft()[0]
                if future.done():
                    continue  # its caller was cancelled; the reply still had to be consumed
                if isinstance(reply, RespError):
                    future.set_exception(reply)
                else:
                    future.set_result(reply)
        except (_ProtocolError, ValueError) as exc:
            self.fail(StoreError(f"Redis protocol error: {exc}"))
            return
        del buffer[:pos]

    def _check_age(self) -> None:
        # Runs when the oldest pending reply may be overdue; re-armed for the next oldest otherwise,
        # and left unarmed when nothing is pending (the next command arms it).
        self.watchdog = None
        if not self.pending:
            return
        due = self.pending[0][1] + self.client.timeout
        if self.loop.time() >= due:
            self.fail(StoreError(f"Redis did not answer within {self.client.timeout} s"))
        else:
            self.watchdog = self.loop.call_at(due, self._check_age)

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(StoreError(f"lost the Redis connection ({exc or 'closed by the server'})"))

    def fail(self, error: StoreError) -> None:
        """Close the connection and fail every pending command with `error`."""
        if not self.closed:
            self.closed = True
            if self.transport is not None:
                self.transport.abort()
        if self.watchdog is not None:
            self.watchdog.cancel()
            self.watchdog = None
        pending, self.pending = self.pending, deque()
        for future, _ in pending:
            if not future.done():
                future.set_exception(error)
        self.client._lost(self)


class RespClient:
    """One pipelined connection to the Redis of a `redis://` URL, opened lazily; see the module docstring.

    Args:
        url: `redis://[[user]:password@]host[:port][/db]`.
        timeout: seconds to connect, and the most any reply may take.
    """

    def __init__(self, url: str, *, timeout: float = 0.25) -> None:
        if not handles_url(url):
            raise ValueError(f"{url!r} is not a redis:// URL")
        parts = urlsplit(url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 6379
        self.timeout = timeout
        handshake = []
        if parts.password is not None:
            credentials = [unquote(parts.password).encode()]
            if parts.username:
                credentials.insert(0, unquote(parts.username).encode())
            handshake.append(command(b"AUTH", *credentials))
        db = parts.path.strip("/")
        if db and db != "0":
            handshake.append(command(b"SELECT", db.encode()))
        self._handshake = handshake
        self._connection: _Connection | None = None
        self._connecting: asyncio.Task[_Connection] | None = None

    async def call(self, payload: bytes) -> Reply:
        """Send one encoded command (`command(...)`) and wait for its reply.

        Raises:
            RespError: Redis answered with an error.
            StoreError: no connection, or no answer within `timeout`.
        """
        connection = self._connection
        if connection is None or connection.closed:
            connection = await self._connect()
        return await connection.request(payload)

    async def ping(self) -> bool:
        return await self.call(command(b"PING")) == b"PONG"

    async def aclose(self) -> None:
        if self._connecting is not None:
            self._connecting.cancel()
            self._connecting = None
        if self._connection is not None:
            self._connection.fail(StoreError("the Redis client was closed"))

    def _lost(self, connection: _Connection) -> None:
        if self._connection is connection:
            self._connection = None  # the next call opens a new one

    async def _connect(self) -> _Connection:
        # Concurrent first calls share one attempt; shielded so that one caller's cancellation
        # does not abort the connection the others wait for.
        task = self._connecting
        if task is None:
            task = self._connecting = asyncio.get_running_loop().create_task(self._open())
            task.add_done_callback(self._connected)
        return await asyncio.shield(task)

    def _connected(self, task: asyncio.Task[_Connection]) -> None:
        # Cleared as soon as the attempt ends, even if every caller waiting for it was cancelled,
        # so that a failed attempt is never handed to a later call.
        if self._connecting is task:
            self._connecting = None

    async def _open(self) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.timeout):
                _, connection = await loop.create_connection(lambda: _Connection(self, loop), self.host, self.port)
        except (OSError, TimeoutError) as exc:
            raise StoreError(f"cannot connect to Redis at {self.host}:{self.port}: {exc!r}") from exc
        try:
            # Awaited before any decision is sent; the watchdog bounds them like any reply.
            for payload in self._handshake:
                await connection.request(payload)
        except RespError as exc:
            connection.fail(StoreError(f"Redis refused the connection set-up: {exc}"))
            raise StoreError(f"Redis refused the connection set-up: {exc}") from exc
        if connection.closed:
            raise StoreError("lost the Redis connection while setting it up")
        self._connection = connection
        return connection


class RespScript:
    """A Lua script run through RespClient, called like redis-py's registered scripts.

    `await script(keys=[...], args=[...])`: EVALSHA, and EVAL on NOSCRIPT (which caches it again).
    Replies go through the generic parser; for scripts run far less often than once per decision.
    """

    def __init__(self, client: RespClient, text: str) -> None:
        self.client = client
        self._text = text.encode()
        self._sha = hashlib.sha1(self._text).hexdigest().encode()

    async def __call__(self, *, keys: Sequence[str], args: Sequence[str | bytes | int | float]) -> Reply:
        tail = bulks(*(key.encode() for key in keys)) + bulks(*map(_arg, args))
        head = b"*%d\r\n" % (3 + len(keys) + len(args))
        count = b"%d" % len(keys)
        try:
            try:
                return await self.client.call(head + bulks(b"EVALSHA", self._sha, count) + tail)
            except RespError as exc:
                if not str(exc).startswith("NOSCRIPT"):
                    raise
                return await self.client.call(head + bulks(b"EVAL", self._text, count) + tail)
        except RespError as exc:
            raise StoreError(f"Redis refused the script: {exc}") from exc


def _arg(value: str | bytes | int | float) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, float):
        return repr(value).encode()  # every digit
    return str(value).encode()


class RespTokenBucket:
    """A token bucket per key in Redis through RespClient; same script, keys and contract as RedisTokenBucket.

    Args:
        client: the connection; its owner closes it.
        rate: tokens added per second.
        burst: the bucket's size.
        policy: the policy's name, part of every key.
        prefix: namespace for the keys (tests use their own).
    """

    def __init__(
        self,
        client: RespClient,
        *,
        rate: float,
        burst: int,
        policy: str = "default",
        prefix: str = DEFAULT_PREFIX,
    ) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be positive and burst at least 1")
        self.client = client
        self.rate = rate
        self.burst = burst
        self.ttl = refill_seconds(rate, burst)
        self.key_prefix = f"{prefix}:{policy}:"
        sha = hashlib.sha1(_SCRIPT.encode()).hexdigest().encode()  # Redis names scripts by SHA-1
        # Everything but the key and the cost is the same for every decision: encoded once.
        # A command is 8 bulk strings: the 3 of a head, the key, and the 4 of a tail.
        self._evalsha_head = b"*8\r\n" + bulks(b"EVALSHA", sha, b"1")
        self._eval_head = b"*8\r\n" + bulks(b"EVAL", _SCRIPT.encode(), b"1")
        self._rate = repr(float(rate)).encode()  # repr keeps every digit of the float
        self._tails = {cost: self._tail(cost) for cost in (0, 1)}
        # take_all's commands led by this bucket, encoded but for the keys: (buckets, cost) -> parts.
        self._joint: dict[tuple[tuple[RespTokenBucket, ...], int], tuple[bytes, bytes, bytes]] = {}

    def key(self, identity: str) -> str:
        return self.key_prefix + identity

    def _tail(self, cost: int) -> bytes:
        return bulks(self._rate, b"%d" % self.burst, b"%d" % cost, b"%d" % self.ttl)

    def _encode(self, head: bytes, key: bytes, cost: int) -> bytes:
        tail = self._tails.get(cost) or self._tail(cost)
        return b"%s$%d\r\n%s\r\n%s" % (head, len(key), key, tail)

    async def take(self, key: str, cost: int = 1) -> Decision:
        if not 0 <= cost <= self.burst:
            raise ValueError(f"cost {cost} is outside 0..{self.burst}")
        name = (self.key_prefix + key).encode()
        try:
            try:
                reply = await self.client.call(self._encode(self._evalsha_head, name, cost))
            except RespError as exc:
                if not str(exc).startswith("NOSCRIPT"):
                    raise
                # Redis lost its script cache (restart, failover, SCRIPT FLUSH): EVAL runs the
                # script and caches it again, so only this round of decisions pays for the text.
                reply = await self.client.call(self._encode(self._eval_head, name, cost))
        except RespError as exc:
            raise StoreError(f"Redis refused the bucket script: {exc}") from exc
        # Checked by hand: a `match` sequence pattern costs microseconds (an ABC isinstance check).
        if type(reply) is list and len(reply) == 4:
            allowed, remaining, retry_after, reset_after = reply
            if (
                type(allowed) is int
                and type(remaining) is int
                and type(retry_after) is bytes
                and type(reset_after) is bytes
            ):
                return Decision(allowed == 1, remaining, float(retry_after), float(reset_after), self.burst)
        raise StoreError(f"unexpected reply from the bucket script: {reply!r}")

    def _encode_joint(self, buckets: tuple[RespTokenBucket, ...], cost: int) -> tuple[bytes, bytes, bytes]:
        for bucket in buckets:
            if not 0 <= cost <= bucket.burst:
                raise ValueError(f"cost {cost} is outside 0..{bucket.burst}")
        count = b"%d" % len(buckets)
        size = b"*%d\r\n" % (3 + 5 * len(buckets))  # EVALSHA sha numkeys, then a key and 4 args each
        args = [
            arg for bucket in buckets for arg in (bucket._rate, b"%d" % bucket.burst, b"%d" % cost, b"%d" % bucket.ttl)
        ]
        parts = (
            size + bulks(b"EVALSHA", _MULTI_SHA, count),
            size + bulks(b"EVAL", _MULTI_SCRIPT.encode(), count),
            bulks(*args),
        )
        if len(self._joint) >= 64:
            self._joint.clear()  # buckets remade for changed manifests: keep none of the old alive
        self._joint[(buckets, cost)] = parts
        return parts

    @staticmethod
    async def take_all(buckets: Sequence[RespTokenBucket], key: str, cost: int = 1) -> list[Decision]:
        """Take `cost` from `key`'s bucket in every one of `buckets`, or from none: one EVALSHA.

        The buckets share the first one's client. One decision per bucket, in order; `allowed` says
        whether that bucket held `cost`, the call going through only if all do.
        """
        first = buckets[0]
        parts = first._joint.get((tuple(buckets), cost))
        if parts is None:
            parts = first._encode_joint(tuple(buckets), cost)
        evalsha_head, eval_head, tail = parts
        keys = bulks(*[(bucket.key_prefix + key).encode() for bucket in buckets])
        try:
            try:
                reply = await first.client.call(evalsha_head + keys + tail)
            except RespError as exc:
                if not str(exc).startswith("NOSCRIPT"):
                    raise
                reply = await first.client.call(eval_head + keys + tail)
        except RespError as exc:
            raise StoreError(f"Redis refused the buckets script: {exc}") from exc
        decisions = []
        if type(reply) is list and len(reply) == len(buckets):
            for bucket, one in zip(buckets, reply, strict=True):
                if type(one) is not list or len(one) != 4:
                    break
                allowed, remaining, retry_after, reset_after = one
                if not (
                    type(allowed) is int
                    and type(remaining) is int
                    and type(retry_after) is bytes
                    and type(reset_after) is bytes
                ):
                    break
                decisions.append(
                    Decision(allowed == 1, remaining, float(retry_after), float(reset_after), bucket.burst)
                )
            else:
                return decisions
        raise StoreError(f"unexpected reply from the buckets script: {reply!r}")
