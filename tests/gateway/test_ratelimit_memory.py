"""What is particular to the in-process token bucket (gateway/ratelimit/memory.py), on a hand-moved clock.

- take_all over several buckets (a per-client and a method limit): each bucket's decision carries
  the Retry-After and RateLimit values of that bucket, exactly;
- `max_keys` drops the least recently written key first, through take and take_all alike;
- a slow bucket (rate < 1 token a second) is kept until it is full again, not forgotten early.

The contract every bucket keeps is in test_ratelimit_buckets.py, joint takes across stores in
test_ratelimit_joint.py. Rates here are powers of two, so the arithmetic is exact.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest

from gateway.ratelimit import Decision, MemoryTokenBucket
from tests.support.clock import ManualClock

Take = Callable[[MemoryTokenBucket, str], Awaitable[Decision]]


async def take_one(bucket: MemoryTokenBucket, key: str) -> Decision:
    return await bucket.take(key)


async def take_all_of_one(bucket: MemoryTokenBucket, key: str) -> Decision:
    [decision] = await MemoryTokenBucket.take_all([bucket], key)
    return decision


# take and take_all keep their buckets each with code of its own: both ways are tested.
TAKES = pytest.mark.parametrize("take", [take_one, take_all_of_one], ids=["take", "take_all"])


# take_all ------------------------------------------------------------------------------------------


async def test_joint_decisions_give_each_buckets_retry_after_reset_after_and_limit() -> None:
    clock = ManualClock()
    client = MemoryTokenBucket(rate=2, burst=6, clock=clock)  # per client
    method = MemoryTokenBucket(rate=0.5, burst=2, clock=clock)  # per method, the narrower

    # Decision(allowed, remaining, retry_after, reset_after, limit)
    assert await MemoryTokenBucket.take_all([client, method], "ip:a", 2) == [
        Decision(True, 4, 0.0, 1.0, 6),  # 2 tokens missing at 2/s: full in 1 s
        Decision(True, 0, 0.0, 4.0, 2),  # 2 missing at 0.5/s: full in 4 s
    ]

    clock.advance(0.5)  # client: 4 + 1 = 5 tokens; method: 0 + 0.25
    assert await MemoryTokenBucket.take_all([client, method], "ip:a") == [
        Decision(True, 5, 0.0, 0.5, 6),  # it held the token (and keeps it: the call is refused)
        Decision(False, 0, 1.5, 3.5, 2),  # 0.75 of a token missing at 0.5/s
    ]

    clock.advance(1.5)  # exactly the Retry-After the refusal gave: now it passes
    assert await MemoryTokenBucket.take_all([client, method], "ip:a") == [
        Decision(True, 5, 0.0, 0.5, 6),  # refilled to the burst, not beyond
        Decision(True, 0, 0.0, 4.0, 2),
    ]


async def test_a_bucket_holding_exactly_the_cost_says_allowed_when_another_refuses() -> None:
    clock = ManualClock()
    one, other = MemoryTokenBucket(rate=1, burst=2, clock=clock), MemoryTokenBucket(rate=1, burst=2, clock=clock)
    await one.take("k")
    await other.take("k", 2)
    assert await MemoryTokenBucket.take_all([one, other], "k") == [
        Decision(True, 1, 0.0, 1.0, 2),
        Decision(False, 0, 1.0, 2.0, 2),
    ]
    assert (await one.take("k")).remaining == 0  # the refused call took nothing from it


async def test_joint_take_of_cost_zero_is_allowed_even_from_empty_buckets_and_takes_nothing() -> None:
    clock = ManualClock()
    full, empty = MemoryTokenBucket(rate=1, burst=2, clock=clock), MemoryTokenBucket(rate=1, burst=2, clock=clock)
    await empty.take("k", 2)
    assert await MemoryTokenBucket.take_all([full, empty], "k", 0) == [
        Decision(True, 2, 0.0, 0.0, 2),
        Decision(True, 0, 0.0, 2.0, 2),
    ]


async def test_joint_take_of_a_negative_cost_is_an_error() -> None:
    bucket = MemoryTokenBucket(rate=1, burst=2, clock=ManualClock())
    with pytest.raises(ValueError, match=r"^cost -1 is outside 0\.\.2$"):
        await MemoryTokenBucket.take_all([bucket], "k", -1)


# max_keys ------------------------------------------------------------------------------------------


@TAKES
async def test_over_max_keys_the_least_recently_used_key_is_forgotten_first(take: Take) -> None:
    bucket = MemoryTokenBucket(rate=0.001, burst=3, clock=ManualClock(), max_keys=2)
    assert (await take(bucket, "a")).remaining == 2
    assert (await take(bucket, "b")).remaining == 2
    assert (await take(bucket, "a")).remaining == 1  # "a" is now the most recently used
    assert (await take(bucket, "c")).remaining == 2  # a third key: "b" has to go, not "a"
    assert len(bucket) == 2
    assert (await take(bucket, "a")).remaining == 0  # remembered
    assert (await take(bucket, "b")).remaining == 2  # forgotten: a full bucket again


@TAKES
async def test_a_key_being_refused_is_not_the_one_forgotten_and_refilled(take: Take) -> None:
    # Under max_keys pressure the client its limit keeps busy must stay limited: a refusal is a use.
    bucket = MemoryTokenBucket(rate=0.001, burst=1, clock=ManualClock(), max_keys=2)
    assert (await take(bucket, "busy")).allowed
    assert (await take(bucket, "quiet")).allowed
    refused = await take(bucket, "busy")
    assert not refused.allowed
    assert refused.remaining == 0
    assert (await take(bucket, "new")).allowed  # a third key: the quiet one goes, not the busy one
    assert not (await take(bucket, "busy")).allowed
    assert (await take(bucket, "quiet")).allowed  # forgotten: a full bucket again


@TAKES
async def test_with_max_keys_one_only_the_last_key_is_kept(take: Take) -> None:
    bucket = MemoryTokenBucket(rate=0.001, burst=3, clock=ManualClock(), max_keys=1)
    assert (await take(bucket, "a")).remaining == 2
    assert (await take(bucket, "a")).remaining == 1
    assert (await take(bucket, "b")).remaining == 2
    assert len(bucket) == 1
    assert (await take(bucket, "b")).remaining == 1  # kept
    assert (await take(bucket, "a")).remaining == 2  # pushed out by "b"


def test_max_keys_zero_is_refused() -> None:
    with pytest.raises(ValueError, match=r"^rate must be positive, burst and max_keys at least 1$"):
        MemoryTokenBucket(rate=1, burst=1, max_keys=0)


# rate < 1 ------------------------------------------------------------------------------------------


@TAKES
async def test_a_slow_bucket_emptied_stays_empty_until_it_has_refilled(take: Take) -> None:
    clock = ManualClock()
    bucket = MemoryTokenBucket(rate=0.25, burst=4, clock=clock)  # 15 a minute: full after 16 s
    assert [(await take(bucket, "a")).allowed for _ in range(5)] == [True] * 4 + [False]
    clock.advance(2)  # half a token back; a bucket dropped now would come back full
    refused = await take(bucket, "a")
    assert (refused.allowed, refused.retry_after, refused.reset_after) == (False, 2.0, 14.0)
    clock.advance(13.5)  # 15.5 s idle: 3.875 tokens
    assert (await take(bucket, "a")).remaining == 2
    assert len(bucket) == 1


async def test_a_slow_bucket_is_dropped_once_idle_long_enough_to_be_full() -> None:
    clock = ManualClock()
    bucket = MemoryTokenBucket(rate=0.25, burst=4, clock=clock)
    await bucket.take("a", 4)
    clock.advance(16)
    await bucket.take("b")
    assert len(bucket) == 1  # "a" is full by now: forgetting it changes nothing
    assert (await bucket.take("a")).remaining == 3
