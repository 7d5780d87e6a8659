"""Registrations in Redis: shared by several registry replicas, kept across a registry restart.

Keys, under the configured prefix P:

    P:ids                 set of instance ids
    P:instance:<id>       hash, one field per record attribute (InstanceRecord.to_fields)
    P:leases              hash lease id -> instance id
    P:views               hash instance id -> published view (JSON)
    P:revision            the last revision (INCR)
    P:epoch               the id of the revision history (see store/base.py)
    P:changes             list of changes (JSON), newest first, trimmed to `history`

Leases are an expiry time in the record rather than a Redis TTL: an expiry must be seen (and
published as a removal) by a registry, and tests move time with an injected clock. Every
read-modify-write runs as one Lua script, so replicas never interleave inside one.

The epoch is made by whichever command first needs it (SET NX, in the same script or transaction
that reads or bumps the revision), so registry restarts and replicas keep the one already stored,
and a store whose data was lost (flushed, a new Redis) gets a new one with the first command after.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import cast

import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline
from redis.exceptions import RedisError

from common.redis_pool import pooled_client
from registry.errors import StoreUnavailable
from registry.model import Change, Check, InstanceRecord, InstanceView, Phase, Snapshot

__all__ = ["RedisPluginStore"]

_PUT = """
local old = redis.call('HGET', KEYS[1], 'lease_id')
if old then redis.call('HDEL', KEYS[3], old) end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], unpack(ARGV, 3))
redis.call('SADD', KEYS[2], ARGV[1])
redis.call('HSET', KEYS[3], ARGV[2], ARGV[1])
return 1
"""

_UPDATE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
"""

_REMOVE = """
local lease = redis.call('HGET', KEYS[1], 'lease_id')
if not lease then return 0 end
redis.call('HDEL', KEYS[3], lease)
redis.call('DEL', KEYS[1])
redis.call('SREM', KEYS[2], ARGV[1])
return 1
"""

# KEYS: views, revision, changes, epoch. ARGV: instance id, new view JSON ("" = removed), history,
# an epoch for the case that the store has none yet. The change's JSON is assembled here because
# only here is its revision known.
_PUBLISH = """
local old = redis.call('HGET', KEYS[1], ARGV[1])
local kind, view
if ARGV[2] == '' then
  if not old then return nil end
  redis.call('HDEL', KEYS[1], ARGV[1])
  kind, view = 'removed', old
else
  if old == ARGV[2] then return nil end
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
  kind, view = 'updated', ARGV[2]
end
redis.call('SET', KEYS[4], ARGV[4], 'NX')
local revision = redis.call('INCR', KEYS[2])
redis.call('LPUSH', KEYS[3], '{"revision":' .. revision .. ',"kind":"' .. kind .. '","view":' .. view .. '}')
redis.call('LTRIM', KEYS[3], 0, tonumber(ARGV[3]) - 1)
return revision
"""


class RedisPluginStore:
    def __init__(
        self, client: aioredis.Redis, *, prefix: str, history: int = 1000, poll_interval: float = 0.05
    ) -> None:
        self._redis = client
        self._prefix = prefix
        self._history = history
        self._poll = poll_interval  # how often a watcher looks for changes written by other replicas
        self._put = client.register_script(_PUT)
        self._update = client.register_script(_UPDATE)
        self._remove = client.register_script(_REMOVE)
        self._publish = client.register_script(_PUBLISH)

    @classmethod
    def from_url(cls, url: str, *, prefix: str, history: int = 1000) -> RedisPluginStore:
        client = pooled_client(url, decode_responses=True, socket_timeout=5, socket_connect_timeout=5)
        return cls(client, prefix=prefix, history=history)

    def _key(self, name: str) -> str:
        return f"{self._prefix}:{name}"

    def _instance(self, instance_id: str) -> str:
        return self._key(f"instance:{instance_id}")

    @asynccontextmanager
    async def _errors(self) -> AsyncIterator[None]:
        try:
            yield
        except RedisError as exc:
            raise StoreUnavailable(f"the registry's Redis store does not answer: {exc}") from exc

    async def put(self, record: InstanceRecord) -> None:
        fields = [item for pair in record.to_fields().items() for item in pair]
        async with self._errors():
            await self._put(
                keys=[self._instance(record.instance_id), self._key("ids"), self._key("leases")],
                args=[record.instance_id, record.lease_id, *fields],
            )

    async def get(self, instance_id: str) -> InstanceRecord | None:
        async with self._errors():
            fields = cast("dict[str, str]", await self._redis.hgetall(self._instance(instance_id)))
        return InstanceRecord.from_fields(fields) if fields else None

    async def all(self) -> list[InstanceRecord]:
        async with self._errors():
            ids = sorted(cast("set[str]", await self._redis.smembers(self._key("ids"))))
            async with self._redis.pipeline(transaction=False) as pipe:
                for instance_id in ids:
                    pipe.hgetall(self._instance(instance_id))
                rows: list[dict[str, str]] = await pipe.execute()
        # A record removed between the two reads leaves an empty hash: skip it.
        return [InstanceRecord.from_fields(row) for row in rows if row]

    async def instance_for_lease(self, lease_id: str) -> str | None:
        async with self._errors():
            found = cast("str | None", await self._redis.hget(self._key("leases"), lease_id))
        return found

    async def _set(self, instance_id: str, field: str, value: str) -> bool:
        async with self._errors():
            return bool(await self._update(keys=[self._instance(instance_id)], args=[field, value]))

    async def set_lease(self, instance_id: str, expires_at: float) -> bool:
        return await self._set(instance_id, "lease_expires_at", repr(expires_at))

    async def set_phase(self, instance_id: str, phase: Phase) -> bool:
        return await self._set(instance_id, "phase", phase.value)

    async def set_check(self, instance_id: str, check: Check) -> bool:
        return await self._set(instance_id, "check", check.to_json())

    async def remove(self, instance_id: str) -> bool:
        async with self._errors():
            removed = await self._remove(
                keys=[self._instance(instance_id), self._key("ids"), self._key("leases")], args=[instance_id]
            )
        return bool(removed)

    async def publish(self, instance_id: str, view: InstanceView | None) -> int | None:
        async with self._errors():
            revision = await self._publish(
                keys=[self._key("views"), self._key("revision"), self._key("changes"), self._key("epoch")],
                args=[instance_id, "" if view is None else view.to_json(), self._history, uuid.uuid4().hex],
            )
        return None if revision is None else int(revision)

    def _read_epoch(self, pipe: Pipeline) -> None:
        """Queue two commands that answer (ignored, the epoch), making the epoch if there is none."""
        pipe.set(self._key("epoch"), uuid.uuid4().hex, nx=True)
        pipe.get(self._key("epoch"))

    async def epoch(self) -> str:
        async with self._errors(), self._redis.pipeline(transaction=True) as pipe:
            self._read_epoch(pipe)
            _, epoch = await pipe.execute()
        return cast("str", epoch)

    async def snapshot(self) -> Snapshot:
        async with self._errors(), self._redis.pipeline(transaction=True) as pipe:
            self._read_epoch(pipe)
            pipe.get(self._key("revision"))
            pipe.hgetall(self._key("views"))
            _, epoch, revision, views = await pipe.execute()
        return Snapshot(epoch, int(revision or 0), [InstanceView.from_json(views[key]) for key in sorted(views)])

    async def changes_since(self, epoch: str, revision: int) -> list[Change] | None:
        async with self._errors(), self._redis.pipeline(transaction=True) as pipe:
            self._read_epoch(pipe)
            pipe.get(self._key("revision"))
            pipe.lrange(self._key("changes"), 0, -1)
            _, current_epoch, current_text, texts = await pipe.execute()
        current = int(current_text or 0)
        if epoch != current_epoch or revision > current:
            return None
        if revision == current:
            return []
        changes = [Change.from_json(text) for text in reversed(texts)]
        if not changes or changes[0].revision > revision + 1:
            return None
        return [change for change in changes if change.revision > revision]

    async def _moved(self, epoch: str, revision: int) -> bool:
        async with self._errors():
            current_epoch, current = await self._redis.mget(self._key("epoch"), self._key("revision"))
        # No epoch at all: the data is gone, and whatever comes next is another history.
        return bool(current_epoch != epoch or int(current or 0) > revision)

    async def wait(self, epoch: str, revision: int, timeout: float) -> None:
        # Polling keeps this simple and independent of which replica made the change; at 50 ms it
        # costs one MGET per watcher stream per tick.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not await self._moved(epoch, revision) and loop.time() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(min(self._poll, max(0.0, deadline - loop.time())))

    async def delete_all(self) -> None:
        """Remove every key under the prefix (tests, and `upf registry` has no use for it)."""
        async with self._errors():
            keys = [key async for key in self._redis.scan_iter(match=f"{self._prefix}:*", count=1000)]
            if keys:
                await self._redis.delete(*keys)

    async def signing_key(self, fresh: bytes) -> bytes:
        key = self._key("signing-key")  # hex: the client decodes replies as text
        async with self._errors():
            await self._redis.set(key, fresh.hex(), nx=True)
            stored = await self._redis.get(key)
        if not isinstance(stored, str):
            raise StoreUnavailable("the registry's Redis store lost its signing key while it was being read")
        return bytes.fromhex(stored)

    async def close(self) -> None:
        await self._redis.aclose()
