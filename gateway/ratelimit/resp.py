"""The token bucket over the pipelined RESP client (common/resp.py): one round trip per decision.

Why not redis-py here: through redis-py a decision costs 55-114 us of gateway CPU (connection pool
checkout, per-command timeouts, its generic reply parser), against a budget of 15 us (issue 5). A
decision is one EVALSHA of token_bucket.lua (token_buckets.lua for several buckets at once), encoded
but for the key and the cost when the bucket is made; on NOSCRIPT (a restarted or flushed Redis) EVAL
of the whole script, which also caches it again for the EVALSHAs that follow. The client's failures
(a lost connection, a reply later than its timeout, an error reply) are StoreErrors here, as on the
redis-py path (gateway/ratelimit/redis.py). rediss:// and unix:// URLs stay with redis-py;
limiter.store_client chooses.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from redis.exceptions import NoScriptError, RedisError

from common.resp import RespClient, Script, bulks
from gateway.ratelimit.bucket import Decision, StoreError, refill_seconds
from gateway.ratelimit.redis import _MULTI_SCRIPT, _SCRIPT, DEFAULT_PREFIX, decision_of, decisions_of

_MULTI_SHA = hashlib.sha1(_MULTI_SCRIPT.encode()).hexdigest().encode()

__all__ = ["RespScript", "RespTokenBucket"]


async def _evalsha(client: RespClient, heads: tuple[bytes, bytes], body: bytes, what: str) -> Any:
    """`heads[0] + body` (EVALSHA ...), and `heads[1] + body` (EVAL of the whole script) when Redis lost its
    script cache (restart, failover, SCRIPT FLUSH): only that round of decisions pays for the text,
    which also caches the script again. Failures as StoreErrors naming `what`."""
    try:
        try:
            return await client.call(heads[0] + body)
        except NoScriptError:
            return await client.call(heads[1] + body)
    except (RedisError, OSError) as exc:
        raise StoreError(f"Redis could not run the {what} ({type(exc).__name__}: {exc})") from exc


class RespScript:
    """A Lua script run through RespClient, called like redis-py's registered scripts.

    `await script(keys=[...], args=[...])`; for scripts run far less often than once per decision
    (leases, debits). Failures are StoreErrors.
    """

    def __init__(self, client: RespClient, text: str) -> None:
        self.client = client
        self._script = Script(text)

    async def __call__(self, *, keys: Sequence[str], args: Sequence[str | bytes | int | float]) -> Any:
        try:
            return await self.client.run(self._script, keys, args)
        except (RedisError, OSError) as exc:
            raise StoreError(f"Redis could not run the script ({type(exc).__name__}: {exc})") from exc


class RespTokenBucket:
    """A token bucket per key in Redis through RespClient; same script, keys and contract as RedisTokenBucket.

    Args:
        client: the connection; its owner closes it.
        rate: tokens added per second.
        burst: the bucket's size.
        policy: the policy's name, part of every key.
        prefix: namespace for the keys (tests use their own).
    """

    def __init__(
        self,
        client: RespClient,
        *,
        rate: float,
        burst: int,
        policy: str = "default",
        prefix: str = DEFAULT_PREFIX,
    ) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be positive and burst at least 1")
        self.client = client
        self.rate = rate
        self.burst = burst
        self.ttl = refill_seconds(rate, burst)
        self.key_prefix = f"{prefix}:{policy}:"
        sha = hashlib.sha1(_SCRIPT.encode()).hexdigest().encode()  # Redis names scripts by SHA-1
        # Everything but the key and the cost is the same for every decision: encoded once.
        # A command is 8 bulk strings: the 3 of a head, the key, and the 4 of a tail.
        self._heads = (b"*8\r\n" + bulks(b"EVALSHA", sha, b"1"), b"*8\r\n" + bulks(b"EVAL", _SCRIPT.encode(), b"1"))
        self._rate = repr(float(rate)).encode()  # repr keeps every digit of the float
        self._tails = {cost: self._tail(cost) for cost in (0, 1)}
        # take_all's commands led by this bucket, encoded but for the keys: (buckets, cost) -> parts.
        self._joint: dict[tuple[tuple[RespTokenBucket, ...], int], tuple[tuple[bytes, bytes], bytes]] = {}

    def key(self, identity: str) -> str:
        return self.key_prefix + identity

    def _tail(self, cost: int) -> bytes:
        return bulks(self._rate, b"%d" % self.burst, b"%d" % cost, b"%d" % self.ttl)

    async def take(self, key: str, cost: int = 1) -> Decision:
        if not 0 <= cost <= self.burst:
            raise ValueError(f"cost {cost} is outside 0..{self.burst}")
        name = (self.key_prefix + key).encode()
        tail = self._tails.get(cost) or self._tail(cost)
        reply = await _evalsha(self.client, self._heads, b"$%d\r\n%s\r\n%s" % (len(name), name, tail), "bucket script")
        return decision_of(reply, self.burst)

    def _encode_joint(self, buckets: tuple[RespTokenBucket, ...], cost: int) -> tuple[tuple[bytes, bytes], bytes]:
        for bucket in buckets:
            if not 0 <= cost <= bucket.burst:
                raise ValueError(f"cost {cost} is outside 0..{bucket.burst}")
        count = b"%d" % len(buckets)
        size = b"*%d\r\n" % (3 + 5 * len(buckets))  # EVALSHA sha numkeys, then a key and 4 args each
        args = [
            arg for bucket in buckets for arg in (bucket._rate, b"%d" % bucket.burst, b"%d" % cost, b"%d" % bucket.ttl)
        ]
        parts = (
            (size + bulks(b"EVALSHA", _MULTI_SHA, count), size + bulks(b"EVAL", _MULTI_SCRIPT.encode(), count)),
            bulks(*args),
        )
        if len(self._joint) >= 64:
            self._joint.clear()  # buckets remade for changed manifests: keep none of the old alive
        self._joint[(buckets, cost)] = parts
        return parts

    @staticmethod
    async def take_all(buckets: Sequence[RespTokenBucket], key: str, cost: int = 1) -> list[Decision]:
        """Take `cost` from `key`'s bucket in every one of `buckets`, or from none: one EVALSHA.

        The buckets share the first one's client. One decision per bucket, in order; `allowed` says
        whether that bucket held `cost`, the call going through only if all do.
        """
        first = buckets[0]
        parts = first._joint.get((tuple(buckets), cost))
        if parts is None:
            parts = first._encode_joint(tuple(buckets), cost)
        heads, tail = parts
        keys = bulks(*[(bucket.key_prefix + key).encode() for bucket in buckets])
        reply = await _evalsha(first.client, heads, keys + tail, "buckets script")
        return decisions_of(reply, [bucket.burst for bucket in buckets])
