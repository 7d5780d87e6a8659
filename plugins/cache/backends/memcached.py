"""The memcached backend (client: emcache, asyncio with per-call timeouts and a connection pool).

memcached stores values with TTLs, counts (incr) and compares-and-swaps (gets/cas), and that is all:
 - it cannot list keys, so Keys and Invalidate answer UNIMPLEMENTED (the manifest leaves out "keys");
 - it has no pub/sub, so the invalidation feed reports the changes made through this replica only
   ("invalidation-feed-local"); replicas sharing one memcached do not see each other's changes;
 - TTLs are whole seconds, and memcached's clock ticks once a second, so a TTL is rounded up and one
   second added: an entry never expires early, and may live up to two seconds longer than asked;
 - MSet is one set per key, concurrently: not atomic;
 - a counter that Decrement changed, or that holds a negative number, is rewritten with gets/cas
   (memcached's own counters are unsigned) and loses its TTL; incr keeps it;
 - items larger than memcached's -I (item size max, default 1 MiB) are refused: start memcached with
   -I above the plugin's max value bytes (the plugin says so when it is not).

Locks: `add` (only if absent) takes the lock; the fencing counter is then incremented, and the grant is
confirmed by a cas that writes "token fence" into the lock only if the lock is still this token's.
Every confirmed grant thus incremented after the previous holder's confirmation: fencing tokens grow
with grants. Release and Extend are a gets/cas on the holder's token (release by a cas to a time in
the past, which memcached expires at once). memcached may evict the fencing counter under memory
pressure; it then starts again from the current time in microseconds, so tokens keep growing as long
as the clock does and fewer than a million locks of one name are granted per second.

Keys that are not printable ASCII, or that would be longer than memcached's 250 bytes, are stored
under a SHA-256 of the key.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import time
from collections.abc import AsyncGenerator, Iterator, Mapping, Sequence

import emcache

from plugins.cache import counters
from plugins.cache.backend import COUNTERS, FEED_LOCAL, KEYS, LOCKS, TTL, Change
from plugins.cache.errors import BackendUnavailable, FailedPrecondition, InvalidArgument, Unsupported
from plugins.cache.feed import LocalFeed

__all__ = ["DEFAULT_PREFIX", "MemcachedBackend"]

logger = logging.getLogger(__name__)

DEFAULT_PREFIX = "upf:cache"
_MAX_KEY = 250
_RELATIVE_LIMIT = 30 * 24 * 3600  # memcached reads a larger exptime as a Unix time
_EXPIRE_NOW = _RELATIVE_LIMIT + 1  # a Unix time in 1970: memcached expires the item at once
_CAS_ATTEMPTS = 100


class MemcachedBackend:
    name = "memcached"
    capabilities = frozenset({FEED_LOCAL, LOCKS, COUNTERS, TTL})
    unsupported: Mapping[str, str] = {
        KEYS: ": memcached cannot list or match keys (it has no SCAN or KEYS command)",
    }
    ttl_resolution_ms = 1000

    def __init__(
        self,
        address: str = "127.0.0.1:11211",
        *,
        prefix: str = DEFAULT_PREFIX,
        origin: str = "memcached",
        timeout: float = 1.0,
        max_connections: int = 16,
        max_value_bytes: int | None = None,
    ) -> None:
        if not prefix or len(prefix) > 100 or not all(0x21 <= ord(c) <= 0x7E for c in prefix):
            raise ValueError(f"memcached key prefix {prefix!r}: 1-100 printable ASCII characters, no spaces")
        host, _, port = address.rpartition(":")
        self._host = emcache.MemcachedHostAddress(host or "127.0.0.1", int(port))
        self.address = address
        self.prefix = prefix
        self._origin = origin
        self._timeout = timeout
        self._max_connections = max_connections
        self._max_value_bytes = max_value_bytes  # checked against memcached's -I when first connected
        self._client: emcache.Client | None = None  # created on first use: emcache needs a running loop
        self._feed = LocalFeed()
        self._connecting = asyncio.Lock()

    async def _mc(self) -> emcache.Client:
        if self._client is None:
            async with self._connecting:  # two first calls at once must not make two pools
                if self._client is None:
                    self._client = await emcache.create_client(
                        [self._host],
                        timeout=self._timeout,
                        connection_timeout=self._timeout,
                        max_connections=self._max_connections,
                    )
                    await self._check_item_size()
        return self._client

    async def _check_item_size(self) -> None:
        limit = await self.item_size_max()
        # memcached keeps the key and a header of about 50 bytes in the same item as the value.
        if limit is not None and self._max_value_bytes is not None and limit < self._max_value_bytes + 1024:
            logger.warning(
                "memcached at %s stores items of at most %d bytes, less than this plugin's largest value (%d): "
                "start it with -I %dm, or lower UPF_CACHE_MAX_VALUE_BYTES",
                self.address, limit, self._max_value_bytes, math.ceil((self._max_value_bytes + 1024) / 2**20),
            )  # fmt: skip

    async def item_size_max(self) -> int | None:
        """memcached's item size limit (-I), or None if it cannot be asked."""
        assert self._client is not None
        with contextlib.suppress(Exception):
            settings = await self._client.stats(self._host, "settings")
            return int(settings["item_size_max"])
        return None

    # -- names ----------------------------------------------------------------------------------------

    def _name(self, namespace: str, kind: str, key: str) -> bytes:
        plain = f"{self.prefix}:{namespace}:{kind}:{key}".encode()
        if len(plain) <= _MAX_KEY and all(0x21 <= b <= 0x7E for b in plain):
            return plain
        return f"{self.prefix}:{namespace}:{kind}#:{hashlib.sha256(key.encode()).hexdigest()}".encode()

    def _key(self, namespace: str, key: str) -> bytes:
        return self._name(namespace, "k", key)

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except emcache.StorageCommandError as exc:
            if "too large" in str(exc):
                raise InvalidArgument("value", "larger than memcached's item size limit (its -I option)") from None
            raise BackendUnavailable(f"memcached refused the command: {exc}") from exc
        except (TimeoutError, OSError, emcache.ClusterNoAvailableNodes, emcache.CommandError) as exc:
            raise BackendUnavailable(f"memcached at {self.address} is unavailable ({type(exc).__name__})") from exc

    @staticmethod
    def _exptime(ttl_ms: int) -> int:
        if ttl_ms == 0:
            return 0
        seconds = math.ceil(ttl_ms / 1000) + 1  # see the module docstring: never early
        return seconds if seconds <= _RELATIVE_LIMIT else int(time.time()) + seconds

    def _changed(self, namespace: str, keys: Sequence[str]) -> None:
        self._feed.publish(namespace, Change(keys=tuple(keys), origin=self._origin))

    # -- values ---------------------------------------------------------------------------------------

    async def get(self, namespace: str, key: str) -> bytes | None:
        with self._errors():
            item = await (await self._mc()).get(self._key(namespace, key))
        return None if item is None else item.value

    async def set(self, namespace: str, key: str, value: bytes, ttl_ms: int, *, nx: bool, xx: bool) -> bool:
        name, exptime = self._key(namespace, key), self._exptime(ttl_ms)
        with self._errors():
            try:
                if nx:
                    await (await self._mc()).add(name, value, exptime=exptime)
                elif xx:
                    await (await self._mc()).replace(name, value, exptime=exptime)
                else:
                    await (await self._mc()).set(name, value, exptime=exptime)
            except emcache.NotStoredStorageCommandError:
                return False
        self._changed(namespace, [key])
        return True

    async def delete(self, namespace: str, key: str) -> bool:
        with self._errors():
            try:
                await (await self._mc()).delete(self._key(namespace, key))
            except emcache.NotFoundCommandError:
                return False
        self._changed(namespace, [key])
        return True

    async def mget(self, namespace: str, keys: Sequence[str]) -> dict[str, bytes]:
        names = {self._key(namespace, key): key for key in keys}
        with self._errors():
            items = await (await self._mc()).get_many(list(names))
        return {names[name]: item.value for name, item in items.items() if item.value is not None}

    async def mset(self, namespace: str, values: Mapping[str, bytes], ttl_ms: int) -> None:
        exptime = self._exptime(ttl_ms)
        with self._errors():
            mc = await self._mc()
            await asyncio.gather(*(mc.set(self._key(namespace, k), v, exptime=exptime) for k, v in values.items()))
        self._changed(namespace, list(values))

    async def keys(self, namespace: str, pattern: str) -> AsyncGenerator[list[str], None]:
        raise Unsupported("Keys" + self.unsupported[KEYS])
        yield []  # an async generator, like the other backends' keys()

    async def invalidate(self, namespace: str, pattern: str) -> int:
        raise Unsupported("Invalidate" + self.unsupported[KEYS])

    # -- counters -------------------------------------------------------------------------------------

    async def increment(self, namespace: str, key: str, delta: int) -> int:
        name = self._key(namespace, key)
        with self._errors():
            value = await self._native_increment(key, name, delta) if delta >= 0 else None
            if value is None:
                value = await self._cas_increment(key, name, delta)
        self._changed(namespace, [key])
        return value

    async def _native_increment(self, key: str, name: bytes, delta: int) -> int | None:
        """incr, which keeps the TTL; None when it cannot (no such key, or not an unsigned number)."""
        try:
            value = await (await self._mc()).increment(name, delta)
        except emcache.NotFoundCommandError:
            return None
        except ValueError:  # emcache's way of saying CLIENT_ERROR: a negative or non-numeric value
            return None
        if value is None:
            return None
        if value > counters.INT64_MAX:
            await (await self._mc()).decrement(name, delta)  # undo: the answer must stay a signed 64-bit value
            raise FailedPrecondition(f"key {key!r}: the counter would overflow a signed 64-bit integer")
        return value

    async def _cas_increment(self, key: str, name: bytes, delta: int) -> int:
        for _ in range(_CAS_ATTEMPTS):
            item = await (await self._mc()).gets(name)
            if item is None or item.value is None:
                value = counters.add(key, 0, delta)
                try:
                    await (await self._mc()).add(name, b"%d" % value)
                    return value
                except emcache.NotStoredStorageCommandError:
                    continue  # someone created it meanwhile: count on theirs
            value = counters.add(key, counters.parse(key, item.value), delta)
            try:
                await (await self._mc()).cas(name, b"%d" % value, item.cas or 0)
                return value
            except emcache.NotStoredStorageCommandError:
                continue
        raise BackendUnavailable(f"key {key!r}: too many concurrent changes to count; try again")

    # -- locks ----------------------------------------------------------------------------------------

    async def acquire_lock(self, namespace: str, name: str, token: str, ttl_ms: int) -> int | None:
        lock, exptime = self._name(namespace, "lock", name), self._exptime(ttl_ms)
        with self._errors():
            try:
                await (await self._mc()).add(lock, token.encode(), exptime=exptime)
            except emcache.NotStoredStorageCommandError:
                return None
            fence = await self._next_fence(self._name(namespace, "fence", name))
            item = await (await self._mc()).gets(lock)
            if item is None or item.value != token.encode():
                return None  # expired before it was confirmed: someone else may hold it now
            try:
                await (await self._mc()).cas(lock, b"%s %d" % (token.encode(), fence), item.cas or 0, exptime=exptime)
            except emcache.NotStoredStorageCommandError:
                return None
        return fence

    async def _next_fence(self, name: bytes) -> int:
        for _ in range(_CAS_ATTEMPTS):
            try:
                value = await (await self._mc()).increment(name, 1)
                if value is not None:
                    return value
            except emcache.NotFoundCommandError:
                pass
            start = time.time_ns() // 1000  # see the module docstring: eviction must not restart at 1
            try:
                await (await self._mc()).add(name, b"%d" % start)
                return start
            except emcache.NotStoredStorageCommandError:
                continue
        raise BackendUnavailable("too many concurrent lock grants; try again")

    async def _holder(self, lock: bytes, token: str) -> int | None:
        """The lock's cas value if `token` holds it."""
        item = await (await self._mc()).gets(lock)
        if item is None or item.value is None or item.value.split(b" ")[0] != token.encode():
            return None
        return item.cas or 0

    async def release_lock(self, namespace: str, name: str, token: str) -> bool:
        lock = self._name(namespace, "lock", name)
        with self._errors():
            cas = await self._holder(lock, token)
            if cas is None:
                return False
            try:
                await (await self._mc()).cas(lock, b"released", cas, exptime=_EXPIRE_NOW)
            except emcache.NotStoredStorageCommandError:
                return False
        return True

    async def extend_lock(self, namespace: str, name: str, token: str, ttl_ms: int) -> bool:
        lock = self._name(namespace, "lock", name)
        with self._errors():
            item = await (await self._mc()).gets(lock)
            if item is None or item.value is None or item.value.split(b" ")[0] != token.encode():
                return False
            try:
                await (await self._mc()).cas(lock, item.value, item.cas or 0, exptime=self._exptime(ttl_ms))
            except emcache.NotStoredStorageCommandError:
                return False
        return True

    # -- the feed -------------------------------------------------------------------------------------

    def watch(self, namespace: str) -> AsyncGenerator[Change, None]:
        return self._feed.watch(namespace)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
