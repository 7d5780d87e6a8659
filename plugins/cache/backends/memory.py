"""The embedded backend: everything in this process, with time from an injectable clock.

It is the default for `make run` and for tests: nothing to install, and a test can move time forward
instead of waiting for a TTL. Expired entries are dropped when touched and by a sweep that runs every
SWEEP_EVERY writes, so that keys written once and never read again do not pile up.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from dataclasses import dataclass

from plugins.cache import counters
from plugins.cache.backend import COUNTERS, FEED, KEYS, LOCKS, TTL, Change
from plugins.cache.feed import LocalFeed
from plugins.cache.glob import matcher

__all__ = ["MemoryBackend"]

SWEEP_EVERY = 1024

_Key = tuple[str, str]  # (namespace, key)


@dataclass(slots=True)
class _Entry:
    value: bytes
    expires: float | None  # clock() time, None: never


class MemoryBackend:
    name = "memory"
    # One process holds the data, so every change is seen by the feed: it is complete, not local.
    capabilities = frozenset({KEYS, FEED, LOCKS, COUNTERS, TTL})
    unsupported: Mapping[str, str] = {}
    ttl_resolution_ms = 1

    def __init__(self, *, origin: str = "memory", clock: Callable[[], float] = time.monotonic) -> None:
        self._origin = origin
        self._clock = clock  # seconds; tests pass a clock they move by hand
        self._data: dict[_Key, _Entry] = {}
        self._locks: dict[_Key, _Entry] = {}  # value: the holder's token
        self._fences: dict[_Key, int] = {}
        self._feed = LocalFeed()
        self._writes = 0

    async def get(self, namespace: str, key: str) -> bytes | None:
        entry = self._live(self._data, (namespace, key))
        return None if entry is None else entry.value

    async def set(self, namespace: str, key: str, value: bytes, ttl_ms: int, *, nx: bool, xx: bool) -> bool:
        exists = self._live(self._data, (namespace, key)) is not None
        if (nx and exists) or (xx and not exists):
            return False
        self._store(namespace, key, value, ttl_ms)
        self._changed(namespace, key)
        return True

    async def delete(self, namespace: str, key: str) -> bool:
        deleted = self._live(self._data, (namespace, key)) is not None
        self._data.pop((namespace, key), None)
        if deleted:
            self._changed(namespace, key)
        return deleted

    async def mget(self, namespace: str, keys: Sequence[str]) -> dict[str, bytes]:
        found = {key: self._live(self._data, (namespace, key)) for key in keys}
        return {key: entry.value for key, entry in found.items() if entry is not None}

    async def mset(self, namespace: str, values: Mapping[str, bytes], ttl_ms: int) -> None:
        for key, value in values.items():
            self._store(namespace, key, value, ttl_ms)
        if values:
            self._feed.publish(namespace, Change(keys=tuple(values), origin=self._origin))

    async def keys(self, namespace: str, pattern: str) -> AsyncGenerator[list[str], None]:
        # A snapshot: the caller may write while it reads the batches.
        yield self._matching(namespace, pattern)

    async def invalidate(self, namespace: str, pattern: str) -> int:
        doomed = self._matching(namespace, pattern)
        for key in doomed:
            del self._data[(namespace, key)]
        if doomed:
            self._feed.publish(namespace, Change(pattern=pattern, origin=self._origin))
        return len(doomed)

    async def increment(self, namespace: str, key: str, delta: int) -> int:
        entry = self._live(self._data, (namespace, key))
        value = counters.add(key, 0 if entry is None else counters.parse(key, entry.value), delta)
        if entry is None:
            self._store(namespace, key, b"%d" % value, 0)
        else:
            entry.value = b"%d" % value  # keeps its TTL, as Redis INCRBY does
        self._changed(namespace, key)
        return value

    async def acquire_lock(self, namespace: str, name: str, token: str, ttl_ms: int) -> int | None:
        if self._live(self._locks, (namespace, name)) is not None:
            return None
        self._locks[(namespace, name)] = _Entry(token.encode(), self._clock() + ttl_ms / 1000)
        fence = self._fences[(namespace, name)] = self._fences.get((namespace, name), 0) + 1
        return fence

    async def release_lock(self, namespace: str, name: str, token: str) -> bool:
        if not self._holds(namespace, name, token):
            return False
        del self._locks[(namespace, name)]
        return True

    async def extend_lock(self, namespace: str, name: str, token: str, ttl_ms: int) -> bool:
        if not self._holds(namespace, name, token):
            return False
        self._locks[(namespace, name)].expires = self._clock() + ttl_ms / 1000
        return True

    def watch(self, namespace: str) -> AsyncGenerator[Change, None]:
        return self._feed.watch(namespace)

    async def close(self) -> None:
        self._data.clear()

    def _holds(self, namespace: str, name: str, token: str) -> bool:
        entry = self._live(self._locks, (namespace, name))
        return entry is not None and entry.value == token.encode()

    def _live(self, table: dict[_Key, _Entry], key: _Key) -> _Entry | None:
        entry = table.get(key)
        if entry is not None and entry.expires is not None and entry.expires <= self._clock():
            del table[key]
            return None
        return entry

    def _store(self, namespace: str, key: str, value: bytes, ttl_ms: int) -> None:
        expires = self._clock() + ttl_ms / 1000 if ttl_ms else None
        self._data[(namespace, key)] = _Entry(value, expires)
        self._writes += 1
        if self._writes % SWEEP_EVERY == 0:
            self._sweep()

    def _sweep(self) -> None:
        now = self._clock()
        for table in (self._data, self._locks):
            for key in [k for k, e in table.items() if e.expires is not None and e.expires <= now]:
                del table[key]

    def _matching(self, namespace: str, pattern: str) -> list[str]:
        match = matcher(pattern)
        return [k for (ns, k) in list(self._data) if ns == namespace and match(k) and self._live(self._data, (ns, k))]

    def _changed(self, namespace: str, key: str) -> None:
        self._feed.publish(namespace, Change(keys=(key,), origin=self._origin))
