"""The contract between the cache service and a backend (memory, Redis, memcached).

The service checks every argument before a backend sees it (keys, patterns, TTLs, sizes), and keeps
namespaces apart by passing the caller's namespace with every call: a backend only has to store
(namespace, key) pairs so that two namespaces never meet. Backends raise the errors of
plugins.cache.errors and nothing else.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

__all__ = [
    "CAPABILITIES",
    "COUNTERS",
    "FEED",
    "FEED_LOCAL",
    "KEYS",
    "LOCKS",
    "READY",
    "TTL",
    "CacheBackend",
    "Change",
    "Limits",
]

# What a backend may support; the manifest's `capabilities` lists the same names (a test checks).
KEYS = "keys"  # Keys and Invalidate by pattern
FEED = "invalidation-feed"  # changes through every replica sharing the backend reach every watcher
FEED_LOCAL = "invalidation-feed-local"  # only changes made through this replica are reported
LOCKS = "locks"
COUNTERS = "counters"
TTL = "ttl"
CAPABILITIES = frozenset({KEYS, FEED, FEED_LOCAL, LOCKS, COUNTERS, TTL})


@dataclass(frozen=True, slots=True)
class Limits:
    max_key_bytes: int = 1024  # UTF-8 bytes of a key or a lock name
    # The largest value: a Get's answer must fit in gRPC's default 4 MiB message (which the SDK's
    # channels keep), with room for the key and framing.
    max_value_bytes: int = 4 * 1024 * 1024 - 64 * 1024
    max_batch_keys: int = 1000  # keys in one MGet or MSet
    max_ttl_ms: int = 365 * 24 * 3600 * 1000  # a year: memcached reads longer TTLs as dates
    max_lock_wait_ms: int = 60_000  # longest AcquireLock wait_ms
    default_keys_batch: int = 500  # keys per Keys message when the caller does not say
    max_keys_batch: int = 10_000


@dataclass(frozen=True, slots=True)
class Change:
    """Keys of one namespace that changed (or a whole pattern), as the invalidation feed reports them."""

    keys: tuple[str, ...] = ()
    pattern: str = ""
    origin: str = ""  # the replica that made the change
    ready: bool = False  # the first item of a watch: the subscription is live


READY = Change(ready=True)


class CacheBackend(Protocol):
    name: str
    capabilities: frozenset[str]
    unsupported: Mapping[str, str]  # capability -> why this backend cannot do it
    ttl_resolution_ms: int  # TTLs are rounded up to a multiple of this

    async def get(self, namespace: str, key: str) -> bytes | None: ...

    async def set(self, namespace: str, key: str, value: bytes, ttl_ms: int, *, nx: bool, xx: bool) -> bool:
        """Whether it was stored (nx: only if absent, xx: only if present; never both)."""

    async def delete(self, namespace: str, key: str) -> bool: ...

    async def mget(self, namespace: str, keys: Sequence[str]) -> dict[str, bytes]:
        """The keys that were found (given without duplicates)."""

    async def mset(self, namespace: str, values: Mapping[str, bytes], ttl_ms: int) -> None: ...

    def keys(self, namespace: str, pattern: str) -> AsyncGenerator[list[str], None]:
        """Batches of the keys that match the (checked) glob; each key once."""

    async def invalidate(self, namespace: str, pattern: str) -> int:
        """Delete the keys that match; how many were deleted."""

    async def increment(self, namespace: str, key: str, delta: int) -> int:
        """The new value; FailedPrecondition if the value is not a signed 64-bit integer or would overflow."""

    async def acquire_lock(self, namespace: str, name: str, token: str, ttl_ms: int) -> int | None:
        """The fencing token if `token` now holds the lock, None if someone else does."""

    async def release_lock(self, namespace: str, name: str, token: str) -> bool:
        """Whether `token` held the lock (and so released it)."""

    async def extend_lock(self, namespace: str, name: str, token: str, ttl_ms: int) -> bool:
        """Whether `token` holds the lock (and so now has ttl_ms from now)."""

    def watch(self, namespace: str) -> AsyncGenerator[Change, None]:
        """READY once subscribed, then every change in the namespace; BackendUnavailable if the feed is cut."""

    async def close(self) -> None: ...
