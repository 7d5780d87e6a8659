"""/api/admin/traffic and /metrics on an app in this process (no upstream is called), the pieces
they read, and retries' replica choice."""

from __future__ import annotations

from typing import Any

import grpc
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.admin import allow_from
from gateway.app import create_app
from gateway.errors import UpstreamUnavailable
from gateway.settings import ConfigError, GatewaySettings, load_settings
from gateway.upstream.breaker import BreakerPolicy
from gateway.upstream.policies import cap_timeout, split_call
from gateway.upstream.pool import UpstreamPool


def app_with(**config: Any) -> Any:
    return create_app(GatewaySettings.model_validate({"grpcPort": 0, **config}))


async def get(app: Any, path: str) -> httpx.Response:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway") as client:
        return await client.get(path)


async def test_the_admin_api_is_off_unless_enabled_then_only_for_allowed_peers() -> None:
    off = await get(app_with(), "/api/admin/traffic")
    assert (off.status_code, off.json()["code"]) == (404, "NOT_FOUND")
    elsewhere = await get(app_with(admin={"enabled": True, "allowFrom": ["10.0.0.0/8"]}), "/api/admin/traffic")
    assert (elsewhere.status_code, elsewhere.json()["code"]) == (403, "PERMISSION_DENIED")
    assert "admin:traffic" in elsewhere.json()["message"]


async def test_the_traffic_state_names_every_replica_its_breaker_the_limiter_and_the_budget() -> None:
    app = app_with(
        admin={"enabled": True},
        upstreams={"a.v1.S": ["127.0.0.1:1", "127.0.0.1:2"]},
        circuitBreaker={"failureThreshold": 2},
        rateLimiting={"enabled": True, "requestsPerSecond": 5, "burstSize": 10},
    )
    pool: UpstreamPool = app.state.pool
    first = pool.route("a.v1.S").endpoints[0]
    for _ in range(2):
        pool.route("a.v1.S").pick(avoid=pool.route("a.v1.S").endpoints[1])
        first.report(grpc.StatusCode.UNAVAILABLE)
    r = await get(app, "/api/admin/traffic")
    assert r.status_code == 200
    assert r.headers["cache-control"] == "no-store"
    state = r.json()
    opened, closed = state["breakers"]["a.v1.S"]
    assert (opened["replica"], opened["state"], opened["failures"]) == ("127.0.0.1:1", "open", 0)
    assert opened["lastTransition"]["from"] == "closed"
    assert opened["lastTransition"]["cause"] == "failures"
    assert 29 < opened["retryAfter"] <= 30
    assert (closed["state"], closed["failures"], closed["lastTransition"]) == ("closed", 0, None)
    assert state["limiter"] == {
        "perClient": True,
        "methodLimits": True,
        "store": "memory",
        "failureMode": None,
        "leaseTokens": None,
        "redisHealthy": None,
        "policies": {"default": {"requestsPerSecond": 5.0, "burstSize": 10}},
    }
    assert state["retries"]["budget"] == {"windowSeconds": 10.0, "calls": 0, "retries": 0, "available": 10}
    assert state["breakerSharing"] == {"shareVia": "none"}


async def test_metrics_come_from_the_apps_own_registry_in_the_prometheus_text_format() -> None:
    app = app_with(upstreams={"a.v1.S": ["127.0.0.1:1"]}, rateLimiting={"enabled": True})
    other = app_with(upstreams={"a.v1.S": ["127.0.0.1:1"]})
    endpoint = app.state.pool.route("a.v1.S").pick()
    endpoint.report(grpc.StatusCode.NOT_FOUND)
    for _ in range(5):
        app.state.pool.route("a.v1.S").pick().report(grpc.StatusCode.UNAVAILABLE)
    assert (await get(app, "/api/x")).status_code == 404  # one limiter decision
    r = await get(app, "/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain; version=")
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(r.text)
        for sample in family.samples
    }
    assert samples[("upf_upstream_calls_total", (("code", "NOT_FOUND"), ("service", "a.v1.S")))] == 1
    assert samples[("upf_upstream_calls_total", (("code", "UNAVAILABLE"), ("service", "a.v1.S")))] == 5
    replica = (("replica", "127.0.0.1:1"), ("service", "a.v1.S"))
    assert (
        samples[("upf_breaker_transitions_total", (("from", "closed"), *replica[:1], *replica[1:], ("to", "open")))]
        == 1
    )
    assert samples[("upf_breaker_state", replica)] == 2
    assert (
        samples[
            ("upf_ratelimit_decisions_total", (("decision", "allowed"), ("policy", "default"), ("source", "store")))
        ]
        == 1
    )
    assert samples[("upf_retries_total", (("outcome", "attempted"),))] == 0
    # Another app in the same process counts on its own.
    assert "upf_upstream_calls_total{" not in (await get(other, "/metrics")).text


def test_allow_from_matches_the_peer_address_ipv4_mapped_included() -> None:
    authorize = allow_from(["127.0.0.1/32", "::1/128"])
    assert authorize({"client": ("127.0.0.1", 5)}, "admin:traffic")
    assert authorize({"client": ("::ffff:127.0.0.1", 5)}, "admin:traffic")
    assert authorize({"client": ("::1", 5)}, "admin:traffic")
    assert not authorize({"client": ("127.0.0.2", 5)}, "admin:traffic")
    assert not authorize({"client": None}, "admin:traffic")
    assert not authorize({"client": ("unix-socket", 0)}, "admin:traffic")


def test_a_retry_picks_another_replica_and_none_when_every_other_breaker_is_open() -> None:
    pool = UpstreamPool(
        {"a.v1.S": ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"], "b.v1.S": ["127.0.0.1:4"]},
        max_message_bytes=1024,
        breakers=BreakerPolicy(failure_threshold=1),
    )
    route = pool.route("a.v1.S")
    one, two, three = route.endpoints
    for _ in range(6):
        other = route.pick(avoid=one)
        assert other is not one
        other.report(grpc.StatusCode.OK)
    two.breaker.record_failure()  # type: ignore[union-attr]
    three.breaker.record_failure()  # type: ignore[union-attr]
    with pytest.raises(UpstreamUnavailable, match="no other replica"):
        route.pick(avoid=one)
    single = pool.route("b.v1.S")
    assert single.pick(avoid=single.endpoints[0]) is single.endpoints[0]  # alone: tried again


def test_gRPC_paths_and_deadline_caps() -> None:
    assert split_call("/pkg.v1.S/Say") == ("pkg.v1.S", "Say")
    assert split_call("/api/pkg.v1.S/Say") == ("pkg.v1.S", "Say")
    assert split_call("/api/manifests") is None
    assert split_call("/pkg.v1.S/") is None
    assert split_call("/api/x/pkg.v1.S/Say") is None
    assert cap_timeout(None, None, None) is None
    assert cap_timeout(10.0, None, 0.5) == 0.5
    assert cap_timeout(None, 30.0, 60.0) == 30.0
    assert cap_timeout(0.1, 30.0, 60.0) == 0.1


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("UPF_RETRIES__BUDGET_RATIO", "1.5", "retries.budgetRatio: Input should be less than or equal to 1"),
        ("UPF_RETRIES__MAX_ATTEMPTS", "0", "retries.maxAttempts: Input should be greater than or equal to 1"),
        ("UPF_CIRCUIT_BREAKER__SHARE_VIA", "nats", "circuitBreaker.shareVia: Input should be 'none' or 'redis'"),
        ("UPF_CIRCUIT_BREAKER__REDIS_URL", "http://x", "circuitBreaker.redisUrl: 'http://x' is not a redis://"),
        ("UPF_ADMIN__ALLOW_FROM", "[10.0.0.0/33]", "admin.allowFrom.0: '10.0.0.0/33' is not an IP address or CIDR"),
    ],
)
def test_bad_traffic_settings_name_the_key(variable: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(None, {variable: value})
    assert message in str(caught.value)


def test_traffic_settings_defaults() -> None:
    settings = load_settings(None, {})
    assert (settings.retries.enabled, settings.retries.budget_ratio, settings.retries.max_attempts) == (True, 0.2, 2)
    assert (settings.admin.enabled, settings.admin.allow_from) == (False, ["127.0.0.1/32", "::1/128"])
    assert (settings.circuit_breaker.share_via, settings.rate_limiting.method_limits) == ("none", True)
