"""`CacheClient`: ICache (upf.cache.v1.Cache) from Python, typed and async.

    cache = await plugin.cache()                      # or CacheClient(channel)
    await cache.set("user:1", b"...", ttl=60)         # ttl in seconds; nx=True: only if absent
    value = await cache.get("user:1")                 # bytes, or None
    async with cache.lock("nightly-report", ttl=30) as lock:
        await storage.write(..., fence=lock.fencing_token)
    async with cache.watch_invalidations("user:*") as feed:   # live once entered
        async for change in feed:
            local.drop(change.keys)

Every failure is a CacheError whose subclass says what to do about it:

    CacheError
    ├── InvalidCacheArgument   a bad argument; the message names the field ("key: empty")
    ├── CacheConflict          the state forbids it: NotAnInteger, LockNotHeld
    ├── CacheUnsupported       this backend cannot (memcached: keys, invalidate); see describe()
    ├── CacheUnavailable       the backend or the cache plugin cannot be reached; retry later
    └── LockTimeout            lock() waited `wait` seconds and the lock was still taken
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, NoReturn

import grpc
from upf.cache.v1 import cache_pb2 as pb, cache_pb2_grpc

from plugins.sdk.grants import owner_metadata

__all__ = [
    "CacheClient",
    "CacheConflict",
    "CacheError",
    "CacheUnavailable",
    "CacheUnsupported",
    "InvalidCacheArgument",
    "Invalidation",
    "InvalidationWatch",
    "Lock",
    "LockNotHeld",
    "LockTimeout",
    "NotAnInteger",
]

CALLER_METADATA = "upf-caller"
_EOF: Any = grpc.aio.EOF  # type: ignore[attr-defined]  # grpc-stubs does not know the end-of-stream marker


class CacheError(Exception):
    """A cache call failed; `code` is the gRPC status (None for LockTimeout), the message the server's."""

    def __init__(self, message: str, code: grpc.StatusCode | None = None) -> None:
        super().__init__(message)
        self.code = code


class InvalidCacheArgument(CacheError):
    """An argument was refused; the message starts with the field's name."""


class CacheConflict(CacheError):
    """The stored state does not allow the call (FAILED_PRECONDITION)."""


class NotAnInteger(CacheConflict):
    """Increment or Decrement of a value that is not a signed 64-bit integer, or that would overflow."""


class LockNotHeld(CacheConflict):
    """Release or Extend of a lock that expired or that someone else holds now."""


class CacheUnsupported(CacheError):
    """The backend cannot do this (UNIMPLEMENTED); `describe()` lists what it can."""


class CacheUnavailable(CacheError):
    """The cache or its backend cannot be reached (UNAVAILABLE, DEADLINE_EXCEEDED); try again later."""


class LockTimeout(CacheError):
    """`lock()` could not take the lock within its `wait`."""


@dataclass(frozen=True, slots=True)
class Lock:
    name: str
    token: str  # the holder's secret: release and extend need it
    fencing_token: int  # grows with every grant of this name; pass it to what the lock protects
    ttl: float  # seconds


@dataclass(frozen=True, slots=True)
class Invalidation:
    keys: tuple[str, ...]  # keys set, changed or deleted
    pattern: str  # non-empty when every key matching it was invalidated
    origin: str  # the cache replica that made the change


def _ms(seconds: float | None) -> int:
    return 0 if seconds is None else math.ceil(seconds * 1000)


def _raise(exc: grpc.aio.AioRpcError, conflict: type[CacheConflict] = CacheConflict) -> NoReturn:
    code, details = exc.code(), exc.details() or exc.code().name
    kinds: dict[grpc.StatusCode, type[CacheError]] = {
        grpc.StatusCode.INVALID_ARGUMENT: InvalidCacheArgument,
        grpc.StatusCode.FAILED_PRECONDITION: conflict,
        grpc.StatusCode.UNIMPLEMENTED: CacheUnsupported,
        grpc.StatusCode.UNAVAILABLE: CacheUnavailable,
        grpc.StatusCode.DEADLINE_EXCEEDED: CacheUnavailable,
    }
    raise kinds.get(code, CacheError)(details, code) from None


class CacheClient:
    """ICache over a grpc.aio channel. `caller` names the namespace (the placeholder identity, sent
    as `upf-caller` metadata, for a cache that takes the caller's word; registered plugins are known by
    their identity token instead); `owner`: another plugin whose keys to work on, as far as its manifest
    grants; `timeout` bounds each call."""

    def __init__(
        self,
        channel: grpc.aio.Channel,
        *,
        caller: str | None = None,
        owner: str | None = None,
        timeout: float | None = 10.0,
    ) -> None:
        self._stub = cache_pb2_grpc.CacheStub(channel)
        self._metadata = (((CALLER_METADATA, caller),) if caller else ()) + owner_metadata(owner)
        self._timeout = timeout

    async def _call(
        self, method: Any, request: Any, conflict: type[CacheConflict] = CacheConflict, *, waits: float = 0.0
    ) -> Any:
        timeout = None if self._timeout is None else self._timeout + waits  # a lock wait is not a slow call
        try:
            return await method(request, timeout=timeout, metadata=self._metadata)
        except grpc.aio.AioRpcError as exc:
            _raise(exc, conflict)

    async def describe(self) -> pb.DescribeResponse:
        """The backend's name, capabilities and limits."""
        return await self._call(self._stub.Describe, pb.DescribeRequest())  # type: ignore[no-any-return]

    async def get(self, key: str) -> bytes | None:
        reply = await self._call(self._stub.Get, pb.GetRequest(key=key))
        return reply.value if reply.found else None

    async def set(
        self, key: str, value: bytes, *, ttl: float | None = None, nx: bool = False, xx: bool = False
    ) -> bool:
        """Store `value` (for `ttl` seconds); whether it was stored (nx: only if absent, xx: only if present)."""
        reply = await self._call(self._stub.Set, pb.SetRequest(key=key, value=value, ttl_ms=_ms(ttl), nx=nx, xx=xx))
        return bool(reply.stored)

    async def delete(self, key: str) -> bool:
        return bool((await self._call(self._stub.Delete, pb.DeleteRequest(key=key))).deleted)

    async def mget(self, keys: Iterable[str]) -> dict[str, bytes]:
        """The values of the keys that were found."""
        return dict((await self._call(self._stub.MGet, pb.MGetRequest(keys=list(keys)))).values)

    async def mset(self, values: Mapping[str, bytes], *, ttl: float | None = None) -> None:
        await self._call(self._stub.MSet, pb.MSetRequest(values=dict(values), ttl_ms=_ms(ttl)))

    async def iter_keys(self, pattern: str = "*", *, batch_size: int = 0) -> AsyncIterator[str]:
        """The keys matching a glob (* ? [a-z] [^a] \\x), as the server streams them."""
        call = self._stub.Keys(
            pb.KeysRequest(pattern=pattern, batch_size=batch_size), timeout=self._timeout, metadata=self._metadata
        )
        try:
            async for batch in call:
                for key in batch.keys:
                    yield key
        except grpc.aio.AioRpcError as exc:
            _raise(exc)
        finally:
            call.cancel()  # a caller that stops early must not leave the stream open

    async def keys(self, pattern: str = "*") -> list[str]:
        return [key async for key in self.iter_keys(pattern)]

    async def invalidate(self, pattern: str) -> int:
        """Delete every key matching the glob; how many were deleted."""
        return int((await self._call(self._stub.Invalidate, pb.InvalidateRequest(pattern=pattern))).deleted)

    async def incr(self, key: str, delta: int = 1) -> int:
        """Add `delta` (a missing key counts as 0); the new value. NotAnInteger if it holds something else."""
        return int(
            (await self._call(self._stub.Increment, pb.CounterRequest(key=key, delta=delta), NotAnInteger)).value
        )

    async def decr(self, key: str, delta: int = 1) -> int:
        return int(
            (await self._call(self._stub.Decrement, pb.CounterRequest(key=key, delta=delta), NotAnInteger)).value
        )

    async def acquire(self, name: str, *, ttl: float, wait: float = 0.0) -> Lock | None:
        """Take the lock for `ttl` seconds, waiting up to `wait` seconds; None if someone else kept it."""
        request = pb.AcquireLockRequest(name=name, ttl_ms=_ms(ttl), wait_ms=_ms(wait))
        reply = await self._call(self._stub.AcquireLock, request, waits=wait)
        if not reply.acquired:
            return None
        lock = reply.lock
        return Lock(lock.name, lock.token, lock.fencing_token, lock.ttl_ms / 1000)

    async def release(self, lock: Lock) -> None:
        """Let go; LockNotHeld if it had expired (then the protected work may have overlapped another's)."""
        await self._call(self._stub.ReleaseLock, pb.ReleaseLockRequest(name=lock.name, token=lock.token), LockNotHeld)

    async def extend(self, lock: Lock, ttl: float) -> None:
        """`ttl` more seconds from now; LockNotHeld if it had expired or someone else holds it."""
        request = pb.ExtendLockRequest(name=lock.name, token=lock.token, ttl_ms=_ms(ttl))
        await self._call(self._stub.ExtendLock, request, LockNotHeld)

    @contextlib.asynccontextmanager
    async def lock(self, name: str, *, ttl: float, wait: float = 10.0) -> AsyncIterator[Lock]:
        """Hold the lock for the block, then release it; LockTimeout if it was not free within `wait`."""
        held = await self.acquire(name, ttl=ttl, wait=wait)
        if held is None:
            raise LockTimeout(f"lock {name!r} is still held by another after waiting {wait} s")
        try:
            yield held
        except BaseException:
            # The block's own error matters more than a failed release; the lock expires by itself.
            with contextlib.suppress(CacheError):
                await self.release(held)
            raise
        await self.release(held)

    def watch_invalidations(self, pattern: str = "") -> InvalidationWatch:
        """`async with` it: entered once the subscription is live; then iterate over the changes."""
        return InvalidationWatch(self._stub, pattern, self._metadata)


class InvalidationWatch:
    """The invalidation feed: CacheUnavailable from the iteration means changes may have been lost."""

    def __init__(self, stub: cache_pb2_grpc.CacheAsyncStub, pattern: str, metadata: Any) -> None:
        self._stub, self._pattern, self._metadata = stub, pattern, metadata
        self._call: Any = None

    async def __aenter__(self) -> InvalidationWatch:
        self._call = self._stub.WatchInvalidations(
            pb.WatchInvalidationsRequest(pattern=self._pattern), metadata=self._metadata
        )
        try:
            first = await self._call.read()
        except grpc.aio.AioRpcError as exc:
            _raise(exc)
        if first is _EOF or not first.ready:
            self._call.cancel()
            raise CacheError("the cache ended the invalidation feed before it was live")
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        if self._call is not None:
            self._call.cancel()

    def __aiter__(self) -> AsyncIterator[Invalidation]:
        return self._changes()

    async def _changes(self) -> AsyncIterator[Invalidation]:
        if self._call is None:
            raise RuntimeError("use `async with client.watch_invalidations() as feed` before iterating")
        while True:
            try:
                event = await self._call.read()
            except grpc.aio.AioRpcError as exc:
                _raise(exc)
            if event is _EOF:
                raise CacheUnavailable(
                    "the invalidation feed ended; changes may have been lost", grpc.StatusCode.UNAVAILABLE
                )
            yield Invalidation(tuple(event.keys), event.pattern, event.origin)
