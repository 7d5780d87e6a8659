"""The in-process token bucket: the embedded default, and the local fallback when Redis is down.

Same arithmetic as token_bucket.lua, on an injected monotonic clock. Buckets are kept in the order
they were last used (a take, allowed or refused); a bucket unwritten for burst / rate seconds is full,
which is what a missing bucket means, so it is dropped as the next `take` walks past it. `max_keys`
bounds memory when many keys are busy at once (an IPv6 sweep, say): the least recently used bucket
goes first, which hands that key a full bucket early: a bounded gateway beats an exact one that runs
out of memory. A key that is being refused counts as used: were it forgotten first, a client kept
busy by its limit would be the one handed a full bucket.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Sequence

from gateway.ratelimit.bucket import Clock, Decision

__all__ = ["MemoryTokenBucket"]


class MemoryTokenBucket:
    """A token bucket per key in this process's memory; see gateway.ratelimit.bucket for the contract."""

    def __init__(self, *, rate: float, burst: int, clock: Clock = time.monotonic, max_keys: int = 100_000) -> None:
        if rate <= 0 or burst < 1 or max_keys < 1:
            raise ValueError("rate must be positive, burst and max_keys at least 1")
        self.rate = rate  # tokens per second
        self.burst = burst  # bucket size, tokens
        self.clock = clock
        self.max_keys = max_keys
        self._full_after = burst / rate  # seconds for an empty bucket to fill
        # key -> (tokens, monotonic seconds when written), oldest write first.
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    async def take(self, key: str, cost: int = 1) -> Decision:
        # No await in here: on one event loop, each take is atomic like the Lua script.
        if not 0 <= cost <= self.burst:
            raise ValueError(f"cost {cost} is outside 0..{self.burst}")
        now = self.clock()
        self._expire(now)
        state = self._buckets.get(key)
        tokens, last = state if state is not None else (float(self.burst), now)
        tokens = min(self.burst, tokens + max(0.0, now - last) * self.rate)
        if tokens >= cost:
            tokens -= cost
            self._buckets[key] = (tokens, now)
            self._buckets.move_to_end(key)
            if len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)
            return Decision(True, int(tokens), 0.0, (self.burst - tokens) / self.rate, self.burst)
        # Refused: the bucket stays as it was, as in the Lua script; only its place in the order moves.
        if state is not None:
            self._buckets.move_to_end(key)
        return Decision(False, int(tokens), (cost - tokens) / self.rate, (self.burst - tokens) / self.rate, self.burst)

    @staticmethod
    async def take_all(buckets: Sequence[MemoryTokenBucket], key: str, cost: int = 1) -> list[Decision]:
        """Take `cost` from `key`'s bucket in every one of `buckets`, or from none (token_buckets.lua).

        One decision per bucket, in order; `allowed` says whether that bucket held `cost`, the call
        going through only if all do. No await in here, so no other take comes between check and take.
        """
        levels = []
        for bucket in buckets:
            if not 0 <= cost <= bucket.burst:
                raise ValueError(f"cost {cost} is outside 0..{bucket.burst}")
            now = bucket.clock()
            bucket._expire(now)
            levels.append((bucket._level(key, now), now))
        take = all(tokens >= cost for tokens, _ in levels)
        decisions = []
        for bucket, (tokens, now) in zip(buckets, levels, strict=True):
            rate, burst = bucket.rate, bucket.burst
            if take:
                tokens -= cost
                bucket._store(key, tokens, now)
                decisions.append(Decision(True, int(tokens), 0.0, (burst - tokens) / rate, burst))
            else:
                if key in bucket._buckets:
                    bucket._buckets.move_to_end(key)  # used, if refused (see the module docstring)
                retry_after = 0.0 if tokens >= cost else (cost - tokens) / rate
                decisions.append(Decision(tokens >= cost, int(tokens), retry_after, (burst - tokens) / rate, burst))
        return decisions

    def seed(self, key: str, tokens: float) -> None:
        """Set `key`'s bucket to `tokens` now (what the shared bucket was last seen to hold)."""
        self._store(key, max(0.0, min(float(self.burst), tokens)), self.clock())

    def _level(self, key: str, now: float) -> float:
        """The tokens in `key`'s bucket at `now`, refilled (a missing bucket is full)."""
        state = self._buckets.get(key)
        tokens, last = state if state is not None else (float(self.burst), now)
        return min(self.burst, tokens + max(0.0, now - last) * self.rate)

    def _store(self, key: str, tokens: float, now: float) -> None:
        self._buckets[key] = (tokens, now)
        self._buckets.move_to_end(key)
        if len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)

    def _expire(self, now: float) -> None:
        buckets = self._buckets
        while buckets:
            key, (_, written) = next(iter(buckets.items()))
            if now - written < self._full_after:
                return
            del buckets[key]
