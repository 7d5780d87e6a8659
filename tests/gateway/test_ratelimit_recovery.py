"""Rate limiting through a Redis that fails and comes back (gateway/ratelimit/recovery.py).

A real redis-server of the test's own, stopped with SIGSTOP (a Redis that hangs: its buckets are
kept, so what the limiter lets through before, during and after can be added up) or killed, then
resumed. The limiter's clock (the retry interval, the local buckets) is the test's; Redis keeps its
own time, with rates so low that its refill does not count.
"""

from __future__ import annotations

import signal
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.errors import RateLimiterUnavailable
from gateway.ratelimit.calls import CallLimiter
from gateway.settings import GatewaySettings, RateLimitSettings
from gateway.upstream.policies import MethodPolicies
from tests.support.clock import ManualClock
from tests.support.grpcweb import BINARY, frame, parse_response
from tests.support.processes import eventually, run_gateway, wait_until
from tests.support.redis_server import RedisServer, new_prefix, redis_server

RATE = 0.001  # a token every 1000 s: Redis's own clock adds nothing during a test


@pytest.fixture
def server(work_dir: Path) -> Iterator[RedisServer]:
    with redis_server(work_dir) as running:
        yield running


def settings(server: RedisServer, **extra: Any) -> RateLimitSettings:
    limits = {
        "enabled": True,
        "store": "redis",
        "redisUrl": server.url,
        "keyPrefix": new_prefix(),
        "requestsPerSecond": RATE,
        "burstSize": 10,
        "redisTimeout": 0.2,
        "redisRetryInterval": 0.1,
        **extra,
    }
    return GatewaySettings.model_validate({"rateLimiting": limits}).rate_limiting


def hang(server: RedisServer) -> None:
    assert server.process is not None
    server.process.popen.send_signal(signal.SIGSTOP)


def resume(server: RedisServer) -> None:
    assert server.process is not None
    server.process.popen.send_signal(signal.SIGCONT)


async def allowed(limiter: CallLimiter, identity: str = "ip:a") -> bool | None:
    verdict = await limiter.check(identity)
    return None if verdict is None else verdict[1].allowed


async def test_local_decisions_and_the_shared_bucket_never_add_up_to_more_than_the_burst(
    server: RedisServer,
) -> None:
    clock = ManualClock()
    counters: Counter[str] = Counter()
    limiter = CallLimiter.from_settings(
        settings(server, failureMode="local"), policies=MethodPolicies(), counters=counters, clock=clock
    )
    try:
        assert [await allowed(limiter) for _ in range(4)] == [True] * 4  # on Redis: 6 left
        hang(server)
        try:
            # The local bucket starts where the shared one was: 6 more, not a fresh 10.
            during = [await allowed(limiter) for _ in range(8)]
            assert during == [True] * 6 + [False] * 2
            assert counters["local_allowed"] == 6
        finally:
            resume(server)
        clock.now += 0.1  # the retry interval: the next decision starts the probe
        assert await allowed(limiter) is False  # still local while the probe runs
        await eventually(lambda: limiter.health.up, what="the probe to find Redis again")
        # What the fallback let through was taken from the shared bucket: nothing is left.
        after = [await limiter.check("ip:a") for _ in range(3)]
        assert [verdict is not None and verdict[1].allowed for verdict in after] == [False] * 3
        assert counters["rejected"] == 3  # decided by Redis, not locally
        assert counters["allowed"] + counters["local_allowed"] == 10  # the burst, and no more
    finally:
        await limiter.close()


@pytest.mark.parametrize("mode", ["open", "closed"])
async def test_redis_is_asked_again_after_the_retry_interval_not_a_second(server: RedisServer, mode: str) -> None:
    clock = ManualClock()
    limiter = CallLimiter.from_settings(
        settings(server, failureMode=mode, burstSize=3), policies=MethodPolicies(), counters=Counter(), clock=clock
    )

    async def undecided() -> bool:
        try:
            return await limiter.check("ip:b") is None  # open: through, unlimited
        except RateLimiterUnavailable:
            return True  # closed: refused, undecided

    try:
        assert await allowed(limiter, "ip:b") is True
        server.kill()
        assert await undecided()
        server.start()  # an empty Redis on the same port
        assert await undecided()  # within the retry interval: not asked
        clock.now += 0.1
        assert await undecided()  # this decision starts the probe, in the background
        await eventually(lambda: limiter.health.up, what="the probe to find Redis again")
        # Limited again at once: burst 3 on the new (empty) Redis, then refused.
        assert [await allowed(limiter, "ip:b") for _ in range(4)] == [True, True, True, False]
    finally:
        await limiter.close()


def test_readyz_tells_whether_the_limiter_store_answers_and_the_policy_states_the_real_rate(
    server: RedisServer, work_dir: Path, probe_address: str, pb: Any
) -> None:
    limits = {
        "enabled": True,
        "store": "redis",
        "redisUrl": server.url,
        "keyPrefix": new_prefix(),
        "requestsPerSecond": 20,
        "burstSize": 50,
        "failureMode": "closed",
    }
    config = {"upstreams": {"accept.v1.Probe": [probe_address]}, "grpcPort": 0, "rateLimiting": limits}
    body = frame(pb.CallRequest(payload=b"x").SerializeToString())
    with run_gateway(config, work_dir) as gateway, httpx.Client(base_url=gateway.url, timeout=10) as http:

        def call() -> httpx.Response:
            return http.post("/accept.v1.Probe/Unary", content=body, headers={"content-type": BINARY})

        answer = call()
        assert parse_response(answer.status_code, dict(answer.headers), answer.content).status == 0
        assert answer.headers["ratelimit-policy"] == '"default";q=60;w=3'  # 20/s, not 50 per 3 s
        ready = http.get("/readyz")
        assert ready.status_code == 200
        assert ready.json()["rateLimiter"] == {"store": "redis", "reachable": True, "failureMode": "closed"}

        server.kill()
        call()  # refused: UNAVAILABLE, the limiter cannot decide
        ready = http.get("/readyz")
        # Information only, even in closed mode: every replica shares this Redis (CallLimiter.status).
        assert ready.status_code == 200
        assert ready.json()["rateLimiter"]["reachable"] is False

        server.start()

        def reachable_again() -> bool:
            call()  # the probe is started by a decision, once the retry interval has passed
            return bool(http.get("/readyz").json()["rateLimiter"]["reachable"])

        wait_until(reachable_again, timeout=5, what="/readyz to see Redis again")
