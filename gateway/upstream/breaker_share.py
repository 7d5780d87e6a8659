"""circuitBreaker.shareVia: redis. A breaker that opens on one gateway opens on the others too.

When a breaker opens here because its replica failed (not because of a hint), this gateway
    SET  <prefix>:open:<service>@<replica>  <gateway id>  PX resetTimeout
    PUBLISH  <prefix>:open  "<gateway id> <service>@<replica>"
and every other gateway subscribed to that channel opens its own breaker for that replica, if it is
closed (CircuitBreaker.open_on_hint). When a probe closes a breaker here, the key is deleted, so a
gateway that starts later is not sent away from a replica that is back (the others are not told:
their own probes find out). A gateway that (re)connects to Redis reads the keys still
alive, so one started after the trip learns it too. A hint only saves the others their own
`failureThreshold` failed calls: each gateway still half-opens after resetTimeout on its own clock
and lets its own probe decide, so a wrong or stale hint costs at most one reset timeout.

Redis is never on a call's path: the breaker listener only queues the name (dropped if the queue is
full), a background task publishes, another subscribes and reconnects with backoff. With Redis down
nothing is shared and every gateway decides alone, as with shareVia: none; it is logged once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid

import redis.asyncio
from redis.exceptions import RedisError

from gateway.upstream.breaker import BreakerState
from gateway.upstream.pool import UpstreamPool

__all__ = ["BreakerHints"]

logger = logging.getLogger(__name__)

_QUEUE = 256  # breaker openings waiting to be published; more are dropped (a hint, not a promise)
_BACKOFF_INITIAL = 0.2
_BACKOFF_MAX = 5.0
_TIMEOUT = 0.5  # seconds for Redis to connect or answer a command


class BreakerHints:
    """Publishes this gateway's breaker openings and applies the others'.

    Args:
        pool: where the breakers are (looked up by name, `service@replica`).
        url: the Redis to share through.
        prefix: namespace for the keys and the channel.
        reset_timeout: seconds a hint lives (circuitBreaker.resetTimeout).
    """

    def __init__(self, pool: UpstreamPool, *, url: str, prefix: str, reset_timeout: float) -> None:
        self.pool = pool
        self.url = url
        self.key_prefix = f"{prefix}:open:"
        self.channel = f"{prefix}:open"
        self.ttl_ms = max(1, int(reset_timeout * 1000))
        self.gateway_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.connected = False  # subscribed and listening
        self.published = 0
        self.applied = 0
        self._queue: asyncio.Queue[tuple[bool, str]] = asyncio.Queue(_QUEUE)  # (opened, breaker name)
        self._applying: str | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._down_logged = False

    # --- the breakers' side -------------------------------------------------------------------

    def transition(self, name: str, previous: BreakerState, state: BreakerState) -> None:
        """The pool's transition listener: queue the local openings for publishing, and the closings."""
        if name == self._applying or state is BreakerState.HALF_OPEN:
            return  # the hint this gateway is applying from another, or nothing to tell
        with contextlib.suppress(asyncio.QueueFull):
            self._queue.put_nowait((state is BreakerState.OPEN, name))

    def _apply(self, name: str) -> None:
        for route in self.pool.routes.values():
            for endpoint in route.endpoints:
                breaker = endpoint.breaker
                if breaker is not None and breaker.name == name:
                    self._applying = name
                    try:
                        if breaker.open_on_hint():
                            self.applied += 1
                            logger.warning("circuit breaker %s: opened on another gateway's hint", name)
                    finally:
                        self._applying = None

    # --- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        self._tasks = [asyncio.ensure_future(self._publish()), asyncio.ensure_future(self._subscribe())]

    def status(self) -> None:
        return None

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    def _client(self, *, read_timeout: float | None) -> redis.asyncio.Redis:
        return redis.asyncio.Redis.from_url(
            self.url, socket_timeout=read_timeout, socket_connect_timeout=_TIMEOUT, retry=None
        )

    def _down(self, what: str, exc: BaseException) -> None:
        if not self._down_logged:
            self._down_logged = True
            logger.warning("circuit breaker hints: Redis failed to %s (%s); breakers decide alone meanwhile", what, exc)

    async def _publish(self) -> None:
        client = self._client(read_timeout=_TIMEOUT)
        try:
            while True:
                opened, name = await self._queue.get()
                try:
                    if not opened:
                        await client.delete(self.key_prefix + name)
                        continue
                    async with client.pipeline(transaction=False) as pipe:
                        pipe.set(self.key_prefix + name, self.gateway_id, px=self.ttl_ms)
                        pipe.publish(self.channel, f"{self.gateway_id} {name}")
                        await pipe.execute()
                    self.published += 1
                except (RedisError, OSError) as exc:
                    self._down("publish", exc)
        finally:
            await client.aclose()

    async def _subscribe(self) -> None:
        backoff = _BACKOFF_INITIAL
        while True:
            client = self._client(read_timeout=None)
            pubsub = client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.channel)
                await self._catch_up(client)
                self.connected = True
                if self._down_logged:
                    logger.warning("circuit breaker hints: Redis answers again")
                    self._down_logged = False
                backoff = _BACKOFF_INITIAL
                while True:
                    message = await pubsub.get_message(timeout=30.0)
                    if message is not None and message.get("type") == "message":
                        self._received(message["data"])
            except (RedisError, OSError) as exc:
                self._down("subscribe", exc)
            finally:
                self.connected = False
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
                with contextlib.suppress(Exception):
                    await client.aclose()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, _BACKOFF_MAX)

    async def _catch_up(self, client: redis.asyncio.Redis) -> None:
        """Hints set while this gateway was not listening, and still alive."""
        async with asyncio.timeout(_TIMEOUT * 4):
            async for key in client.scan_iter(match=self.key_prefix + "*", count=500):
                owner = await client.get(key)
                if owner is not None and _text(owner) != self.gateway_id:
                    self._apply(_text(key)[len(self.key_prefix) :])

    def _received(self, data: bytes | str) -> None:
        sender, _, name = _text(data).partition(" ")
        if sender != self.gateway_id and name:
            self._apply(name)

    def state(self) -> dict[str, object]:
        return {
            "shareVia": "redis",
            "redisConnected": self.connected,
            "published": self.published,
            "applied": self.applied,
        }


def _text(value: bytes | str) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else value
