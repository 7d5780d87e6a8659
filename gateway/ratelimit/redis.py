"""The shared token bucket: one Lua script (token_bucket.lua) run atomically in Redis.

Every gateway replica takes from the same bucket, on Redis server time, in one round trip: EVALSHA,
with redis-py loading the script again when the server answers NOSCRIPT (after a restart or a
failover). Keys are `{prefix}:{policy}:{identity}`, one key per bucket, so the script is also safe on
Redis Cluster. The key expires once the bucket would be full again (at least burst / rate seconds).

A call held to two limits (per client and per method) runs token_buckets.lua instead: both keys in
one EVALSHA, taken from together or not at all (`take_all`). Its keys differ in their policy, so on
a Redis Cluster they would need to share a hash slot; the gateway's clients speak to one server.

The gateway uses this redis-py path for rediss:// and unix:// URLs; plain redis:// goes through the
cheaper pipelined client of resp.py, which runs the same script (RateLimiter.from_settings chooses).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from importlib.resources import files
from typing import Any

import redis.asyncio
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from common.redis_pool import pooled_client
from gateway.ratelimit.bucket import Decision, StoreError, refill_seconds

__all__ = ["DEFAULT_PREFIX", "RedisTokenBucket", "decision_of", "decisions_of", "redis_client", "script_on"]

DEFAULT_PREFIX = "upf:rl"
_SCRIPT = files("gateway.ratelimit").joinpath("token_bucket.lua").read_text(encoding="utf-8")
# Several buckets taken from together or not at all: a call held to a per-client and a method limit.
_MULTI_SCRIPT = files("gateway.ratelimit").joinpath("token_buckets.lua").read_text(encoding="utf-8")


def _decision(reply: Any, burst: int) -> Decision | None:
    # Checked by hand: a `match` sequence pattern costs microseconds (an ABC isinstance check).
    if type(reply) is list and len(reply) == 4:
        allowed, remaining, retry_after, reset_after = reply
        if type(allowed) is int and type(remaining) is int and type(retry_after) is type(reset_after) is bytes:
            return Decision(allowed == 1, remaining, float(retry_after), float(reset_after), burst)
    return None


def decision_of(reply: Any, burst: int) -> Decision:
    """token_bucket.lua's reply, [allowed, remaining, "retry_after", "reset_after"], as a Decision, whichever
    client ran it (redis-py, or common/resp.py); StoreError for anything else."""
    decision = _decision(reply, burst)
    if decision is None:
        raise StoreError(f"unexpected reply from the bucket script: {reply!r}")
    return decision


def decisions_of(reply: Any, bursts: Sequence[int]) -> list[Decision]:
    """token_buckets.lua's reply, one of token_bucket.lua's per bucket, as Decisions; StoreError for anything else."""
    if type(reply) is list and len(reply) == len(bursts):
        decisions = [_decision(one, burst) for one, burst in zip(reply, bursts, strict=True)]
        if None not in decisions:
            return decisions  # type: ignore[return-value]  # no None: checked just above
    raise StoreError(f"unexpected reply from the buckets script: {reply!r}")


def redis_client(url: str, *, timeout: float = 0.25, max_connections: int = 64) -> redis.asyncio.Redis:
    """A client for the buckets, built to fail fast: a limiter that waits on Redis holds every request.

    A burst of requests waits (up to `timeout`) for a free connection rather than failing with
    "Too many connections" (common/redis_pool.py). The client connects on first use.
    """
    return pooled_client(
        url,
        max_connections=max_connections,
        wait=timeout,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        # One immediate retry mends a pooled connection that a Redis restart broke; redis-py's
        # default (up to 10 retries, backing off up to 1 s) would hold requests for seconds
        # instead of letting the failure mode answer.
        retry=Retry(NoBackoff(), 1),
    )


def script_on(client: redis.asyncio.Redis, text: str) -> Callable[..., Awaitable[Any]]:
    """A Lua script on redis-py: `await run(keys=..., args=...)`, its failures StoreErrors."""
    script = client.register_script(text)

    async def run(*, keys: Sequence[str], args: Sequence[str | bytes | int | float]) -> Any:
        try:
            return await script(keys=keys, args=args)
        except (RedisError, OSError) as exc:
            raise StoreError(f"{type(exc).__name__}: {exc}") from exc

    return run


class RedisTokenBucket:
    """A token bucket per key in Redis; see gateway.ratelimit.bucket for the contract.

    Args:
        client: an open `redis.asyncio.Redis`; its owner closes it.
        rate: tokens added per second.
        burst: the bucket's size.
        policy: the policy's name, part of every key.
        prefix: namespace for the keys (tests use their own).
    """

    def __init__(
        self,
        client: redis.asyncio.Redis,
        *,
        rate: float,
        burst: int,
        policy: str = "default",
        prefix: str = DEFAULT_PREFIX,
    ) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be positive and burst at least 1")
        self.rate = rate
        self.burst = burst
        self.ttl = refill_seconds(rate, burst)
        self.key_prefix = f"{prefix}:{policy}:"
        self._script = client.register_script(_SCRIPT)
        self._multi_script = client.register_script(_MULTI_SCRIPT)
        # The rate goes to Lua as text; repr keeps every digit of the float.
        self._args = (repr(float(rate)), burst)

    def key(self, identity: str) -> str:
        return self.key_prefix + identity

    async def take(self, key: str, cost: int = 1) -> Decision:
        if not 0 <= cost <= self.burst:
            raise ValueError(f"cost {cost} is outside 0..{self.burst}")
        rate, burst = self._args
        try:
            reply = await self._script(keys=[self.key_prefix + key], args=[rate, burst, cost, self.ttl])
        except (RedisError, OSError) as exc:
            raise StoreError(f"{type(exc).__name__}: {exc}") from exc
        return decision_of(reply, self.burst)

    @staticmethod
    async def take_all(buckets: Sequence[RedisTokenBucket], key: str, cost: int = 1) -> list[Decision]:
        """Take `cost` from `key`'s bucket in every one of `buckets`, or from none: one EVALSHA.

        The buckets share the first one's client. One decision per bucket, in order; `allowed` says
        whether that bucket held `cost`, the call going through only if all do.
        """
        keys: list[str] = []
        args: list[str | int] = []
        for bucket in buckets:
            if not 0 <= cost <= bucket.burst:
                raise ValueError(f"cost {cost} is outside 0..{bucket.burst}")
            keys.append(bucket.key_prefix + key)
            args += [*bucket._args, cost, bucket.ttl]
        try:
            reply = await buckets[0]._multi_script(keys=keys, args=args)
        except (RedisError, OSError) as exc:
            raise StoreError(f"{type(exc).__name__}: {exc}") from exc
        return decisions_of(reply, [bucket.burst for bucket in buckets])
