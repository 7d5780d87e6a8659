"""JwksCache: one issuer's keys, fetched asynchronously (common/auth/jwks.py).

Most tests drive the cache with a fetch callable and a clock they control; http_fetcher runs
against the real local OIDC issuer (tests/support/oidc_issuer.py).
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from common.auth.jwks import FetchError, JwksCache, http_fetcher
from tests.support.oidc_issuer import OidcIssuer, SigningKey, keycloak_issuer

__all__ = ["keycloak_issuer"]  # the fixture, imported for the http_fetcher tests


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Source:
    """What the issuer publishes, as the cache's fetch callable: a document, or an exception to raise."""

    def __init__(self, *keys: SigningKey) -> None:
        self.answer: Any = {"keys": [key.public_jwk() for key in keys]}
        self.fetches = 0
        self.gate: asyncio.Event | None = None  # when set, each fetch waits for it
        self.started = asyncio.Event()

    def publish(self, *jwks: Any) -> None:
        self.answer = {"keys": list(jwks)}

    async def __call__(self) -> bytes:
        self.fetches += 1
        self.started.set()
        if self.gate is not None:
            await self.gate.wait()
        if isinstance(self.answer, Exception):
            raise self.answer
        if isinstance(self.answer, bytes):
            return self.answer
        return json.dumps(self.answer).encode()


@pytest.fixture(scope="module")
def keys() -> list[SigningKey]:
    return [SigningKey.generate(f"k{i}") for i in range(3)]


def new_cache(source: Source, clock: Clock, **options: Any) -> JwksCache:
    return JwksCache(source, issuer="https://issuer.test", algorithms=["RS256"], clock=clock, **options)


def token(key: SigningKey) -> str:
    claims = {"sub": "alice", "exp": 4_000_000_000}
    return jwt.encode(claims, key.private_key, algorithm="RS256", headers={"kid": key.kid})


async def test_cached_key_verifies_a_token_and_get_never_fetches(keys: list[SigningKey]) -> None:
    source, clock = Source(keys[0]), Clock()
    cache = new_cache(source, clock)
    assert cache.get("k0") is None
    assert source.fetches == 0
    await cache.start()
    try:
        key = cache.get("k0")
        assert key is not None
        assert key.algorithm_name == "RS256"
        assert jwt.decode(token(keys[0]), key, algorithms=[key.algorithm_name])["sub"] == "alice"
        assert cache.get("unknown") is None
        assert source.fetches == 1
        assert cache.status == {"issuer": "https://issuer.test", "keys": 1, "last_success_age": 0.0, "last_error": None}
    finally:
        await cache.close()


async def test_concurrent_resolves_of_an_unknown_kid_share_one_fetch(keys: list[SigningKey]) -> None:
    source, clock = Source(keys[0]), Clock()
    cache = new_cache(source, clock)
    await cache.refresh()
    source.publish(keys[0].public_jwk(), keys[1].public_jwk())
    source.gate, source.started = asyncio.Event(), asyncio.Event()

    resolving = [asyncio.create_task(cache.resolve("k1")) for _ in range(50)]
    await source.started.wait()
    source.gate.set()
    found = await asyncio.gather(*resolving)

    assert all(key is not None and key.key_id == "k1" for key in found)
    assert source.fetches == 2  # the first load, then one fetch for all 50


async def test_a_cancelled_caller_does_not_cancel_the_shared_fetch(keys: list[SigningKey]) -> None:
    source, clock = Source(keys[0]), Clock()
    cache = new_cache(source, clock)
    source.gate = asyncio.Event()
    impatient = asyncio.create_task(cache.resolve("k0"))
    patient = asyncio.create_task(cache.resolve("k0"))
    await source.started.wait()
    impatient.cancel()
    source.gate.set()
    key = await patient
    assert key is not None
    assert impatient.cancelled()
    assert source.fetches == 1


@pytest.mark.parametrize("failing", [False, True], ids=["fetch-ok", "fetch-fails"])
async def test_unknown_kids_cause_one_fetch_per_cooldown(keys: list[SigningKey], failing: bool) -> None:
    source, clock = Source(keys[0]), Clock()
    cache = new_cache(source, clock, unknown_kid_cooldown=30.0)
    await cache.refresh()
    if failing:
        source.answer = FetchError("https://issuer.test/certs answered HTTP 500")

    for _ in range(100):
        assert await cache.resolve(uuid.uuid4().hex) is None
    assert source.fetches == 2  # the first load, then a single refetch for 100 random kids

    clock.now += 29.9
    assert await cache.resolve("still-cooling") is None
    assert source.fetches == 2
    clock.now += 0.2
    assert await cache.resolve("after-cooldown") is None
    assert source.fetches == 3
    assert cache.get("k0") is not None  # a failed fetch keeps the keys
    assert cache.status["last_error"] == ("https://issuer.test/certs answered HTTP 500" if failing else None)


@pytest.mark.parametrize(
    "answer",
    [
        FetchError("https://issuer.test/certs answered HTTP 503"),
        RuntimeError("connection reset"),
        b"<html>",
        {"nokeys": []},
        {"keys": []},
        {"keys": [{"kty": "oct", "kid": "h", "k": "c2VjcmV0"}]},
    ],
    ids=["http-error", "exception", "not-json", "no-keys-list", "empty", "only-unusable-keys"],
)
async def test_a_failed_refresh_keeps_the_previous_keys(keys: list[SigningKey], answer: Any) -> None:
    source, clock = Source(keys[0]), Clock()
    cache = new_cache(source, clock)
    assert await cache.refresh()
    source.answer = answer
    clock.now += 10_000  # far past max_age: stale keys still beat no keys

    assert not await cache.refresh()

    key = cache.get("k0")
    assert key is not None
    assert jwt.decode(token(keys[0]), key, algorithms=[key.algorithm_name])["sub"] == "alice"
    status = cache.status
    assert status["keys"] == 1
    assert status["last_success_age"] == 10_000
    assert status["last_error"]


async def test_start_survives_an_issuer_that_is_down(keys: list[SigningKey]) -> None:
    source, clock = Source(keys[0]), Clock()
    source.answer = FetchError("https://issuer.test/certs answered HTTP 500")
    cache = new_cache(source, clock)
    await cache.start()
    try:
        assert cache.status == {
            "issuer": "https://issuer.test",
            "keys": 0,
            "last_success_age": None,
            "last_error": "https://issuer.test/certs answered HTTP 500",
        }
    finally:
        await cache.close()


class Sleeps:
    """The cache's sleep: records each delay asked for and returns when the test says so."""

    def __init__(self) -> None:
        self.delays: asyncio.Queue[float] = asyncio.Queue()
        self.wake: asyncio.Queue[None] = asyncio.Queue()

    async def __call__(self, delay: float) -> None:
        await self.delays.put(delay)
        await self.wake.get()


async def test_background_refresh_before_expiry_and_retry_after_errors(keys: list[SigningKey]) -> None:
    source, clock, sleeps = Source(keys[0]), Clock(), Sleeps()
    cache = new_cache(source, clock, max_age=300.0, refresh_ahead=30.0, error_retry=5.0, sleep=sleeps)
    await cache.start()
    try:
        assert await sleeps.delays.get() == 270.0
        source.publish(keys[1].public_jwk())  # the issuer rotated
        source.answer = FetchError("https://issuer.test/certs did not answer within 5 s")
        clock.now += 270.0
        await sleeps.wake.put(None)
        assert await sleeps.delays.get() == 5.0  # failed: retry soon, keys kept
        assert source.fetches == 2
        assert cache.get("k0") is not None

        source.publish(keys[1].public_jwk())
        clock.now += 5.0
        await sleeps.wake.put(None)
        assert await sleeps.delays.get() == 270.0
        assert source.fetches == 3
        assert cache.get("k1") is not None
        assert cache.get("k0") is None  # a key the issuer stopped publishing is gone
        assert cache.status["last_error"] is None
    finally:
        await cache.close()


async def test_rotation_a_new_kid_is_picked_up_by_resolve(keys: list[SigningKey]) -> None:
    source, clock = Source(keys[0]), Clock()
    cache = new_cache(source, clock)
    await cache.refresh()
    source.publish(keys[0].public_jwk(), keys[1].public_jwk())

    key = cache.get("k1") or await cache.resolve("k1")

    assert key is not None
    assert jwt.decode(token(keys[1]), key, algorithms=[key.algorithm_name])["sub"] == "alice"
    assert cache.get("k0") is not None
    assert json.loads(cache.jwks_json())["keys"] == [keys[0].public_jwk(), keys[1].public_jwk()]


def rsa_jwk(kid: str, bits: int = 2048, **members: Any) -> dict[str, Any]:
    jwk = RSAAlgorithm.to_jwk(rsa.generate_private_key(public_exponent=65537, key_size=bits).public_key(), as_dict=True)
    assert isinstance(jwk, dict)
    return {**jwk, "kid": kid, **members}


async def test_unusable_keys_are_dropped_and_logged_once(
    keys: list[SigningKey], caplog: pytest.LogCaptureFixture
) -> None:
    good = keys[0].public_jwk()
    no_alg = {name: value for name, value in keys[1].public_jwk().items() if name != "alg"}
    ec_key = ECAlgorithm.to_jwk(ec.generate_private_key(ec.SECP256R1()).public_key(), as_dict=True)
    assert isinstance(ec_key, dict)
    private = RSAAlgorithm.to_jwk(keys[2].private_key, as_dict=True)
    assert isinstance(private, dict)
    published: list[Any] = [
        good,
        no_alg,  # accepted: exactly one algorithm is pinned
        {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0", "alg": "HS256"},
        {**keys[2].public_jwk(), "kid": "enc", "use": "enc"},
        {**keys[2].public_jwk(), "kid": "hs", "alg": "HS256"},
        {**keys[2].public_jwk(), "kid": "rs512", "alg": "RS512"},
        {**keys[2].public_jwk(), "kid": "ops", "key_ops": ["encrypt"]},
        {**private, "kid": "private", "alg": "RS256"},
        {**ec_key, "kid": "ec-as-rsa", "alg": "RS256"},
        {"kty": "RSA", "kid": "garbage", "n": "!!", "e": "AQAB", "alg": "RS256"},
        rsa_jwk("small", bits=1024, alg="RS256"),
        {**keys[2].public_jwk(), "kid": None},
        "not-an-object",
        {**keys[2].public_jwk(), "kid": "k0"},  # duplicate kid: the first one stays
    ]
    source, clock = Source(), Clock()
    source.publish(*published)
    cache = new_cache(source, clock)
    with caplog.at_level(logging.WARNING, logger="common.auth.jwks"):
        assert await cache.refresh()
        assert await cache.refresh()

    assert cache.status["keys"] == 2
    assert [cache.get(kid) is not None for kid in ("k0", "k1")] == [True, True]
    kept = cache.get("k1")
    assert kept is not None
    assert kept.algorithm_name == "RS256"
    k0 = cache.get("k0")
    assert k0 is not None
    assert jwt.decode(token(keys[0]), k0, algorithms=["RS256"])["sub"] == "alice"
    messages = [record.getMessage() for record in caplog.records]
    assert len(messages) == len(published) - 2  # one line per dropped key, not one per refresh
    for expected in (
        "'hmac' dropped: symmetric key",
        "'enc' dropped: use 'enc'",
        "'hs' dropped: alg 'HS256' not pinned",
        "'rs512' dropped: alg 'RS512' not pinned",
        "'ops' dropped: key_ops without 'verify'",
        "'private' dropped: private key material",
        "'ec-as-rsa' dropped: unusable",
        "'garbage' dropped: unusable",
        "'small' dropped: RSA key of 1024 bits",
        "None dropped: no kid",
        "None dropped: not a JSON object",
        "'k0' dropped: duplicate kid",
    ):
        assert any(expected in message for message in messages), (expected, messages)


async def test_without_alg_a_key_needs_a_single_pinned_algorithm(keys: list[SigningKey]) -> None:
    no_alg = {name: value for name, value in keys[0].public_jwk().items() if name != "alg"}
    source = Source()
    source.publish(no_alg, keys[1].public_jwk(alg="PS256"))
    cache = JwksCache(source, issuer="https://issuer.test", algorithms=["RS256", "PS256"], clock=Clock())
    await cache.refresh()
    assert cache.get("k0") is None
    ps = cache.get("k1")
    assert ps is not None
    assert ps.algorithm_name == "PS256"


async def test_key_count_is_bounded(keys: list[SigningKey]) -> None:
    source = Source()
    source.publish(*({**keys[0].public_jwk(), "kid": f"k-{i}"} for i in range(40)))
    cache = new_cache(source, Clock(), max_keys=32)
    await cache.refresh()
    assert cache.status["keys"] == 32
    assert cache.get("k-31") is not None
    assert cache.get("k-32") is None


@pytest.mark.parametrize("algorithms", [["HS256"], ["none"], ["RS256", "HS512"], []])
def test_only_asymmetric_algorithms_can_be_pinned(algorithms: list[str]) -> None:
    with pytest.raises(ValueError, match="algorithm"):
        JwksCache(Source(), issuer="https://issuer.test", algorithms=algorithms)


# -- http_fetcher against a real HTTP server ----------------------------------------------------------


async def test_http_fetcher_reads_the_jwks_of_a_real_issuer(keycloak_issuer: OidcIssuer) -> None:
    async with httpx.AsyncClient() as client:
        cache = JwksCache(
            http_fetcher(client, keycloak_issuer.jwks_uri), issuer=keycloak_issuer.issuer, algorithms=["RS256"]
        )
        await cache.start()
        try:
            key = cache.get(keycloak_issuer.signing_key.kid)
            assert key is not None
            claims = jwt.decode(keycloak_issuer.mint(), key, algorithms=["RS256"], audience="upf-api")
            assert claims["iss"] == keycloak_issuer.issuer

            keycloak_issuer.jwks_mode = "error"
            assert not await cache.refresh()
            assert cache.get(keycloak_issuer.signing_key.kid) is not None
            assert cache.status["last_error"] == f"{keycloak_issuer.jwks_uri} answered HTTP 500"

            keycloak_issuer.jwks_mode = "ok"
            rotated = keycloak_issuer.rotate(keep_old=False)
            assert await cache.resolve(rotated.kid) is not None
            assert keycloak_issuer.jwks_fetches == 3
        finally:
            await cache.close()


@pytest.mark.parametrize(
    ("mode", "error"),
    [
        ("error", "answered HTTP 500"),
        ("not_json", "did not answer JSON"),
        ("huge", "sent 10[0-9]+ bytes, more than the 1048576 bytes allowed"),
        ("huge_stream", "sent more than the 1048576 bytes allowed"),
        ("hang", "did not answer within 0.3 s"),
    ],
)
async def test_http_fetcher_errors(keycloak_issuer: OidcIssuer, mode: Any, error: str) -> None:
    keycloak_issuer.jwks_mode = mode
    async with httpx.AsyncClient() as client:
        fetch = http_fetcher(client, keycloak_issuer.jwks_uri, timeout=0.3)
        with pytest.raises(FetchError, match=error):
            await fetch()


async def test_http_fetcher_refuses_an_unreachable_server_and_non_http_urls() -> None:
    async with httpx.AsyncClient() as client:
        with pytest.raises(FetchError, match="could not be fetched: ConnectError"):
            await http_fetcher(client, "http://127.0.0.1:1/certs")()
        for url in ("file:///etc/passwd", "ftp://issuer.test/certs", "https:///certs", "certs"):
            with pytest.raises(ValueError, match="must be an http:// or https:// URL"):
                http_fetcher(client, url)
