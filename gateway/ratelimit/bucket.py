"""What every token bucket answers, and the clock the in-process one reads.

A bucket holds up to `burst` tokens and gains `rate` tokens a second; a request takes `cost` tokens
or is refused. A bucket nobody has touched is full, so an idle client may spend its whole burst at
once, then `rate` requests a second. Every implementation keeps these semantics: one contract suite
(tests/gateway/test_ratelimit_buckets.py) runs over all of them.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Protocol

from common.clock import Clock

__all__ = ["Clock", "Decision", "StoreError", "TokenBucket", "refill_seconds"]


class StoreError(Exception):
    """The bucket's store could not answer (Redis down, timed out, refused the script)."""


class Decision(NamedTuple):
    # A NamedTuple, not a frozen dataclass: made once per request, and a frozen dataclass's
    # __init__ (object.__setattr__ per field) costs several times a tuple's.
    allowed: bool
    remaining: int  # whole tokens left after this request
    retry_after: float  # seconds until `cost` tokens are there again; 0 when allowed
    reset_after: float  # seconds until the bucket is full again
    limit: int  # the bucket's size (burst)


class TokenBucket(Protocol):
    """One rate-limit policy: a bucket per key, all of the same size and refill rate."""

    async def take(self, key: str, cost: int = 1) -> Decision:
        """Take `cost` tokens from `key`'s bucket if it holds that many; refuse otherwise.

        Raises:
            ValueError: `cost` is negative or larger than the bucket, so it could never be allowed.
            StoreError: the store could not decide (never raised by the in-process bucket).
        """
        ...


def refill_seconds(rate: float, burst: int) -> int:
    """Whole seconds for an empty bucket to fill: how long an idle bucket must be kept, at least."""
    return max(1, math.ceil(burst / rate))
