"""ValidateToken refuses every token that is not ours, intact, current and unrevoked; never an error."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import AsyncIterator
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from upf.auth.v1 import auth_pb2 as pb

from tests.plugins.auth.harness import Auth, serve_auth


@pytest.fixture
async def auth() -> AsyncIterator[Auth]:
    async with serve_auth() as running:
        yield running


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


async def signed(auth: Auth, changes: dict[str, Any], *, drop: tuple[str, ...] = ()) -> str:
    """A token signed with the provider's own current key, with changed or missing claims."""
    tokens = await auth.login()
    claims = {**await auth.claims(tokens.access_token), **changes}
    for name in drop:
        del claims[name]
    key = await auth.provider.keys.signing_key()
    return jwt.encode(claims, key.private, algorithm=key.alg, headers={"kid": key.kid})


async def reason(auth: Auth, token: str) -> str:
    validation = await auth.validate(token)
    assert not validation.valid
    assert validation.user_id == ""
    assert not validation.roles
    return validation.reason


async def test_a_tampered_payload_is_refused(auth: Auth) -> None:
    header, payload, signature = (await auth.login()).access_token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["roles"] = ["admin"]
    claims["permissions"] = ["*"]
    forged = ".".join([header, b64(json.dumps(claims).encode()), signature])
    assert await reason(auth, forged) == "the token's signature does not verify"


async def test_expired_and_not_yet_valid_tokens_are_refused_with_leeway(auth: Auth) -> None:
    tokens = await auth.login()
    auth.clock.advance(60 + 4)  # exp passed 4 s ago: within the 5 s leeway
    assert (await auth.validate(tokens.access_token)).valid
    auth.clock.advance(1)
    assert await reason(auth, tokens.access_token) == "token expired"

    auth.clock.advance(-65)
    future = await signed(auth, {"nbf": int(auth.clock.now) + 6, "iat": int(auth.clock.now)})
    assert await reason(auth, future) == "token not yet valid"
    issued_later = await signed(auth, {"iat": int(auth.clock.now) + 6})
    assert await reason(auth, issued_later) == "token not yet valid"
    soon = await signed(auth, {"nbf": int(auth.clock.now) + 5})
    assert (await auth.validate(soon)).valid


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"aud": "someone-else"}, "the token is not meant for this audience"),
        ({"aud": ["someone-else", "another"]}, "the token is not meant for this audience"),
        ({"iss": "http://evil.test"}, "the token's issuer is not trusted"),
        ({"exp": "tomorrow"}, "claim exp is not an integer"),
        ({"roles": "admin"}, "roles and permissions must be lists of strings"),
        ({"sid": 7}, "claim sid is not a string"),
    ],
)
async def test_wrong_claims_are_refused(auth: Auth, changes: dict[str, Any], expected: str) -> None:
    assert await reason(auth, await signed(auth, changes)) == expected


@pytest.mark.parametrize("claim", ["aud", "exp", "sub", "sid", "jti", "iss"])
async def test_missing_claims_are_refused(auth: Auth, claim: str) -> None:
    assert await reason(auth, await signed(auth, {}, drop=(claim,))) == f"the token has no {claim} claim"


async def test_alg_none_is_refused(auth: Auth) -> None:
    claims = await auth.claims((await auth.login()).access_token)
    kid = (await auth.provider.keys.signing_key()).kid
    unsigned = jwt.encode(claims, None, algorithm="none", headers={"kid": kid})  # type: ignore[arg-type]
    assert await reason(auth, unsigned) == "algorithm not allowed"
    assert await reason(auth, unsigned.rsplit(".", 1)[0] + ".") == "algorithm not allowed"


async def test_hmac_with_the_public_key_as_secret_is_refused(auth: Auth) -> None:
    """The HS/RS confusion: an attacker signs with HS256 using the published public key as the secret."""
    tokens = await auth.login()
    claims = await auth.claims(tokens.access_token)
    key = await auth.provider.keys.signing_key()
    public_pem = key.public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    header = b64(json.dumps({"alg": "HS256", "kid": key.kid, "typ": "JWT"}).encode())
    body = b64(json.dumps(claims).encode())
    for secret in (public_pem, json.dumps(key.jwk).encode()):
        mac = hmac.new(secret, f"{header}.{body}".encode(), hashlib.sha256).digest()
        assert await reason(auth, f"{header}.{body}.{b64(mac)}") == "algorithm not allowed"


async def test_a_key_that_is_not_ours_is_refused(auth: Auth) -> None:
    claims = await auth.claims((await auth.login()).access_token)
    stranger = ed25519.Ed25519PrivateKey.generate()
    assert await reason(auth, jwt.encode(claims, stranger, algorithm="EdDSA", headers={"kid": "unknown"})) == (
        "unknown signing key"
    )
    # A stranger's key with our kid: the signature does not verify.
    kid = (await auth.provider.keys.signing_key()).kid
    assert (
        await reason(auth, jwt.encode(claims, stranger, algorithm="EdDSA", headers={"kid": kid}))
        == "the token's signature does not verify"
    )
    assert await reason(auth, jwt.encode(claims, stranger, algorithm="EdDSA")) == "no key id"


@pytest.mark.parametrize(
    ("token", "expected"),
    [
        ("", "no token"),
        ("garbage", "the token is malformed"),
        ("a.b.c", "the token is malformed"),
        ("x" * 20000, "token too long"),
    ],
)
async def test_garbage_is_refused_not_an_error(auth: Auth, token: str, expected: str) -> None:
    assert await reason(auth, token) == expected


async def test_a_signed_payload_that_is_not_a_json_object_is_malformed(auth: Auth) -> None:
    # Header, key and signature are all ours: only pyjwt's reading of the claims fails.
    key = await auth.provider.keys.signing_key()
    token = jwt.PyJWS().encode(b"[]", key.private, algorithm=key.alg, headers={"kid": key.kid})
    assert await reason(auth, token) == "the token is malformed"


async def test_a_revoked_token_is_refused(auth: Auth) -> None:
    tokens = await auth.login()
    claims = await auth.claims(tokens.access_token)
    await auth.revocations.revoke("jti", claims["jti"], claims["exp"] + 5)
    assert await reason(auth, tokens.access_token) == "token revoked"
    assert (await auth.validate((await auth.login()).access_token)).valid


async def test_jwks_holds_only_public_parts(auth: Auth) -> None:
    reply = await auth.stub.GetJwks(pb.GetJwksRequest())
    document = json.loads(reply.jwks_json)
    [key] = document["keys"]
    assert set(key) == {"kty", "crv", "x", "kid", "alg", "use"}
    assert (key["kty"], key["crv"], key["alg"], key["use"]) == ("OKP", "Ed25519", "EdDSA", "sig")
    assert key["kid"] == (await auth.provider.keys.signing_key()).kid
