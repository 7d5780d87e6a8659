"""The Redis backend: values, counters and locks in Redis; the invalidation feed over Redis pub/sub.

Layout, under a configurable prefix (default "upf:cache"), with the caller's namespace in every name:

    <prefix>:<namespace>:k:<key>        a value (bytes) or a counter (decimal text, as INCRBY keeps it)
    <prefix>:<namespace>:lock:<name>    a lock: its holder's token, with the lock's TTL
    <prefix>:<namespace>:fence:<name>   the lock's fencing counter: INCR at every grant, never expires
    <prefix>:feed:<namespace>           the pub/sub channel of the namespace's changes

Every write and its announcement on the channel run in one Lua script: one round trip, and no change
is announced that did not happen (Set with nx that stored nothing publishes nothing). Locks are taken
with SET NX PX and the fencing INCR in one script, and released or extended by compare-and-delete and
compare-and-pexpire scripts, so only the token's holder can do either. Listing uses SCAN, never KEYS,
which would block Redis for the whole key space.

Commands are not retried (redis-py's default would retry INCRBY after a dropped connection, perhaps
counting twice): an outage answers UNAVAILABLE at once, and the next call connects again. Watchers
use a client without reconnection as well: a watcher whose connection drops must be told (its stream
ends with UNAVAILABLE) rather than silently resubscribed after missing changes.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Awaitable, Iterator, Mapping, Sequence
from typing import Any, TypeVar, cast

import redis.asyncio
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError, ResponseError
from upf.cache.v1 import cache_pb2 as pb

from common.redis_pool import pooled_client
from common.resp import Script, commands_for
from plugins.cache.backend import COUNTERS, FEED, KEYS, LOCKS, READY, TTL, Change
from plugins.cache.errors import BackendUnavailable, FailedPrecondition
from plugins.cache.glob import escape

__all__ = ["DEFAULT_PREFIX", "RedisBackend"]

_Arg = bytes | str | int  # what a script takes as ARGV
T = TypeVar("T")

DEFAULT_PREFIX = "upf:cache"
_SCAN_COUNT = 1000

# KEYS[1] key; ARGV: value, channel, announcement, then SET's options (PX n, NX or XX).
_SET = """
if redis.call('set', KEYS[1], ARGV[1], unpack(ARGV, 4)) then
  redis.call('publish', ARGV[2], ARGV[3])
  return 1
end
return 0
"""
# KEYS: the keys; ARGV: ttl_ms (0: none), channel, announcement, then one value per key.
_MSET = """
local ttl = tonumber(ARGV[1])
for i = 1, #KEYS do
  if ttl > 0 then redis.call('set', KEYS[i], ARGV[i + 3], 'PX', ttl) else redis.call('set', KEYS[i], ARGV[i + 3]) end
end
redis.call('publish', ARGV[2], ARGV[3])
return #KEYS
"""
_DELETE = """
local n = redis.call('del', KEYS[1])
if n > 0 then redis.call('publish', ARGV[1], ARGV[2]) end
return n
"""
_INCREMENT = """
local value = redis.call('incrby', KEYS[1], ARGV[1])
redis.call('publish', ARGV[2], ARGV[3])
return value
"""
# KEYS: lock, fence; ARGV: token, ttl_ms. The fencing token, or 0 when someone else holds the lock.
_ACQUIRE = """
if redis.call('set', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return redis.call('incr', KEYS[2]) end
return 0
"""
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""
_EXTEND = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end
return 0
"""


class RedisBackend:
    name = "redis"
    capabilities = frozenset({KEYS, FEED, LOCKS, COUNTERS, TTL})
    unsupported: Mapping[str, str] = {}
    ttl_resolution_ms = 1

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        prefix: str = DEFAULT_PREFIX,
        origin: str = "redis",
        timeout: float = 2.0,
    ) -> None:
        self.url = url
        self.prefix = prefix
        self._origin = origin
        self._timeout = timeout
        options: dict[str, Any] = {"retry": Retry(NoBackoff(), 0), "socket_connect_timeout": timeout}
        # No socket_timeout: redis-py would wrap every send in asyncio.wait_for, a task per command
        # (~9 % of the plugin's CPU on a Get). One deadline around each command instead (_run).
        self._client = pooled_client(url, wait=timeout, **options)  # a burst waits for a connection
        # The hot commands (values, counters, locks) share one pipelining connection: per command it
        # costs a tenth of redis-py's CPU (common/resp.py). SCAN, UNLINK and PUBLISH stay here.
        self._fast = commands_for(url, self._client, timeout=timeout)
        self._feed_client = redis.asyncio.Redis.from_url(url, **options)
        self._set = Script(_SET)
        self._mset = Script(_MSET)
        self._delete = Script(_DELETE)
        self._increment = Script(_INCREMENT)
        self._acquire = Script(_ACQUIRE)
        self._release = Script(_RELEASE)
        self._extend = Script(_EXTEND)

    # -- names ----------------------------------------------------------------------------------------

    def _key(self, namespace: str, key: str) -> str:
        return f"{self.prefix}:{namespace}:k:{key}"

    def _channel(self, namespace: str) -> str:
        return f"{self.prefix}:feed:{namespace}"

    def _announce(self, keys: Sequence[str] = (), pattern: str = "") -> bytes:
        return pb.Invalidation(keys=keys, pattern=pattern, origin=self._origin).SerializeToString()

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except ResponseError as exc:
            text = str(exc)
            if "not an integer" in text:
                raise FailedPrecondition("the key does not hold a signed 64-bit integer") from None
            if "overflow" in text:
                raise FailedPrecondition("the counter would overflow a signed 64-bit integer") from None
            raise BackendUnavailable(f"Redis refused the command: {text}") from exc
        except (RedisError, OSError) as exc:
            raise BackendUnavailable(f"Redis at {self._where()} is unavailable ({type(exc).__name__})") from exc

    async def _run(self, command: Awaitable[T]) -> T:
        """One command, its errors as the service's, within `timeout` seconds. A command cut off by the
        deadline is cancelled; its late reply is dropped (pipelined) or its connection closed (redis-py),
        so that it never reaches the next command."""
        try:
            async with asyncio.timeout(self._timeout):
                with self._errors():
                    return await command
        except TimeoutError:
            raise BackendUnavailable(f"Redis at {self._where()} did not answer within {self._timeout:g} s") from None

    def _where(self) -> str:
        kwargs = self._client.connection_pool.connection_kwargs
        return f"{kwargs.get('host', '?')}:{kwargs.get('port', '?')}"

    # -- values ---------------------------------------------------------------------------------------

    async def get(self, namespace: str, key: str) -> bytes | None:
        return cast("bytes | None", await self._run(self._fast.execute("GET", self._key(namespace, key))))

    async def set(self, namespace: str, key: str, value: bytes, ttl_ms: int, *, nx: bool, xx: bool) -> bool:
        options: list[_Arg] = ["PX", ttl_ms] if ttl_ms else []
        options += ["NX"] if nx else ["XX"] if xx else []
        args: list[_Arg] = [value, self._channel(namespace), self._announce([key]), *options]
        return bool(await self._run(self._fast.run(self._set, [self._key(namespace, key)], args)))

    async def delete(self, namespace: str, key: str) -> bool:
        args: list[_Arg] = [self._channel(namespace), self._announce([key])]
        return bool(await self._run(self._fast.run(self._delete, [self._key(namespace, key)], args)))

    async def mget(self, namespace: str, keys: Sequence[str]) -> dict[str, bytes]:
        values = await self._run(self._fast.execute("MGET", *[self._key(namespace, k) for k in keys]))
        return {key: cast(bytes, value) for key, value in zip(keys, values, strict=True) if value is not None}

    async def mset(self, namespace: str, values: Mapping[str, bytes], ttl_ms: int) -> None:
        keys = list(values)
        args: list[_Arg] = [ttl_ms, self._channel(namespace), self._announce(keys), *values.values()]
        await self._run(self._fast.run(self._mset, [self._key(namespace, k) for k in keys], args))

    # -- patterns -------------------------------------------------------------------------------------

    async def keys(self, namespace: str, pattern: str) -> AsyncGenerator[list[str], None]:
        start = len(self._key(namespace, ""))
        seen: set[bytes] = set()  # SCAN may return a key twice while Redis rehashes
        async for page in self._scan(namespace, pattern):
            fresh = [k for k in page if k not in seen]
            seen.update(fresh)
            yield [k[start:].decode() for k in fresh]

    async def invalidate(self, namespace: str, pattern: str) -> int:
        deleted = 0
        async for page in self._scan(namespace, pattern):
            if page:
                deleted += int(await self._run(self._client.unlink(*page)))
        if deleted:
            await self._run(self._client.publish(self._channel(namespace), self._announce(pattern=pattern)))
        return deleted

    async def _scan(self, namespace: str, pattern: str) -> AsyncGenerator[list[bytes], None]:
        match = escape(self._key(namespace, "")) + pattern
        cursor = 0
        while True:
            cursor, page = await self._run(self._client.scan(cursor, match=match, count=_SCAN_COUNT))
            yield cast(list[bytes], page)
            if cursor == 0:
                return

    # -- counters and locks ---------------------------------------------------------------------------

    async def increment(self, namespace: str, key: str, delta: int) -> int:
        args: list[_Arg] = [delta, self._channel(namespace), self._announce([key])]
        return int(await self._run(self._fast.run(self._increment, [self._key(namespace, key)], args)))

    def _lock_keys(self, namespace: str, name: str) -> list[str]:
        return [f"{self.prefix}:{namespace}:lock:{name}", f"{self.prefix}:{namespace}:fence:{name}"]

    async def acquire_lock(self, namespace: str, name: str, token: str, ttl_ms: int) -> int | None:
        fence = int(await self._run(self._fast.run(self._acquire, self._lock_keys(namespace, name), [token, ttl_ms])))
        return fence or None

    async def release_lock(self, namespace: str, name: str, token: str) -> bool:
        return bool(await self._run(self._fast.run(self._release, self._lock_keys(namespace, name)[:1], [token])))

    async def extend_lock(self, namespace: str, name: str, token: str, ttl_ms: int) -> bool:
        keys = self._lock_keys(namespace, name)[:1]
        return bool(await self._run(self._fast.run(self._extend, keys, [token, ttl_ms])))

    # -- the feed -------------------------------------------------------------------------------------

    async def watch(self, namespace: str) -> AsyncGenerator[Change, None]:
        pubsub = self._feed_client.pubsub(ignore_subscribe_messages=True)
        try:
            with self._errors():
                await pubsub.subscribe(self._channel(namespace))
            yield READY
            while True:
                with self._errors():
                    message = await pubsub.get_message(timeout=None)
                if message is None or message.get("type") != "message":
                    continue
                event = pb.Invalidation.FromString(message["data"])
                yield Change(keys=tuple(event.keys), pattern=event.pattern, origin=event.origin)
        finally:
            with contextlib.suppress(Exception):
                await pubsub.aclose()

    async def close(self) -> None:
        await self._fast.aclose()
        await self._client.aclose()
        await self._feed_client.aclose()
