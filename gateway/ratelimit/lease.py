"""Token leases: a gateway takes several calls' tokens from Redis in one round trip and spends them itself.

With `rateLimiting.leaseTokens: N` (Redis store only), a round trip to a bucket takes what the calls
waiting for it need and, while the bucket holds plenty, up to N tokens more (the lease); later calls
on that bucket spend those here, with no round trip, until they run out or `leaseSeconds` pass.
What it costs and what it keeps (token_lease.lua has the arithmetic):

- never more than the bucket: leased tokens count against the burst in Redis until their lease
  ends, spent or not, so what all gateways let through in any interval is at most what the one
  shared bucket would have;
- less, for a while: tokens leased here and not spent are out of reach of the other gateways until
  this one takes its next lease on that bucket (then they go back) or the lease expires (then the
  bucket refills past them), so another gateway may refuse a call the bucket would have allowed:
  by at most N tokens per other gateway, for at most `leaseSeconds`;
- a lease is at most a tenth of what the bucket holds, shared by `replicas` (burst 50 and two
  replicas: 2 tokens at most, none once the bucket holds fewer than 20): near empty, every call is a
  round trip again and the last tokens go to whichever gateway asks, as without leases;
- calls that arrive while a round trip for their bucket is under way wait for it and are counted
  into it: a burst of calls on one gateway costs one round trip, and each is allowed or refused on
  its answer (a bucket that held fewer tokens than calls waiting serves as many as it held).

So a hot bucket (a busy client, a method limit) costs a round trip per N + 1 calls; a bucket visited
less often than once per `leaseSeconds` costs one per call, as without leases. Every gateway sharing
a `keyPrefix` must agree on leasing: the plain scripts do not count leased tokens.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from importlib.resources import files
from typing import Any

from gateway.ratelimit.bucket import Clock, Decision, StoreError, refill_seconds

__all__ = ["LEASE_SCRIPT", "LeaseTable", "LeasedTokenBucket", "RunScript"]

LEASE_SCRIPT = files("gateway.ratelimit").joinpath("token_lease.lua").read_text(encoding="utf-8")

# Runs token_lease.lua: `await run(keys=[...], args=[...])`, as redis-py's registered scripts are
# called (RespScript in resp.py has the same shape). Raises StoreError, or the client's own errors.
RunScript = Callable[..., Awaitable[Any]]

# A lease's extra tokens are at most this share of what the bucket holds, divided among the replicas.
SHARE = 0.1


class _Lease:
    """What this process holds of one bucket, and the round trip under way for it."""

    __slots__ = ("demand", "expires", "fetch", "remaining", "tokens")

    def __init__(self) -> None:
        self.tokens = 0  # leased and not yet spent
        self.expires = 0.0  # on the table's clock; spent no later than this
        self.remaining = 0  # what the bucket held when the lease was granted
        self.fetch: asyncio.Task[list[tuple[_Lease, Decision]]] | None = None  # the round trip under way
        self.demand = 0  # cost of the calls waiting for `fetch`


class LeaseTable:
    """One gateway process's leases, over every bucket of one Redis.

    Args:
        run: runs token_lease.lua on the Redis the buckets live in.
        lease_seconds: how long a lease may be spent.
        replicas: gateway processes sharing the buckets (rateLimiting.replicas).
        clock: monotonic seconds.
        max_leases: leases kept at most; expired ones are dropped first when there are more.
    """

    def __init__(
        self,
        run: RunScript,
        *,
        lease_seconds: float,
        replicas: int = 1,
        clock: Clock = time.monotonic,
        max_leases: int = 100_000,
    ) -> None:
        if lease_seconds <= 0 or replicas < 1:
            raise ValueError("lease_seconds must be positive and replicas at least 1")
        self.run = run
        self.lease_seconds = lease_seconds
        self.clock = clock
        self.max_leases = max_leases
        self.holder = secrets.token_hex(8)  # this process: its lease field in every bucket
        self._head = [self.holder, b"%d" % round(lease_seconds * 1_000_000), repr(SHARE / replicas)]
        self.leases: dict[str, _Lease] = {}
        self.round_trips = 0  # that went to Redis (for /metrics): decisions less these were spent from leases

    def lease(self, name: str) -> _Lease:
        lease = self.leases.get(name)
        if lease is None:
            if len(self.leases) >= self.max_leases:
                self._prune()
            lease = self.leases[name] = _Lease()
        return lease

    def _prune(self) -> None:
        # Down to nine tenths at least, so that pruning is rare: spent or expired leases first, then
        # the oldest (their tokens stay leased in Redis until they expire: too few let through, never more).
        now = self.clock()
        target = self.max_leases * 9 // 10
        for name in [n for n, lease in self.leases.items() if lease.fetch is None and lease.expires <= now]:
            del self.leases[name]
        for name in [n for n, lease in self.leases.items() if lease.fetch is None][: len(self.leases) - target]:
            del self.leases[name]

    async def take(self, buckets: Sequence[LeasedTokenBucket], key: str, cost: int) -> list[Decision]:
        """Take `cost` from `key`'s bucket in every one of `buckets`, or from none.

        From this process's leases when each holds `cost`; otherwise one round trip leases tokens
        for the buckets short of it (shared with every call that needs the same ones meanwhile).
        """
        leases = [self.lease(bucket.key_prefix + key) for bucket in buckets]
        while True:
            now = self.clock()
            short = [i for i, lease in enumerate(leases) if lease.tokens < cost or lease.expires <= now]
            if not short:
                for lease in leases:
                    lease.tokens -= cost
                return [_allowed(bucket, lease) for bucket, lease in zip(buckets, leases, strict=True)]
            fetch = next((leases[i].fetch for i in short if leases[i].fetch is not None), None)
            if fetch is None:
                waited = [leases[i] for i in short]
            else:
                waited = [lease for lease in leases if lease.fetch is fetch]
            for lease in waited:
                lease.demand += cost
            if fetch is None:
                fetch = self._start([buckets[i] for i in short], [leases[i] for i in short], key, cost)
            try:
                # Shielded: a caller that gives up must not cancel the round trip others wait for.
                outcome = await asyncio.shield(fetch)
            finally:
                for lease in waited:
                    lease.demand -= cost
            refusals = {id(lease): decision for lease, decision in outcome if not decision.allowed}
            if any(id(lease) in refusals for lease in leases):
                return [
                    refusals.get(id(lease)) or _allowed(bucket, lease)
                    for bucket, lease in zip(buckets, leases, strict=True)
                ]
            # Granted (or refused by a bucket this call is not held to): spend from the leases on
            # the next turn; others waiting may have spent them first, then this call asks again.

    def _start(
        self, buckets: list[LeasedTokenBucket], leases: list[_Lease], key: str, cost: int
    ) -> asyncio.Task[list[tuple[_Lease, Decision]]]:
        now = self.clock()
        keys: list[str] = []
        args: list[Any] = list(self._head)
        for bucket, lease in zip(buckets, leases, strict=True):
            keys.append(bucket.key_prefix + key)
            unused = lease.tokens if lease.expires > now else 0
            lease.tokens = 0  # given back by this round trip
            args += [*bucket.args, cost, max(cost, lease.demand), bucket.extra, unused]
        fetch = asyncio.get_running_loop().create_task(self._fetch(buckets, leases, keys, args, now))
        for lease in leases:
            lease.fetch = fetch
        return fetch

    async def _fetch(
        self, buckets: list[LeasedTokenBucket], leases: list[_Lease], keys: list[str], args: list[Any], sent: float
    ) -> list[tuple[_Lease, Decision]]:
        """Each lease with its bucket's answer; `allowed` says whether that bucket held the cost."""
        try:
            self.round_trips += 1
            reply = await self.run(keys=keys, args=args)
            outcome = []
            for bucket, lease, one in zip(buckets, leases, _replies(reply, len(buckets)), strict=True):
                granted, remaining, retry_after, reset_after = one
                lease.tokens = granted
                # Counted from before the request left: Redis's expiry, counted from its arrival, is later.
                lease.expires = sent + self.lease_seconds if granted else 0.0
                lease.remaining = remaining
                # A refusal grants nothing anywhere; retry_after names the buckets that were short.
                held = granted > 0 or retry_after == 0
                outcome.append((lease, Decision(held, remaining, retry_after, reset_after, bucket.burst)))
            return outcome
        finally:
            for lease in leases:
                lease.fetch = None


class LeasedTokenBucket:
    """One policy's buckets, spent through a LeaseTable; the TokenBucket contract, less exactly.

    See the module docstring for what leases change. `extra`: the most tokens one round trip takes
    beyond the waiting calls' (rateLimiting.leaseTokens).
    """

    def __init__(self, table: LeaseTable, *, rate: float, burst: int, policy: str, prefix: str, extra: int) -> None:
        if rate <= 0 or burst < 1 or extra < 0:
            raise ValueError("rate must be positive, burst at least 1, extra not negative")
        self.table = table
        self.rate = rate
        self.burst = burst
        self.extra = extra
        self.key_prefix = f"{prefix}:{policy}:"
        self.args = (repr(float(rate)), burst, refill_seconds(rate, burst))

    def key(self, identity: str) -> str:
        return self.key_prefix + identity

    async def take(self, key: str, cost: int = 1) -> Decision:
        if not 0 <= cost <= self.burst:
            raise ValueError(f"cost {cost} is outside 0..{self.burst}")
        # The common case first, with nothing but a dict look-up: a live lease that holds the cost.
        lease = self.table.leases.get(self.key_prefix + key)
        if lease is not None and lease.tokens >= cost and lease.expires > self.table.clock():
            lease.tokens -= cost
            return _allowed(self, lease)
        return (await self.table.take((self,), key, cost))[0]

    @staticmethod
    async def take_all(buckets: Sequence[LeasedTokenBucket], key: str, cost: int = 1) -> list[Decision]:
        """Take `cost` from `key`'s bucket in every one of `buckets`, or from none (one table)."""
        for bucket in buckets:
            if not 0 <= cost <= bucket.burst:
                raise ValueError(f"cost {cost} is outside 0..{bucket.burst}")
        return await buckets[0].table.take(buckets, key, cost)


def _allowed(bucket: LeasedTokenBucket, lease: _Lease) -> Decision:
    # What is left to this caller: the bucket as Redis last said, plus this process's unspent lease.
    remaining = lease.remaining + lease.tokens
    return Decision(True, remaining, 0.0, max(0.0, (bucket.burst - remaining) / bucket.rate), bucket.burst)


def _replies(reply: Any, count: int) -> list[tuple[int, int, float, float]]:
    """token_lease.lua's reply, checked: one (granted, remaining, retry_after, reset_after) per key."""
    parsed = []
    if type(reply) is list and len(reply) == count:
        for one in reply:
            if type(one) is not list or len(one) != 4:
                break
            granted, remaining, retry_after, reset_after = one
            if type(granted) is not int or type(remaining) is not int:
                break
            try:
                parsed.append((granted, remaining, float(retry_after), float(reset_after)))
            except (TypeError, ValueError):
                break
        else:
            return parsed
    raise StoreError(f"unexpected reply from the lease script: {reply!r}")
