"""Signing keys: RFC 7638 key ids, rotation on an injected clock, retired keys kept until their tokens expire."""

from __future__ import annotations

import base64
import json

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from upf.auth.v1 import auth_pb2 as pb

from plugins.auth.keys import generate_key, load_key, thumbprint
from plugins.auth.store import PostgresAuthStore, SqliteAuthStore
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


async def test_rotation_keeps_the_old_key_until_its_tokens_have_expired() -> None:
    # Keys sign for 100 s; access tokens live 60 s; leeway 5 s.
    settings = make_settings(jwt={"keyRotationInterval": 100})
    clock = Clock(1_900_000_000.0)
    async with serve_auth(settings, clock=clock) as auth:
        [first_kid] = await jwks_kids(auth)
        clock.advance(90)
        old_token = (await auth.login()).access_token  # exp = start + 150
        assert jwt.get_unverified_header(old_token)["kid"] == first_kid

        clock.advance(10)  # the key is due: retired by the housekeeping, a new one signs
        await auth.provider.maintain()
        new_token = (await auth.login()).access_token
        second_kid = jwt.get_unverified_header(new_token)["kid"]
        assert second_kid != first_kid
        assert await jwks_kids(auth) == [second_kid, first_kid]
        assert (await auth.validate(old_token)).valid
        assert (await auth.validate(new_token)).valid

        clock.advance(60 + 5 - 1)  # retired at +100: kept until +100 + 60 + 5
        await auth.provider.maintain()
        assert await jwks_kids(auth) == [second_kid, first_kid]
        clock.advance(1)
        await auth.provider.maintain()
        assert await jwks_kids(auth) == [second_kid]
        assert (await auth.validate(old_token)).reason == "unknown signing key"
        assert [k.kid for k in await auth.provider.store.signing_keys()] == [second_kid]


async def test_a_due_key_is_rotated_when_signing_without_housekeeping() -> None:
    clock = Clock(1_900_000_000.0)
    async with serve_auth(make_settings(jwt={"keyRotationInterval": 100}), clock=clock) as auth:
        first = jwt.get_unverified_header((await auth.login()).access_token)["kid"]
        clock.advance(100)
        second = jwt.get_unverified_header((await auth.login()).access_token)["kid"]
        assert second != first
        assert await jwks_kids(auth) == [second, first]


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


async def test_replicas_sharing_postgres_agree_on_one_key(postgres_url: str) -> None:
    clock = Clock(1_900_000_000.0)
    settings = make_settings(jwt={"keyRotationInterval": 100})
    try:
        async with (
            serve_auth(settings, store=PostgresAuthStore(postgres_url), clock=clock) as one,
            serve_auth(settings, store=PostgresAuthStore(postgres_url), clock=clock, users=False) as two,
        ):
            assert await jwks_kids(one) == await jwks_kids(two)
            clock.advance(100)
            await one.provider.maintain()
            await two.provider.maintain()
            session_one = await one.login()
            token_one = session_one.access_token
            token_two = (await two.login()).access_token
            assert jwt.get_unverified_header(token_one)["kid"] == jwt.get_unverified_header(token_two)["kid"]
            assert len(await jwks_kids(one)) == 2
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
