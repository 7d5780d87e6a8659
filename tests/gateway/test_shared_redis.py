"""One top-level `redis.url` for rate limits, breaker hints and revocations, each able to name its own."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import redis

from gateway.app import create_app
from gateway.settings import ConfigError, GatewaySettings, RateLimitSettings, load_settings
from tests.support.redis_server import delete_prefix, new_prefix, shared_client

# A database of its own on the shared Redis, so the keys found there can only have come through redis.url.
SHARED_DB_URL = "redis://127.0.0.1:6379/11"


def test_every_section_defaults_to_redis_url_and_may_override_it(tmp_path: Path) -> None:
    config = tmp_path / "upf.yaml"
    config.write_text(
        "redis: {url: 'redis://10.0.0.5:6379/2'}\n"
        "rateLimiting: {store: redis}\n"
        "circuitBreaker: {shareVia: redis, redisUrl: 'redis://10.0.0.6:6379/0'}\n"
        "auth: {revocation: {store: redis}}\n"
    )
    settings = load_settings(config, {})
    assert settings.rate_limiting.redis_url == "redis://10.0.0.5:6379/2"
    assert settings.circuit_breaker.redis_url == "redis://10.0.0.6:6379/0"  # its own
    assert settings.auth.revocation.redis_url == "redis://10.0.0.5:6379/2"
    # The environment sets it too; with no redis.url each keeps the default.
    from_env = load_settings(None, {"UPF_REDIS__URL": "rediss://cache.internal:6380/0"})
    assert {from_env.rate_limiting.redis_url, from_env.auth.revocation.redis_url} == {"rediss://cache.internal:6380/0"}
    assert load_settings(None, {}).circuit_breaker.redis_url == "redis://127.0.0.1:6379/0"
    # Sections built in code: a redisUrl they were given is theirs, an unset one follows redis.url.
    built = GatewaySettings(redis={"url": SHARED_DB_URL}, rate_limiting=RateLimitSettings(enabled=True))  # type: ignore[arg-type]
    assert built.rate_limiting.redis_url == SHARED_DB_URL


def test_a_bad_redis_url_is_reported_once_under_its_own_key(tmp_path: Path) -> None:
    config = tmp_path / "upf.yaml"
    config.write_text("redis: {url: 'http://127.0.0.1:6379'}\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(config, {})
    assert str(caught.value) == (
        f"invalid configuration:\n  config file {config}: redis.url: "
        "'http://127.0.0.1:6379' is not a redis://, rediss:// or unix:// URL"
    )


async def test_the_rate_limiter_keeps_its_buckets_where_redis_url_points() -> None:
    prefix = new_prefix()
    store = redis.Redis.from_url(SHARED_DB_URL)
    settings = GatewaySettings.model_validate(
        {
            "grpcPort": 0,
            "redis": {"url": SHARED_DB_URL},
            "rateLimiting": {
                "enabled": True,
                "store": "redis",
                "keyPrefix": prefix,
                "burstSize": 2,
                "requestsPerSecond": 0.01,
            },
        }
    )
    app = create_app(settings)
    try:
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway") as http,
        ):
            answers = [(await http.get("/api/manifests")).status_code for _ in range(3)]
        assert answers == [200, 200, 429]
        assert list(store.scan_iter(match=f"{prefix}:*")), "no bucket in redis.url's database"
        default_db = shared_client()
        try:
            assert not list(default_db.scan_iter(match=f"{prefix}:*")), "a bucket in the default database"
        finally:
            default_db.close()
    finally:
        delete_prefix(store, prefix)
        store.close()
