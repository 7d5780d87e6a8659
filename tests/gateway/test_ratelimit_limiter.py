"""The limiter and its middleware, in-process: headers, failure modes, counters, settings.

- RateLimit-Policy / RateLimit follow draft-ietf-httpapi-ratelimit-headers-11: `"default";q=<burst>;
  w=<seconds to refill>` and `"default";r=<remaining>;t=<seconds until the next unit>`; Retry-After
  is whole seconds, rounded up.
- When the store fails (a real client of a Redis that is not there): `open` lets requests through
  undecided, `closed` raises UNAVAILABLE, `local` decides on an in-process share (rate and burst /
  replicas). A failed store is left alone for `recheck_after` seconds. Everything is counted.
- The middleware, through create_app and httpx.ASGITransport: headers on allowed answers, 429 JSON
  for REST, trailers-only RESOURCE_EXHAUSTED for gRPC-Web, /healthz and /readyz never limited,
  `token` keys from the scope key the auth middleware will set.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.app import create_app
from gateway.auth.identity import IDENTITY_SCOPE_KEY, Identity
from gateway.errors import RateLimiterUnavailable
from gateway.ratelimit import (
    Decision,
    MemoryTokenBucket,
    RateLimiter,
    RateLimitPolicy,
    StoreError,
)
from gateway.ratelimit.redis import RedisTokenBucket, redis_client
from gateway.ratelimit.resp import RespTokenBucket
from gateway.settings import ConfigError, GatewaySettings, load_settings
from tests.support.clock import ManualClock
from tests.support.grpcweb import BINARY, assert_trailers_only, frame
from tests.support.processes import free_port

ORIGIN = "http://allowed.example"


# Headers --------------------------------------------------------------------------------------------


def test_policy_field_states_the_real_rate_over_at_least_the_fill_time() -> None:
    assert RateLimitPolicy("default", 10, 50).policy_field == '"default";q=50;w=5'
    assert RateLimitPolicy("default", 20, 50).policy_field == '"default";q=60;w=3'  # not q=50;w=3 (16.7/s)
    assert RateLimitPolicy("default", 3, 10).policy_field == '"default";q=12;w=4'
    assert RateLimitPolicy("default", 1000, 5).policy_field == '"default";q=1000;w=1'
    assert RateLimitPolicy("default", 16.7, 50).policy_field == '"default";q=167;w=10'
    assert RateLimitPolicy("default", 0.01, 3).policy_field == '"default";q=3;w=300'
    assert RateLimitPolicy("default", 1 / 3000, 2).policy_field == '"default";q=2;w=6000'
    # No whole window within ten fill times: the rate rounded down, never advertised above itself.
    assert RateLimitPolicy("default", 2**0.5, 1).policy_field == '"default";q=1;w=1'


def test_quota_field_counts_whole_units_and_seconds_until_the_next() -> None:
    policy = RateLimitPolicy("default", 0.5, 4)
    # 2.5 tokens left: 1.5 missing (3 s to full); the third whole token comes in 1 s.
    allowed = Decision(True, 2, 0.0, 3.0, 4)
    assert policy.quota_field(allowed) == '"default";r=2;t=1'
    refused = Decision(False, 0, 1.4, 7.4, 4)
    assert policy.quota_field(refused) == '"default";r=0;t=2'
    assert policy.headers(refused) == {
        "ratelimit-policy": '"default";q=4;w=8',
        "ratelimit": '"default";r=0;t=2',
        "retry-after": "2",
    }
    assert policy.quota_field(Decision(True, 4, 0.0, 0.0, 4)) == '"default";r=4;t=0'  # full: nothing to wait for


def test_retry_after_is_whole_seconds_rounded_up_at_least_one() -> None:
    assert RateLimitPolicy.retry_after(Decision(False, 0, 0.004, 1.0, 5)) == 1
    assert RateLimitPolicy.retry_after(Decision(False, 0, 1.0000004, 1.0, 5)) == 1  # the store's rounding
    assert RateLimitPolicy.retry_after(Decision(False, 0, 2.3, 1.0, 5)) == 3


def test_local_share_of_a_policy() -> None:
    share = RateLimitPolicy("default", 10, 5).share(3)
    assert (share.rate, share.burst) == (10 / 3, 2)


# Failure modes --------------------------------------------------------------------------------------


@pytest.fixture
async def dead_store() -> AsyncIterator[RedisTokenBucket]:
    """A real Redis client of a port nobody listens on."""
    client = redis_client(f"redis://127.0.0.1:{free_port()}/0")
    try:
        yield RedisTokenBucket(client, rate=1, burst=4)
    finally:
        await client.aclose()


async def test_failure_mode_open_lets_requests_through_undecided(dead_store: RedisTokenBucket) -> None:
    counters: Counter[str] = Counter()
    limiter = RateLimiter(RateLimitPolicy("default", 1, 4), store=dead_store, failure_mode="open", counters=counters)
    assert [await limiter.check("ip:a") for _ in range(10)] == [None] * 10
    assert counters["failed_open"] == 10
    assert counters["store_errors"] >= 1


async def test_failure_mode_closed_answers_unavailable(dead_store: RedisTokenBucket) -> None:
    counters: Counter[str] = Counter()
    limiter = RateLimiter(RateLimitPolicy("default", 1, 4), store=dead_store, failure_mode="closed", counters=counters)
    with pytest.raises(RateLimiterUnavailable) as caught:
        await limiter.check("ip:a")
    assert caught.value.headers == {"retry-after": "1"}
    assert counters["failed_closed"] == 1


async def test_failure_mode_local_limits_to_a_share_per_replica(dead_store: RedisTokenBucket) -> None:
    counters: Counter[str] = Counter()
    limiter = RateLimiter(
        RateLimitPolicy("default", 0.001, 4),
        store=dead_store,
        failure_mode="local",
        replicas=2,
        counters=counters,
        clock=ManualClock(),
    )
    verdicts = [await limiter.check("ip:a") for _ in range(3)]
    assert [v is not None and v[1].allowed for v in verdicts] == [True, True, False]
    assert verdicts[0] is not None
    assert verdicts[0][0].policy_field == '"default";q=2;w=4000'  # the share is what is advertised
    assert (counters["local_allowed"], counters["local_rejected"]) == (2, 1)


async def test_a_failed_store_is_left_alone_for_the_recheck_interval(dead_store: RedisTokenBucket) -> None:
    counters: Counter[str] = Counter()
    clock = ManualClock()
    limiter = RateLimiter(
        RateLimitPolicy("default", 1, 4),
        store=dead_store,
        failure_mode="open",
        counters=counters,
        clock=clock,
        recheck_after=1.0,
    )
    for _ in range(5):
        await limiter.check("ip:a")
    assert counters["store_errors"] == 1  # one try; the other four went straight to the failure mode
    clock.now += 1.0
    await limiter.check("ip:a")
    assert counters["store_errors"] == 2


async def test_a_store_that_answers_again_decides_again() -> None:
    counters: Counter[str] = Counter()
    clock = ManualClock()

    class Flaky(MemoryTokenBucket):
        down = True

        async def take(self, key: str, cost: int = 1) -> Decision:
            if self.down:
                raise StoreError("down")
            return await super().take(key, cost)

    store = Flaky(rate=0.001, burst=3, clock=clock)
    limiter = RateLimiter(
        RateLimitPolicy("default", 0.001, 3), store=store, failure_mode="open", counters=counters, clock=clock
    )
    assert await limiter.check("ip:a") is None
    store.down = False
    assert await limiter.check("ip:a") is None  # still within the recheck interval
    clock.now += 1.0
    verdict = await limiter.check("ip:a")
    assert verdict is not None
    assert verdict[1].allowed
    assert counters == Counter(store_errors=1, failed_open=2, allowed=1)


# Which Redis client -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "store"),
    [
        ("redis://127.0.0.1:6379/0", RespTokenBucket),  # the pipelined client: a tenth of the CPU
        ("rediss://cache:6380/0", RedisTokenBucket),  # TLS: redis-py
        ("unix:///run/redis.sock", RedisTokenBucket),  # a Unix socket: redis-py
    ],
)
async def test_the_redis_client_is_chosen_by_url(url: str, store: type) -> None:
    settings = GatewaySettings.model_validate({"rateLimiting": {"store": "redis", "redisUrl": url}}).rate_limiting
    limiter = RateLimiter.from_settings(settings, counters=Counter())
    try:
        assert type(limiter.store) is store
    finally:
        await limiter.close()


# The middleware, in-process -------------------------------------------------------------------------


def memory_app(**rate_limiting: Any) -> ASGIApp:
    settings = GatewaySettings.model_validate(
        {
            "grpcPort": 0,
            "cors": {"allowOrigins": [ORIGIN]},
            "rateLimiting": {"enabled": True, "requestsPerSecond": 0.001, "burstSize": 2, **rate_limiting},
        }
    )
    return create_app(settings)


def client(app: ASGIApp) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway")


async def test_rest_answers_carry_quota_headers_and_refusals_are_429_json() -> None:
    async with client(memory_app()) as http:
        first = await http.get("/api/nothing-here")
        assert first.status_code == 404  # allowed through to the router, which knows no such path
        assert first.headers["ratelimit-policy"] == '"default";q=2;w=2000'
        assert first.headers["ratelimit"] == '"default";r=1;t=1000'
        await http.get("/api/nothing-here")
        refused = await http.get("/api/nothing-here")
        assert refused.status_code == 429
        assert refused.json() == {"code": "RESOURCE_EXHAUSTED", "message": "rate limit exceeded; retry in 1000 s"}
        assert refused.headers["retry-after"] == "1000"
        assert refused.headers["ratelimit"] == '"default";r=0;t=1000'
        assert refused.headers["ratelimit-policy"] == '"default";q=2;w=2000'


async def test_grpc_web_refusal_is_trailers_only_resource_exhausted_readable_by_the_page() -> None:
    headers = {"content-type": BINARY, "x-grpc-web": "1", "origin": ORIGIN}
    async with client(memory_app()) as http:
        for _ in range(2):
            await http.post("/accept.v1.Probe/Unary", content=frame(b""), headers=headers)
        refused = await http.post("/accept.v1.Probe/Unary", content=frame(b""), headers=headers)
    assert assert_trailers_only(refused, 8) == "rate limit exceeded; retry in 1000 s"
    assert refused.headers["retry-after"] == "1000"
    assert refused.headers["ratelimit"] == '"default";r=0;t=1000'
    assert refused.headers["access-control-allow-origin"] == ORIGIN
    exposed = {name.strip() for name in refused.headers["access-control-expose-headers"].split(",")}
    assert {"grpc-status", "grpc-message", "retry-after", "ratelimit", "ratelimit-policy"} <= exposed


async def test_health_and_readiness_are_never_limited() -> None:
    async with client(memory_app(burstSize=1, exemptPaths=["/api/exempt"])) as http:
        for path in ("/healthz", "/readyz", "/api/exempt"):
            for _ in range(3):
                answer = await http.get(path)
                assert answer.status_code != 429
                assert "ratelimit" not in answer.headers


async def test_token_keys_follow_the_subject_set_by_auth() -> None:
    inner = memory_app(keyExtractor="token", burstSize=1)

    def with_subject(app: ASGIApp) -> ASGIApp:
        # Stands in for the auth middleware, which sits outside the limiter and sets this key.
        async def authenticated(scope: Scope, receive: Receive, send: Send) -> None:
            subject = dict(scope["headers"]).get(b"x-test-subject")
            if subject:
                scope[IDENTITY_SCOPE_KEY] = Identity(subject=subject.decode(), issuer="test")
            await app(scope, receive, send)

        return authenticated

    async with client(with_subject(inner)) as http:
        assert (await http.get("/api/x", headers={"x-test-subject": "alice"})).status_code == 404
        assert (await http.get("/api/x", headers={"x-test-subject": "alice"})).status_code == 429
        assert (await http.get("/api/x", headers={"x-test-subject": "bob"})).status_code == 404
        assert (await http.get("/api/x")).status_code == 404  # no subject: the client address
        assert (await http.get("/api/x")).status_code == 429


def test_rate_limiting_off_adds_nothing() -> None:
    app = create_app(GatewaySettings.model_validate({"grpcPort": 0}))
    assert app.state.ratelimit_counters == Counter()
    assert all(m.cls.__name__ != "RateLimitMiddleware" for m in app.user_middleware)  # type: ignore[attr-defined]


# Settings -------------------------------------------------------------------------------------------


def test_settings_for_a_shared_limit() -> None:
    settings = load_settings(
        None,
        {
            "UPF_RATE_LIMITING__STORE": "redis",
            "UPF_RATE_LIMITING__REDIS_URL": "redis://10.0.0.5:6380/2",
            "UPF_RATE_LIMITING__FAILURE_MODE": "closed",
            "UPF_RATE_LIMITING__TRUSTED_PROXIES": "[10.0.0.0/8, '2001:db8::/32', 192.0.2.1]",
            "UPF_RATE_LIMITING__TRUSTED_HOPS": "2",
            "UPF_RATE_LIMITING__REPLICAS": "3",
        },
    ).rate_limiting
    assert (settings.store, settings.redis_url, settings.failure_mode) == ("redis", "redis://10.0.0.5:6380/2", "closed")
    assert settings.trusted_proxies == ["10.0.0.0/8", "2001:db8::/32", "192.0.2.1"]
    assert (settings.trusted_hops, settings.replicas, settings.key_prefix) == (2, 3, "upf:rl")
    assert (settings.api_key_header, settings.ipv6_subnet) == ("x-api-key", 64)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        (
            "TRUSTED_PROXIES",
            "[10.0.0.0/33]",
            "trustedProxies.0: '10.0.0.0/33' is not an IP address or CIDR",
        ),
        ("REDIS_URL", "http://cache:6379", "rateLimiting.redisUrl: 'http://cache:6379' is not a redis://"),
        ("FAILURE_MODE", "maybe", "rateLimiting.failureMode: Input should be 'open', 'closed' or 'local'"),
        ("API_KEY_HEADER", "x api key", "rateLimiting.apiKeyHeader: String should match pattern"),
        ("EXEMPT_PATHS", "[metrics]", "rateLimiting.exemptPaths: 'metrics' is not a path"),
        ("REPLICAS", "0", "rateLimiting.replicas: Input should be greater than or equal to 1"),
    ],
)
def test_bad_rate_limit_settings_name_the_key(key: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(None, {f"UPF_RATE_LIMITING__{key}": value})
    assert message in str(caught.value)
