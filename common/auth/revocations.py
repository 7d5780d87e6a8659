"""Revoked tokens and sessions: written by the auth plugin on logout or refresh-token reuse, read by the gateway.

    revocations = RedisRevocations("redis://127.0.0.1:6379/0", key_prefix="upf:auth")
    await revocations.start()                        # loads what is already revoked, then follows
    await revocations.revoke("sid", claims["sid"], exp)
    if revocations.is_revoked(claims.get("jti"), claims.get("sid")): ...   # every request: a dict lookup

A revocation names one token (`jti`) or a whole session (`sid`) and lasts until `exp` (unix seconds):
the moment the last token it covers stops being accepted anyway, i.e. that token's exp plus the
verifiers' leeway. After that it is forgotten.

`MemoryRevocations` serves one process (`upf run` hands the same object to the plugin and the gateway).
`RedisRevocations` serves replicas, with the layout of proto/upf/auth/v1/auth.proto:

    SET <prefix>:revoked:<kind>:<id> <exp> EXAT <exp>
    PUBLISH <prefix>:revoked "<kind>:<id>:<exp>"

Each replica keeps a local copy, so that a check never waits for Redis. A background task subscribes
to the channel and, every time it (re)subscribes, then SCANs the keys: a revocation published while
the replica was disconnected is still in Redis and is found that way.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol, get_args

import redis.asyncio as aioredis
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from common.redis_pool import pooled_client

__all__ = [
    "Kind",
    "MemoryRevocations",
    "RedisRevocations",
    "RevocationStatus",
    "RevocationUnavailable",
    "Revocations",
]

logger = logging.getLogger(__name__)

Kind = Literal["jti", "sid"]
_KINDS: tuple[str, ...] = get_args(Kind)


class RevocationUnavailable(Exception):
    """A revocation could not be shared with the other replicas (their store does not answer)."""


@dataclass(frozen=True, slots=True)
class RevocationStatus:
    connected: bool  # following the shared store (always True for memory)
    entries: int  # revocations held locally that have not expired
    syncs: int  # completed (re)subscriptions, each followed by a full load; 0 for memory
    last_error: str = ""  # why the last connection ended, for health pages and logs


class Revocations(Protocol):
    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def revoke(self, kind: Kind, value: str, exp: int) -> None:
        """Revoke one token (`jti`) or a session (`sid`) until `exp` (unix seconds)."""
        ...

    def is_revoked(self, jti: str | None, sid: str | None) -> bool:
        """True when the token or its session is revoked; never waits (a local lookup)."""
        ...

    @property
    def status(self) -> RevocationStatus: ...


def _check(kind: str, value: str, exp: int) -> None:
    if kind not in _KINDS:
        raise ValueError(f"revocation kind must be one of {', '.join(_KINDS)}, not {kind!r}")
    if not value or any(c.isspace() for c in value):
        raise ValueError("a revoked id must be non-empty and contain no whitespace")
    if isinstance(exp, bool) or not isinstance(exp, int):
        raise ValueError(f"exp must be an integer of unix seconds, not {exp!r}")


class _Entries:
    """The local copy: id -> exp per kind, and a heap by exp so that expired entries go in O(log n)."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._by_kind: dict[str, dict[str, int]] = {kind: {} for kind in _KINDS}
        self._heap: list[tuple[int, str, str]] = []

    def add(self, kind: str, value: str, exp: int) -> None:
        self.prune()
        if exp <= self._clock():
            return
        entries = self._by_kind[kind]
        if entries.get(value, 0) >= exp:
            return  # already revoked at least as long
        entries[value] = exp
        heapq.heappush(self._heap, (exp, kind, value))

    def contains(self, jti: str | None, sid: str | None) -> bool:
        heap = self._heap
        now = self._clock()
        if heap and heap[0][0] <= now:
            self.prune()
        if jti is not None:
            exp = self._by_kind["jti"].get(jti)
            if exp is not None and exp > now:
                return True
        if sid is not None:
            exp = self._by_kind["sid"].get(sid)
            if exp is not None and exp > now:
                return True
        return False

    def prune(self) -> None:
        heap = self._heap
        now = self._clock()
        while heap and heap[0][0] <= now:
            exp, kind, value = heapq.heappop(heap)
            entries = self._by_kind[kind]
            if entries.get(value) == exp:  # not extended by a later revocation of the same id
                del entries[value]

    def __len__(self) -> int:
        self.prune()
        return sum(len(entries) for entries in self._by_kind.values())


class MemoryRevocations:
    """Revocations of one process."""

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self._entries = _Entries(clock)

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def revoke(self, kind: Kind, value: str, exp: int) -> None:
        _check(kind, value, exp)
        self._entries.add(kind, value, exp)

    def is_revoked(self, jti: str | None, sid: str | None) -> bool:
        return self._entries.contains(jti, sid)

    @property
    def status(self) -> RevocationStatus:
        return RevocationStatus(connected=True, entries=len(self._entries), syncs=0)


_GLOB_SPECIAL = re.compile(r"([*?\[\]\\])")


class RedisRevocations:
    """Revocations shared through Redis; see the module docstring for the layout and the resubscribe rule."""

    def __init__(
        self,
        url: str,
        key_prefix: str = "upf:auth",
        *,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        backoff_initial: float = 0.1,
        backoff_max: float = 5.0,
        ping_interval: float = 5.0,
        ready_timeout: float = 5.0,
        socket_timeout: float = 5.0,
    ) -> None:
        self._prefix = key_prefix
        self._channel = f"{key_prefix}:revoked"
        self._key_start = f"{key_prefix}:revoked:"
        self._entries = _Entries(clock)
        self._sleep = sleep
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._ping_interval = ping_interval  # an idle subscription is pinged this often, to notice a dead link
        self._ready_timeout = ready_timeout  # how long start() waits for the first load
        options: dict[str, Any] = {
            "decode_responses": True,
            "socket_connect_timeout": socket_timeout,
            "socket_timeout": socket_timeout,
        }
        self._commands = pooled_client(url, **options)
        # No retries on the subscriber: redis-py would reconnect and resubscribe on its own, and the
        # messages published in between would be lost without the SCAN that follows our own resubscribe.
        self._subscriber = aioredis.Redis.from_url(
            url, retry=Retry(NoBackoff(), 0), client_name=f"{key_prefix}:revocations", **options
        )
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        self._connected = False
        self._syncs = 0
        self._last_error = ""

    @property
    def channel(self) -> str:
        return self._channel

    def key(self, kind: Kind, value: str) -> str:
        return f"{self._key_start}{kind}:{value}"

    async def start(self) -> None:
        """Start following; returns once what is already revoked is loaded, or after ready_timeout
        (with a warning: checks then see only local revocations until Redis answers)."""
        if self._task is None:
            self._task = asyncio.create_task(self._follow(), name=f"revocations {self._channel}")
        try:
            async with asyncio.timeout(self._ready_timeout):
                await self._ready.wait()
        except TimeoutError:
            logger.warning("revocations: no answer from Redis in %.1f s; retrying in background", self._ready_timeout)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._connected = False
        await self._subscriber.aclose()
        await self._commands.aclose()

    async def revoke(self, kind: Kind, value: str, exp: int) -> None:
        """Revoke here at once, then in Redis for the other replicas; RevocationUnavailable if Redis fails."""
        _check(kind, value, exp)
        self._entries.add(kind, value, exp)
        try:
            async with self._commands.pipeline(transaction=True) as pipe:
                pipe.set(self.key(kind, value), exp, exat=exp)
                pipe.publish(self._channel, f"{kind}:{value}:{exp}")
                await pipe.execute()
        except RedisError as exc:
            raise RevocationUnavailable(f"cannot publish the revocation to Redis: {exc}") from exc

    def is_revoked(self, jti: str | None, sid: str | None) -> bool:
        return self._entries.contains(jti, sid)

    @property
    def status(self) -> RevocationStatus:
        return RevocationStatus(self._connected, len(self._entries), self._syncs, self._last_error)

    async def _follow(self) -> None:
        delay = self._backoff_initial
        failures = 0
        while True:
            try:
                await self._subscribe_and_listen()
            except (RedisError, OSError) as exc:
                self._last_error = str(exc) or type(exc).__name__
            except Exception as exc:  # a bug must not end the following for good: log it, reconnect
                logger.exception("revocations: unexpected error while following %s", self._channel)
                self._last_error = f"{type(exc).__name__}: {exc}"
            if self._connected:
                delay, failures = self._backoff_initial, 0  # it worked for a while: reconnect promptly
                logger.warning("revocations: lost the Redis subscription (%s); reconnecting", self._last_error)
            elif failures == 0:
                logger.warning("revocations: cannot subscribe in Redis (%s); retrying", self._last_error)
            self._connected = False
            failures += 1
            await self._sleep(delay)
            delay = min(delay * 2, self._backoff_max)

    async def _subscribe_and_listen(self) -> None:
        pubsub = self._subscriber.pubsub()
        try:
            await pubsub.subscribe(self._channel)
            # Subscribed for certain only once Redis confirms; only then is a SCAN sure to miss nothing.
            async with asyncio.timeout(self._ping_interval * 2):
                while (await pubsub.get_message(timeout=self._ping_interval)) is None:
                    pass
            await self._load()
            self._connected = True
            self._syncs += 1
            self._last_error = ""
            self._ready.set()
            await self._listen(pubsub)
        finally:
            with contextlib.suppress(RedisError, OSError):
                await pubsub.aclose()

    async def _listen(self, pubsub: PubSub) -> None:
        awaiting_pong = False
        while True:
            message = await pubsub.get_message(timeout=self._ping_interval)
            if message is None:
                if awaiting_pong:
                    raise ConnectionError(f"no answer to a ping within {self._ping_interval} s")
                await pubsub.ping()
                awaiting_pong = True
                continue
            awaiting_pong = False
            if message["type"] == "message":
                self._apply(str(message["data"]))

    def _apply(self, data: str) -> None:
        kind, _, rest = data.partition(":")
        value, _, exp = rest.rpartition(":")
        try:
            _check(kind, value, int(exp))
        except ValueError:
            logger.warning("revocations: ignoring a malformed message on %s: %r", self._channel, data[:200])
            return
        self._entries.add(kind, value, int(exp))

    async def _load(self) -> None:
        pattern = _GLOB_SPECIAL.sub(r"\\\1", self._key_start) + "*"
        batch: list[str] = []
        async for key in self._commands.scan_iter(match=pattern, count=1000):
            batch.append(key)
            if len(batch) >= 1000:
                await self._load_batch(batch)
                batch = []
        if batch:
            await self._load_batch(batch)

    async def _load_batch(self, keys: list[str]) -> None:
        values = await self._commands.mget(keys)
        for key, exp in zip(keys, values, strict=True):
            if exp is None:
                continue  # expired between SCAN and MGET
            kind, _, value = key[len(self._key_start) :].partition(":")
            try:
                _check(kind, value, int(exp))
            except ValueError:
                logger.warning("revocations: ignoring the malformed key %r", key[:200])
                continue
            self._entries.add(kind, value, int(exp))
