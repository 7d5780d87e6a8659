"""Signing keys: RFC 7638 key ids, rotation on an injected clock, the next key published ahead, retired
keys kept until their tokens expire."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from pathlib import Path

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from upf.auth.v1 import auth_pb2 as pb

from common.auth.jwks import JwksCache
from common.auth.revocations import MemoryRevocations
from common.config import ConfigError
from gateway.auth.verify import TokenVerifier, TrustedIssuer
from gateway.errors import Unauthenticated
from plugins.auth.keys import generate_key, load_key, thumbprint
from plugins.auth.settings import AuthSettings, load_auth_settings
from plugins.auth.store import PostgresAuthStore, SqliteAuthStore
from plugins.auth.store.base import SigningKey, StoreUnavailable
from tests.plugins.auth.conftest import drop_auth_tables
from tests.plugins.auth.harness import Auth, Clock, make_settings, serve_auth


def b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def test_key_ids_are_rfc_7638_thumbprints() -> None:
    # RFC 7638 section 3.1: the RSA key of RFC 7517 appendix A.1.
    n = (
        "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMs"
        "tn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5"
        "hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw"
    )
    public = rsa.RSAPublicNumbers(65537, int.from_bytes(b64decode(n), "big")).public_key()
    assert thumbprint(public) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
    # RFC 8037 appendix A.3: the Ed25519 key of appendix A.2.
    x = b64decode("11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo")
    assert thumbprint(ed25519.Ed25519PublicKey.from_public_bytes(x)) == "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"


@pytest.mark.parametrize(("alg", "kty"), [("EdDSA", "OKP"), ("RS256", "RSA")])
def test_generated_keys_publish_only_their_public_half(alg: str, kty: str) -> None:
    loaded = load_key(generate_key(alg, 100.0))
    assert loaded.kid == thumbprint(loaded.public)
    assert loaded.jwk["kty"] == kty
    assert loaded.jwk["kid"] == loaded.kid
    assert (loaded.jwk["alg"], loaded.jwk["use"]) == (alg, "sig")
    assert not {"d", "p", "q", "dp", "dq", "qi"} & set(loaded.jwk)
    assert jwt.PyJWK(loaded.jwk).algorithm_name == alg


def kids(jwks_json: str) -> list[str]:
    return [key["kid"] for key in json.loads(jwks_json)["keys"]]


async def jwks_kids(auth: Auth) -> list[str]:
    return kids((await auth.stub.GetJwks(pb.GetJwksRequest())).jwks_json)


async def signing_kid(auth: Auth) -> str:
    return str(jwt.get_unverified_header((await auth.login()).access_token)["kid"])


# Keys sign for 100 s; the next one is in the JWKS at least 30 s before it signs, and is stored
# 30 + 10 s ahead (the housekeeping looks every 10 s), so it takes over exactly at the end of the interval.
INTERVAL, AHEAD, HOUSEKEEPING = 100, 30, 10


def key_settings(**custom: object) -> AuthSettings:
    return make_settings(
        jwt={"keyRotationInterval": INTERVAL, "keyPublishAhead": AHEAD},
        custom={"maintenanceInterval": HOUSEKEEPING, **custom},
    )


async def test_each_key_is_in_the_jwks_ahead_and_signs_from_the_end_of_the_previous_interval() -> None:
    clock = Clock(1_900_000_000.0)
    start = clock.now
    published: dict[str, float] = {}  # kid -> when GetJwks first listed it
    signing: dict[str, float] = {}  # kid -> when it first signed a token
    async with serve_auth(key_settings(), clock=clock) as auth:
        for second in range(3 * INTERVAL + 1):
            clock.now = start + second
            if second % HOUSEKEEPING == 0:
                await auth.provider.maintain()
            for kid in await jwks_kids(auth):
                published.setdefault(kid, clock.now)
            signing.setdefault(await signing_kid(auth), clock.now)
    first, *successors = sorted(signing, key=signing.__getitem__)
    assert [signing[kid] - start for kid in [first, *successors]] == [0, INTERVAL, 2 * INTERVAL, 3 * INTERVAL]
    for kid in successors:
        assert signing[kid] - published[kid] >= AHEAD, kid
    assert published[first] == start  # the very first key can only sign at once


async def first_token_after_rotation_at_a_gateway(settings: AuthSettings) -> tuple[str, int]:
    """What a gateway says of the first token signed after a rotation, when it fetched the JWKS at its
    last scheduled refresh before the rotation and an attacker's random kid has just spent its
    unknown-kid refetch: the user's email, or the refusal; and how many JWKS fetches the token caused."""
    # The gateway's verifier reads pyjwt's clock (exp, iat): the rotation happens now.
    clock = Clock(float(int(time.time())) - INTERVAL)
    async with serve_auth(settings, clock=clock) as auth:
        fetches = 0

        async def fetch() -> bytes:
            nonlocal fetches
            fetches += 1
            return (await auth.stub.GetJwks(pb.GetJwksRequest())).jwks_json.encode()

        issuer = auth.settings.jwt.issuer
        cache = JwksCache(fetch, issuer=issuer, algorithms=["EdDSA"], clock=clock, unknown_kid_cooldown=30)
        verifier = TokenVerifier(
            [TrustedIssuer(issuer, (auth.settings.jwt.audience,), frozenset({"EdDSA"}), cache)],
            revocations=MemoryRevocations(),
        )
        first_kid = await signing_kid(auth)
        clock.advance(INTERVAL - AHEAD)
        await auth.provider.maintain()
        assert await cache.refresh()
        clock.advance(AHEAD)  # the old key's interval is over
        assert await cache.resolve("an-attackers-random-kid") is None  # spends the cooldown
        before = fetches
        token = (await auth.login()).access_token
        assert jwt.get_unverified_header(token)["kid"] != first_kid
        try:
            answer = (await verifier.verify(token)).email
        except Unauthenticated as refused:
            answer = refused.message
        return answer, fetches - before


async def test_a_token_signed_right_after_a_rotation_verifies_with_the_jwks_fetched_before() -> None:
    assert await first_token_after_rotation_at_a_gateway(key_settings()) == ("alice@example.org", 0)
    # Without publication ahead (the next key stored only when it starts signing) the same gateway refuses it.
    unpublished = make_settings(
        jwt={"keyRotationInterval": INTERVAL, "keyPublishAhead": 0}, custom={"maintenanceInterval": 0.001}
    )
    assert await first_token_after_rotation_at_a_gateway(unpublished) == (
        "invalid token: the token's signing key is unknown",
        0,
    )


async def test_rotation_keeps_the_old_key_until_its_tokens_have_expired() -> None:
    # Access tokens live 60 s; leeway 5 s.
    clock = Clock(1_900_000_000.0)
    async with serve_auth(key_settings(), clock=clock) as auth:
        [first_kid] = await jwks_kids(auth)
        clock.advance(INTERVAL - AHEAD - HOUSEKEEPING)
        await auth.provider.maintain()
        [signing, second_kid] = await jwks_kids(auth)  # the signing key first, then the next one
        assert signing == first_kid
        clock.advance(AHEAD + HOUSEKEEPING - 1)
        old_token = (await auth.login()).access_token  # exp = start + 99 + 60
        assert jwt.get_unverified_header(old_token)["kid"] == first_kid

        clock.advance(1)  # +100: the next key signs, without anything written at this moment
        new_token = (await auth.login()).access_token
        assert jwt.get_unverified_header(new_token)["kid"] == second_kid
        assert await jwks_kids(auth) == [second_kid, first_kid]
        assert (await auth.validate(old_token)).valid
        assert (await auth.validate(new_token)).valid

        clock.advance(60 + 5 - 1)  # first retired at +100: kept until +100 + 60 + 5
        await auth.provider.maintain()  # (and the third key is published)
        [_, third_kid, _] = await jwks_kids(auth)
        assert await jwks_kids(auth) == [second_kid, third_kid, first_kid]
        clock.advance(1)
        await auth.provider.maintain()
        assert await jwks_kids(auth) == [second_kid, third_kid]
        assert (await auth.validate(old_token)).reason == "unknown signing key"
        assert [k.kid for k in await auth.provider.store.signing_keys()] == [third_kid, second_kid]


async def test_the_next_key_is_scheduled_when_signing_without_housekeeping() -> None:
    clock = Clock(1_900_000_000.0)
    async with serve_auth(key_settings(), clock=clock) as auth:
        first = await signing_kid(auth)
        clock.advance(INTERVAL - AHEAD - HOUSEKEEPING)
        assert await signing_kid(auth) == first  # and the next key is published
        [_, second] = await jwks_kids(auth)
        clock.advance(AHEAD + HOUSEKEEPING)
        assert await signing_kid(auth) == second
        assert await jwks_kids(auth) == [second, first]


async def test_after_a_stop_the_old_key_signs_until_its_successor_has_been_published_long_enough(
    tmp_path: Path,
) -> None:
    settings = key_settings(sqlitePath=str(tmp_path / "auth.db"))
    clock = Clock(1_900_000_000.0)
    async with serve_auth(settings, clock=clock) as auth:
        first = await signing_kid(auth)
    clock.advance(10 * INTERVAL)  # stopped long past the end of the key's interval
    async with serve_auth(settings, clock=clock, users=False) as auth:
        [signing, second] = await jwks_kids(auth)
        assert signing == first
        clock.advance(AHEAD - 1)
        assert await signing_kid(auth) == first
        clock.advance(1)
        assert await signing_kid(auth) == second


async def test_the_next_key_survives_a_restart(tmp_path: Path) -> None:
    settings = key_settings(sqlitePath=str(tmp_path / "auth.db"))
    clock = Clock(1_900_000_000.0)
    async with serve_auth(settings, clock=clock) as auth:
        clock.advance(INTERVAL - AHEAD - HOUSEKEEPING)
        await auth.provider.maintain()
        before = await jwks_kids(auth)
        assert len(before) == 2
    clock.advance(1)
    async with serve_auth(settings, clock=clock, users=False) as auth:
        assert await jwks_kids(auth) == before  # read from the store: gateways already hold the next key
        clock.advance(AHEAD + HOUSEKEEPING - 1)
        assert await signing_kid(auth) == before[1]


async def test_rs256_tokens_and_a_change_of_algorithm(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = str(tmp_path / "auth.db")
    eddsa = make_settings(custom={"sqlitePath": path})
    async with serve_auth(eddsa) as auth:
        eddsa_token = (await auth.login()).access_token
    rs256 = make_settings(custom={"sqlitePath": path}, jwt={"algorithm": "RS256"})
    async with serve_auth(rs256, users=False) as auth:
        token = (await auth.login()).access_token
        assert jwt.get_unverified_header(token)["alg"] == "RS256"
        claims = await auth.claims(token)  # verified with the RS256 JWK from GetJwks
        assert claims["email"] == "alice@example.org"
        keys = json.loads((await auth.stub.GetJwks(pb.GetJwksRequest())).jwks_json)["keys"]
        assert [(k["kty"], k["alg"]) for k in keys] == [("RSA", "RS256"), ("OKP", "EdDSA")]
        assert set(keys[0]) == {"kty", "n", "e", "kid", "alg", "use"}
        # The EdDSA key is retired, not gone: its tokens still verify.
        assert (await auth.validate(eddsa_token)).valid


async def test_replicas_sharing_postgres_agree_on_one_next_key(postgres_url: str) -> None:
    clock = Clock(1_900_000_000.0)
    settings = key_settings()
    try:
        async with (
            serve_auth(settings, store=PostgresAuthStore(postgres_url), clock=clock) as one,
            serve_auth(settings, store=PostgresAuthStore(postgres_url), clock=clock, users=False) as two,
        ):
            [first] = await jwks_kids(one)
            assert await jwks_kids(two) == [first]
            clock.advance(INTERVAL - AHEAD - HOUSEKEEPING)
            await asyncio.gather(one.provider.maintain(), two.provider.maintain())
            [_, second] = await jwks_kids(one)
            assert await jwks_kids(two) == [first, second]
            assert len(await one.provider.store.signing_keys()) == 2
            assert await signing_kid(one) == await signing_kid(two) == first

            clock.advance(AHEAD + HOUSEKEEPING)
            session_one = await one.login()
            token_one = session_one.access_token
            token_two = (await two.login()).access_token
            assert jwt.get_unverified_header(token_one)["kid"] == second
            assert jwt.get_unverified_header(token_two)["kid"] == second
            assert await jwks_kids(one) == await jwks_kids(two) == [second, first]
            # A token from one replica validates on the other (and a logout on one is stored for both).
            assert (await two.validate(token_one)).valid
            await two.stub.Logout(pb.LogoutRequest(token=token_one))
            with pytest.raises(grpc.aio.AioRpcError, match="the session has ended"):
                await one.stub.RefreshToken(pb.RefreshTokenRequest(refresh_token=session_one.refresh_token))
    finally:
        await drop_auth_tables(postgres_url)


async def test_the_sqlite_file_keeps_keys_and_users_across_restarts(tmp_path) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings(custom={"sqlitePath": str(tmp_path / "auth.db")})
    async with serve_auth(settings, store=SqliteAuthStore(settings.custom.sqlite_path)) as auth:
        token = (await auth.login()).access_token
        kid = await jwks_kids(auth)
    async with serve_auth(settings, users=False) as auth:
        assert await jwks_kids(auth) == kid
        assert (await auth.validate(token)).valid
        assert (await auth.login()).access_token


def test_the_publication_lead_must_be_shorter_than_the_rotation_interval() -> None:
    assert load_auth_settings(environ={}).jwt.key_publish_ahead == 600
    with pytest.raises(ConfigError) as refused:
        load_auth_settings(environ={"UPF_JWT__KEY_ROTATION_INTERVAL": "300"})
    assert "jwt: keyPublishAhead (600 s) must be less than keyRotationInterval (300 s)" in str(refused.value)
    with pytest.raises(ConfigError) as refused:
        load_auth_settings(environ={"UPF_JWT__KEY_PUBLISH_AHEAD": "-1"})
    assert "jwt.keyPublishAhead: Input should be greater than or equal to 0" in str(refused.value)


async def test_a_passphrase_encrypts_the_stored_keys_and_is_needed_to_start(tmp_path: Path) -> None:
    path = str(tmp_path / "auth.db")
    plain = make_settings(custom={"sqlitePath": path})
    async with serve_auth(plain) as auth:
        old_token = (await auth.login()).access_token  # a key stored before the passphrase was set
    secret = make_settings(custom={"sqlitePath": path, "keyPassphrase": "correct horse battery"})
    clock = Clock()
    async with serve_auth(secret, users=False, clock=clock) as auth:
        assert (await auth.validate(old_token)).valid  # unencrypted keys still load
        clock.advance(secret.jwt.key_rotation_interval + 1)
        await auth.provider.maintain()
        token = (await auth.login()).access_token
        assert (await auth.validate(token)).valid
    pems = [key.private_pem for key in await _stored_keys(path)]
    assert any("ENCRYPTED PRIVATE KEY" in pem for pem in pems)  # the key made with the passphrase


async def test_encrypted_keys_without_their_passphrase_stop_the_start(tmp_path: Path) -> None:
    path = str(tmp_path / "auth.db")
    async with serve_auth(make_settings(custom={"sqlitePath": path, "keyPassphrase": "correct horse battery"})):
        pass
    [key] = await _stored_keys(path)
    assert "ENCRYPTED PRIVATE KEY" in key.private_pem
    assert "BEGIN PRIVATE KEY" not in key.private_pem
    wrong = make_settings(custom={"sqlitePath": path, "keyPassphrase": "wrong horse battery"})
    with pytest.raises(StoreUnavailable, match=r"wrong custom\.keyPassphrase"):
        async with serve_auth(wrong, users=False):
            pass
    with pytest.raises(StoreUnavailable, match="keyPassphrase is not set"):
        async with serve_auth(make_settings(custom={"sqlitePath": path}), users=False):
            pass
    assert len(await _stored_keys(path)) == 1  # no fresh key was made to hide the problem


async def _stored_keys(path: str) -> list[SigningKey]:
    store = SqliteAuthStore(path)
    await store.start()
    try:
        return list(await store.signing_keys())
    finally:
        await store.close()
