"""The gRPC servicer of upf.cache.v1.Cache, one for every backend.

It does what must be the same everywhere: it checks each argument and names the field that is wrong,
finds the caller's namespace (through the `namespace_of` collaborator) or, when the caller names another
plugin's (`upf-owner`), checks every key, lock name and pattern it touches against what the owner's
manifest grants (`sharing`, plugins/sdk/grants.py; a pattern by its literal start), refuses what the backend cannot
do with UNIMPLEMENTED, waits for locks, and turns the backend's errors into statuses. A backend's
CacheError becomes its status and message; anything else is logged here and answered INTERNAL
"internal error", never with the exception's text or a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, NoReturn, TypeAlias, TypeVar

import grpc
from upf.cache.v1 import cache_pb2 as pb, cache_pb2_grpc

from plugins.cache import counters
from plugins.cache.backend import FEED, FEED_LOCAL, KEYS, CacheBackend, Limits
from plugins.cache.errors import CacheError, FailedPrecondition, InvalidArgument, Unsupported
from plugins.cache.glob import check_pattern, literal_prefix, matcher
from plugins.cache.namespace import caller_from_metadata
from plugins.sdk.grants import Scope, Sharing, SharingError

__all__ = ["CacheService", "NamespaceOf"]

logger = logging.getLogger(__name__)

_Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"
NamespaceOf = Callable[[_Context], Awaitable[str]]
Touches = Sequence[tuple[str, str]]  # (key, lock name or pattern's literal start; the request field)
T = TypeVar("T")

_LOCK_POLL_FIRST = 0.005  # seconds between tries of a contended lock, doubling up to _LOCK_POLL_MAX
_LOCK_POLL_MAX = 0.1


class CacheService(cache_pb2_grpc.CacheServicer):
    def __init__(
        self,
        backend: CacheBackend,
        *,
        namespace_of: NamespaceOf = caller_from_metadata,
        limits: Limits | None = None,
        clock: Callable[[], float] = time.monotonic,
        sharing: Sharing | None = None,
    ) -> None:
        self.backend = backend
        self.limits = limits or Limits()
        self._namespace_of = namespace_of
        self._sharing = sharing or Sharing("cache", None)
        self._clock = clock  # only for how long AcquireLock waits; TTLs are the backend's business

    # -- plumbing -------------------------------------------------------------------------------------

    async def _namespace(self, context: _Context, touches: Touches, write: bool) -> str:
        """The namespace the call works in, once the caller may read (or `write`) each (key, field)."""
        scope: Scope = await self._sharing.scope(context, await self._namespace_of(context))
        for key, field in touches:
            scope.require(key, write=write, field=field)
        return scope.namespace

    async def _answer(
        self,
        context: _Context,
        method: str,
        call: Callable[[str], Awaitable[T]],
        touches: Touches,
        *,
        write: bool = False,
    ) -> T:
        try:
            return await call(await self._namespace(context, touches, write))
        except grpc.aio.AbortError:
            raise  # the call was already ended with its status (a namespace_of that refuses the caller)
        except Exception as exc:
            await _abort(context, *_status(method, exc))

    async def _stream(
        self, context: _Context, method: str, produce: Callable[[str], AsyncGenerator[T, None]], touches: Touches
    ) -> AsyncGenerator[T, None]:
        try:
            async with contextlib.aclosing(produce(await self._namespace(context, touches, False))) as items:
                async for item in items:
                    yield item
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            await _abort(context, *_status(method, exc))

    def _require(self, capability: str, method: str) -> None:
        if capability not in self.backend.capabilities:
            why = self.backend.unsupported.get(capability, "")
            raise Unsupported(f"{method} needs the {capability!r} capability, which {self.backend.name} lacks{why}")

    def _key(self, key: str, field: str = "key") -> str:
        if not key:
            raise InvalidArgument(field, "empty")
        if len(key.encode()) > self.limits.max_key_bytes:
            raise InvalidArgument(field, f"longer than {self.limits.max_key_bytes} bytes")
        return key

    def _value(self, value: bytes, field: str = "value") -> bytes:
        if len(value) > self.limits.max_value_bytes:
            raise InvalidArgument(field, f"{len(value)} bytes, more than the limit of {self.limits.max_value_bytes}")
        return value

    def _ttl(self, ttl_ms: int, field: str = "ttl_ms", *, required: bool = False) -> int:
        if ttl_ms < 0:
            raise InvalidArgument(field, f"{ttl_ms} is negative; 0 means no expiry")
        if required and ttl_ms == 0:
            raise InvalidArgument(field, "required: a lock must expire by itself if its holder dies")
        if ttl_ms > self.limits.max_ttl_ms:
            raise InvalidArgument(field, f"{ttl_ms} is more than the limit of {self.limits.max_ttl_ms} (a year)")
        return ttl_ms

    def _batch(self, count: int, field: str) -> None:
        if count > self.limits.max_batch_keys:
            raise InvalidArgument(field, f"{count} keys, more than the limit of {self.limits.max_batch_keys}")

    # -- the methods ----------------------------------------------------------------------------------

    async def Describe(self, request: pb.DescribeRequest, context: _Context) -> pb.DescribeResponse:
        return pb.DescribeResponse(
            backend=self.backend.name,
            capabilities=sorted(self.backend.capabilities),
            max_key_bytes=self.limits.max_key_bytes,
            max_value_bytes=self.limits.max_value_bytes,
            ttl_resolution_ms=self.backend.ttl_resolution_ms,
            max_batch_keys=self.limits.max_batch_keys,
        )

    async def Get(self, request: pb.GetRequest, context: _Context) -> pb.GetResponse:
        async def call(ns: str) -> pb.GetResponse:
            value = await self.backend.get(ns, self._key(request.key))
            return pb.GetResponse() if value is None else pb.GetResponse(found=True, value=value)

        return await self._answer(context, "Get", call, [(request.key, "key")])

    async def Set(self, request: pb.SetRequest, context: _Context) -> pb.SetResponse:
        async def call(ns: str) -> pb.SetResponse:
            key, value, ttl = self._key(request.key), self._value(request.value), self._ttl(request.ttl_ms)
            if request.nx and request.xx:
                raise InvalidArgument("nx", "nx (only if absent) and xx (only if present) exclude each other")
            stored = await self.backend.set(ns, key, value, ttl, nx=request.nx, xx=request.xx)
            return pb.SetResponse(stored=stored)

        return await self._answer(context, "Set", call, [(request.key, "key")], write=True)

    async def Delete(self, request: pb.DeleteRequest, context: _Context) -> pb.DeleteResponse:
        async def call(ns: str) -> pb.DeleteResponse:
            return pb.DeleteResponse(deleted=await self.backend.delete(ns, self._key(request.key)))

        return await self._answer(context, "Delete", call, [(request.key, "key")], write=True)

    async def MGet(self, request: pb.MGetRequest, context: _Context) -> pb.MGetResponse:
        async def call(ns: str) -> pb.MGetResponse:
            keys = list(dict.fromkeys(self._key(k, f"keys[{i}]") for i, k in enumerate(request.keys)))
            self._batch(len(keys), "keys")
            return pb.MGetResponse(values=await self.backend.mget(ns, keys) if keys else {})

        return await self._answer(context, "MGet", call, [(k, f"keys[{i}]") for i, k in enumerate(request.keys)])

    async def MSet(self, request: pb.MSetRequest, context: _Context) -> pb.MSetResponse:
        async def call(ns: str) -> pb.MSetResponse:
            values = {
                self._key(k, f"values[{k!r}]"): self._value(v, f"values[{k!r}]") for k, v in request.values.items()
            }
            self._batch(len(values), "values")
            ttl = self._ttl(request.ttl_ms)
            if values:
                await self.backend.mset(ns, values, ttl)
            return pb.MSetResponse()

        return await self._answer(context, "MSet", call, [(k, f"values[{k!r}]") for k in request.values], write=True)

    async def Keys(self, request: pb.KeysRequest, context: _Context) -> AsyncIterator[pb.KeysResponse]:
        async def produce(ns: str) -> AsyncGenerator[pb.KeysResponse, None]:
            self._require(KEYS, "Keys")
            pattern = check_pattern(request.pattern)
            size = request.batch_size or self.limits.default_keys_batch
            if size > self.limits.max_keys_batch:
                raise InvalidArgument("batch_size", f"{size} is more than the limit of {self.limits.max_keys_batch}")
            pending: list[str] = []
            async with contextlib.aclosing(self.backend.keys(ns, pattern)) as batches:
                async for batch in batches:
                    pending.extend(batch)
                    while len(pending) >= size:
                        yield pb.KeysResponse(keys=pending[:size])
                        del pending[:size]
            if pending:
                yield pb.KeysResponse(keys=pending)

        touches = _pattern_touches(request.pattern)
        async with contextlib.aclosing(self._stream(context, "Keys", produce, touches)) as pages:
            async for response in pages:
                yield response

    async def Invalidate(self, request: pb.InvalidateRequest, context: _Context) -> pb.InvalidateResponse:
        async def call(ns: str) -> pb.InvalidateResponse:
            self._require(KEYS, "Invalidate")
            return pb.InvalidateResponse(deleted=await self.backend.invalidate(ns, check_pattern(request.pattern)))

        return await self._answer(context, "Invalidate", call, _pattern_touches(request.pattern), write=True)

    async def Increment(self, request: pb.CounterRequest, context: _Context) -> pb.CounterResponse:
        return await self._count(context, "Increment", request, sign=1)

    async def Decrement(self, request: pb.CounterRequest, context: _Context) -> pb.CounterResponse:
        return await self._count(context, "Decrement", request, sign=-1)

    async def _count(self, context: _Context, method: str, request: pb.CounterRequest, sign: int) -> pb.CounterResponse:
        async def call(ns: str) -> pb.CounterResponse:
            delta = sign * (request.delta or 1)
            if delta < counters.INT64_MIN or delta > counters.INT64_MAX:
                raise InvalidArgument("delta", f"{request.delta} cannot be negated in 64 bits")
            return pb.CounterResponse(value=await self.backend.increment(ns, self._key(request.key), delta))

        return await self._answer(context, method, call, [(request.key, "key")], write=True)

    async def AcquireLock(self, request: pb.AcquireLockRequest, context: _Context) -> pb.AcquireLockResponse:
        async def call(ns: str) -> pb.AcquireLockResponse:
            name, ttl = self._key(request.name, "name"), self._ttl(request.ttl_ms, required=True)
            if not 0 <= request.wait_ms <= self.limits.max_lock_wait_ms:
                raise InvalidArgument(
                    "wait_ms", f"{request.wait_ms} is not between 0 and {self.limits.max_lock_wait_ms}"
                )
            token = secrets.token_hex(16)
            deadline = self._clock() + request.wait_ms / 1000
            pause = _LOCK_POLL_FIRST
            while True:
                fence = await self.backend.acquire_lock(ns, name, token, ttl)
                if fence is not None:
                    lock = pb.Lock(name=name, token=token, fencing_token=fence, ttl_ms=ttl)
                    return pb.AcquireLockResponse(acquired=True, lock=lock)
                remaining = deadline - self._clock()
                if remaining <= 0:
                    return pb.AcquireLockResponse(acquired=False)
                # Polling, not a wake-up on release: releases may happen through another replica.
                await asyncio.sleep(min(pause, remaining))
                pause = min(pause * 2, _LOCK_POLL_MAX)

        return await self._answer(context, "AcquireLock", call, [(request.name, "name")], write=True)

    async def ReleaseLock(self, request: pb.ReleaseLockRequest, context: _Context) -> pb.ReleaseLockResponse:
        async def call(ns: str) -> pb.ReleaseLockResponse:
            name, token = self._key(request.name, "name"), self._token(request.token)
            if not await self.backend.release_lock(ns, name, token):
                raise _not_holder(name)
            return pb.ReleaseLockResponse()

        return await self._answer(context, "ReleaseLock", call, [(request.name, "name")], write=True)

    async def ExtendLock(self, request: pb.ExtendLockRequest, context: _Context) -> pb.ExtendLockResponse:
        async def call(ns: str) -> pb.ExtendLockResponse:
            name, token = self._key(request.name, "name"), self._token(request.token)
            ttl = self._ttl(request.ttl_ms, required=True)
            if not await self.backend.extend_lock(ns, name, token, ttl):
                raise _not_holder(name)
            return pb.ExtendLockResponse()

        return await self._answer(context, "ExtendLock", call, [(request.name, "name")], write=True)

    def _token(self, token: str) -> str:
        if not token:
            raise InvalidArgument("token", "empty; pass the token AcquireLock returned")
        if len(token) > 64:
            raise InvalidArgument("token", "not a token AcquireLock returned")
        return token

    async def WatchInvalidations(
        self, request: pb.WatchInvalidationsRequest, context: _Context
    ) -> AsyncIterator[pb.Invalidation]:
        async def produce(ns: str) -> AsyncGenerator[pb.Invalidation, None]:
            if FEED not in self.backend.capabilities:
                self._require(FEED_LOCAL, "WatchInvalidations")
            wanted = matcher(check_pattern(request.pattern)) if request.pattern else None
            async with contextlib.aclosing(self.backend.watch(ns)) as changes:
                async for change in changes:
                    if change.ready:
                        yield pb.Invalidation(ready=True)
                        continue
                    keys = change.keys if wanted is None else tuple(k for k in change.keys if wanted(k))
                    # A pattern may overlap the watched one in ways not worth computing: always sent.
                    if keys or change.pattern:
                        yield pb.Invalidation(keys=keys, pattern=change.pattern, origin=change.origin)

        touches = _pattern_touches(request.pattern)
        async with contextlib.aclosing(self._stream(context, "WatchInvalidations", produce, touches)) as events:
            async for event in events:
                yield event


def _pattern_touches(pattern: str) -> Touches:
    # A pattern touches every key that starts with its literal text; none (watch everything): every key.
    return [(literal_prefix(pattern), "pattern")]


def _status(method: str, exc: Exception) -> tuple[grpc.StatusCode, str]:
    """The status and message a client gets for `exc`: a CacheError's own, else INTERNAL without details."""
    if isinstance(exc, SharingError):
        return exc.code, exc.message
    if isinstance(exc, CacheError):
        if exc.code == grpc.StatusCode.UNAVAILABLE:
            logger.warning("cache %s: %s", method, exc.message)
        return exc.code, exc.message
    logger.exception("cache %s failed", method, exc_info=exc)
    return grpc.StatusCode.INTERNAL, "internal error"


def _not_holder(name: str) -> CacheError:
    return FailedPrecondition(f"lock {name!r} is not held with this token: it expired, or another holder has it")


async def _abort(context: _Context, code: grpc.StatusCode, message: str) -> NoReturn:
    await context.abort(code, message)
    raise AssertionError("unreachable: abort raises")  # grpc's stubs do not say abort never returns
