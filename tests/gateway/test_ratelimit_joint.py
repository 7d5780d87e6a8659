"""A call held to a per-client and a method limit: one decision over both buckets, all or nothing.

- take_all (memory, redis-py, RESP client) takes from every bucket or from none: a refusal by one
  bucket leaves the others as they were, and each bucket's decision says what it holds;
- CallLimiter decides such a call with exactly one EVALSHA (counted by INFO commandstats on a
  redis-server of the test's own), and a method-limit refusal spends no per-client token;
- with Redis gone, the failure modes apply to both limiters, `local` all or nothing too.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import redis
import redis.asyncio

from gateway.errors import RateLimiterUnavailable
from gateway.ratelimit import MemoryTokenBucket, RedisTokenBucket, RespClient, RespTokenBucket, TokenBucket
from gateway.ratelimit.calls import CallLimiter
from gateway.ratelimit.lease import LEASE_SCRIPT, LeasedTokenBucket, LeaseTable
from gateway.ratelimit.limiter import RateLimiter, RateLimitPolicy, StoreClient, bucket_on, take_all
from gateway.ratelimit.redis import redis_client
from gateway.ratelimit.resp import RespScript
from gateway.settings import RateLimitSettings
from gateway.upstream.policies import MethodPolicies
from tests.support.clock import ManualClock
from tests.support.redis_server import SHARED_URL, delete_prefix, new_prefix, redis_server, shared_client

SERVICE = "joint.v1.Echo"
SAY = f"/{SERVICE}/Say"  # burst 2, nothing refills while a test runs
COUNT = f"/{SERVICE}/Count"  # no limit of its own


MakeBucket = Callable[[str, int], TokenBucket]


@pytest.fixture(params=["memory", "redis", "resp", "lease"])
async def make_bucket(request: pytest.FixtureRequest) -> AsyncIterator[MakeBucket]:
    if request.param == "memory":
        clock = ManualClock()
        yield lambda policy, burst: MemoryTokenBucket(rate=0.001, burst=burst, clock=clock)
        return
    sync = shared_client()
    prefix = new_prefix()
    resp_kinds = ("resp", "lease")
    client: StoreClient = RespClient(SHARED_URL, timeout=5) if request.param in resp_kinds else redis_client(SHARED_URL)
    try:
        if request.param == "lease" and isinstance(client, RespClient):
            table = LeaseTable(RespScript(client, LEASE_SCRIPT), lease_seconds=1.0)
            yield lambda policy, burst: LeasedTokenBucket(
                table, rate=0.001, burst=burst, policy=policy, prefix=prefix, extra=16
            )
        elif isinstance(client, RespClient):
            resp = client
            yield lambda policy, burst: RespTokenBucket(resp, rate=0.001, burst=burst, policy=policy, prefix=prefix)
        else:
            plain = client
            yield lambda policy, burst: RedisTokenBucket(plain, rate=0.001, burst=burst, policy=policy, prefix=prefix)
    finally:
        await client.aclose()
        delete_prefix(sync, prefix)
        sync.close()


async def test_a_refusal_by_one_bucket_takes_from_none(make_bucket: MakeBucket) -> None:
    wide, narrow = make_bucket("wide", 3), make_bucket("narrow", 1)
    first = await take_all([wide, narrow], "client")
    assert [(d.allowed, d.remaining, d.limit) for d in first] == [(True, 2, 3), (True, 0, 1)]

    wide_says, narrow_says = await take_all([wide, narrow], "client")
    assert not narrow_says.allowed
    assert narrow_says.remaining == 0
    assert 990 < narrow_says.retry_after <= 1000  # one token at 0.001/s
    assert wide_says.allowed  # it held a token, which stays there
    assert wide_says.remaining == 2

    alone = await wide.take("client")
    assert (alone.allowed, alone.remaining) == (True, 1)  # the refused call took nothing from it
    # Another key's buckets are untouched by all of this.
    assert [d.remaining for d in await take_all([wide, narrow], "other")] == [2, 0]


def settings(url: str, prefix: str, **extra: object) -> RateLimitSettings:
    config = {
        "enabled": True,
        "store": "redis",
        "redisUrl": url,
        "keyPrefix": prefix,
        "requestsPerSecond": 0.001,
        "burstSize": 5,
        "redisTimeout": 2,
        **extra,
    }
    return RateLimitSettings.model_validate(config)


def method_policies() -> MethodPolicies:
    policies = MethodPolicies()
    say = {"Say": {"rateLimit": {"requestsPerSecond": 0.001, "burstSize": 2}}}
    policies.update([{"id": "joint", "provides": [{"grpcServices": [SERVICE], "policies": say}]}])
    return policies


def call_limiter(config: RateLimitSettings, client_kind: str, counters: Counter[str]) -> CallLimiter:
    """As CallLimiter.from_settings builds it, with the RESP client or (as for rediss://) redis-py."""
    if client_kind == "resp":
        return CallLimiter.from_settings(config, policies=method_policies(), counters=counters)
    client = redis_client(config.redis_url, timeout=config.redis_timeout)
    policy = RateLimitPolicy("default", config.requests_per_second, config.burst_size)
    per_client = RateLimiter(
        policy,
        store=bucket_on(client, config, policy),
        failure_mode=config.failure_mode,
        counters=counters,
        client=client,
    )
    limiter = CallLimiter(config, policies=method_policies(), per_client=per_client, client=client)
    limiter._counters["default"] = counters
    return limiter


def command_calls(client: redis.Redis) -> dict[str, int]:
    stats = client.info("commandstats")
    return {name: int(stats.get(f"cmdstat_{name}", {}).get("calls", 0)) for name in ("evalsha", "eval")}


def remaining(verdict: object) -> tuple[str, bool, int]:
    assert isinstance(verdict, tuple)
    policy, decision = verdict
    return policy.name, decision.allowed, decision.remaining


@pytest.mark.parametrize("client_kind", ["resp", "redis-py"])
async def test_a_call_with_both_limits_is_one_evalsha_and_a_method_refusal_spends_no_client_token(
    tmp_path: Path, client_kind: str
) -> None:
    with redis_server(tmp_path) as server:
        counters: Counter[str] = Counter()
        limiter = call_limiter(settings(server.url, "upf:test:joint"), client_kind, counters)
        sync = redis.Redis.from_url(server.url)
        try:
            # Loads the scripts (NOSCRIPT, then EVAL): not what is counted.
            assert remaining(await limiter.check("ip:a", COUNT)) == ("default", True, 4)
            assert remaining(await limiter.check("ip:a", SAY)) == (f"{SERVICE}/Say", True, 1)

            before = command_calls(sync)
            assert remaining(await limiter.check("ip:a", SAY)) == (f"{SERVICE}/Say", True, 0)
            after = command_calls(sync)
            assert after["evalsha"] - before["evalsha"] == 1
            assert after["eval"] == before["eval"]

            # Refused by the method: one EVALSHA, and the per-client bucket keeps its 2 tokens.
            for _ in range(3):
                assert remaining(await limiter.check("ip:a", SAY)) == (f"{SERVICE}/Say", False, 0)
            assert command_calls(sync)["evalsha"] - after["evalsha"] == 3
            assert remaining(await limiter.check("ip:a", COUNT)) == ("default", True, 1)
            assert counters == Counter(allowed=4)
            say_counters = dict(limiter.counters())[f"{SERVICE}/Say"]
            assert say_counters == Counter(allowed=2, rejected=3)
        finally:
            sync.close()
            await limiter.close()


async def test_in_memory_a_method_refusal_spends_no_client_token() -> None:
    config = RateLimitSettings.model_validate({"enabled": True, "requestsPerSecond": 0.001, "burstSize": 5})
    counters: Counter[str] = Counter()
    limiter = CallLimiter.from_settings(config, policies=method_policies(), counters=counters, clock=ManualClock())
    assert remaining(await limiter.check("ip:a", SAY)) == (f"{SERVICE}/Say", True, 1)
    assert remaining(await limiter.check("ip:a", SAY)) == (f"{SERVICE}/Say", True, 0)
    for _ in range(3):
        assert remaining(await limiter.check("ip:a", SAY)) == (f"{SERVICE}/Say", False, 0)
    for left in (2, 1, 0):
        assert remaining(await limiter.check("ip:a", COUNT)) == ("default", True, left)
    # The per-client refusal is reported first, and takes nothing from the method's bucket either.
    assert remaining(await limiter.check("ip:a", COUNT)) == ("default", False, 0)
    assert remaining(await limiter.check("ip:a", SAY)) == ("default", False, 0)
    assert counters == Counter(allowed=5, rejected=2)


async def test_with_redis_gone_the_failure_modes_hold_both_limits(tmp_path: Path) -> None:
    with redis_server(tmp_path) as server:
        server.kill()
        for mode in ("open", "closed", "local"):
            counters: Counter[str] = Counter()
            config = settings(server.url, "upf:test:gone", failureMode=mode, redisTimeout=0.5)
            limiter = call_limiter(config, "resp", counters)
            try:
                if mode == "open":
                    assert await limiter.check("ip:a", SAY) is None
                    assert counters == Counter(store_errors=1, failed_open=1)
                elif mode == "closed":
                    with pytest.raises(RateLimiterUnavailable):
                        await limiter.check("ip:a", SAY)
                    assert counters == Counter(store_errors=1, failed_closed=1)
                else:
                    # The local shares (burst 5 and 2, one replica), all or nothing as in Redis.
                    assert remaining(await limiter.check("ip:a", SAY)) == (f"{SERVICE}/Say", True, 1)
                    assert remaining(await limiter.check("ip:a", SAY)) == (f"{SERVICE}/Say", True, 0)
                    assert remaining(await limiter.check("ip:a", SAY)) == (f"{SERVICE}/Say", False, 0)
                    assert remaining(await limiter.check("ip:a", COUNT)) == ("default", True, 2)
                    assert counters == Counter(store_errors=1, local_allowed=3)
                    say_counters = dict(limiter.counters())[f"{SERVICE}/Say"]
                    assert say_counters == Counter(store_errors=1, local_allowed=2, local_rejected=1)
            finally:
                await limiter.close()


async def test_joint_take_rejects_a_cost_larger_than_a_bucket() -> None:
    clock = ManualClock()
    small, large = MemoryTokenBucket(rate=1, burst=1, clock=clock), MemoryTokenBucket(rate=1, burst=9, clock=clock)
    with pytest.raises(ValueError, match="outside"):
        await take_all([large, small], "k", 2)
    assert len(large) == 0  # checked before anything is taken
