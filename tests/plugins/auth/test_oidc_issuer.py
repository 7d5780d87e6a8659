"""The local OIDC issuer the auth tests use (tests/support/oidc_issuer.py) behaves like the real ones."""

from __future__ import annotations

import httpx
import jwt
import pytest

from tests.support.oidc_issuer import OidcIssuer, auth0_issuer, keycloak_issuer, tamper

__all__ = ["auth0_issuer", "keycloak_issuer"]


def verify(issuer: OidcIssuer, token: str) -> dict[str, object]:
    key = jwt.PyJWK(issuer.signing_key.public_jwk())
    claims: dict[str, object] = jwt.decode(
        token, key, algorithms=["RS256"], audience=issuer.audience, issuer=issuer.issuer
    )
    return claims


def test_keycloak_password_refresh_userinfo_and_logout(keycloak_issuer: OidcIssuer) -> None:
    client = (keycloak_issuer.client_id, keycloak_issuer.client_secret)
    with httpx.Client() as http:
        answer = http.post(
            keycloak_issuer.token_endpoint,
            data={"grant_type": "password", "username": "alice", "password": "alice-password"},
            auth=client,
        )
        assert answer.status_code == 200, answer.text
        tokens = answer.json()
        claims = verify(keycloak_issuer, tokens["access_token"])
        assert claims["realm_access"] == {"roles": ["user", "offline_access"]}
        assert claims["resource_access"]["upf-gateway"] == {"roles": ["editor"]}  # type: ignore[index]
        assert claims["typ"] == "Bearer"

        info = http.get(
            keycloak_issuer.userinfo_endpoint, headers={"Authorization": f"Bearer {tokens['access_token']}"}
        )
        assert info.json()["preferred_username"] == "alice"

        refreshed = http.post(
            keycloak_issuer.token_endpoint,
            data={"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]},
            auth=client,
        )
        assert verify(keycloak_issuer, refreshed.json()["access_token"])["sid"] == claims["sid"]

        logout = http.post(
            keycloak_issuer.end_session_endpoint,
            data={"client_id": client[0], "client_secret": client[1], "refresh_token": tokens["refresh_token"]},
        )
        assert logout.status_code == 204
        assert claims["sid"] in keycloak_issuer.ended_sessions
        again = http.post(
            keycloak_issuer.token_endpoint,
            data={"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]},
            auth=client,
        )
        assert again.json()["error"] == "invalid_grant"
        info = http.get(
            keycloak_issuer.userinfo_endpoint, headers={"Authorization": f"Bearer {tokens['access_token']}"}
        )
        assert info.status_code == 401


def test_token_endpoint_refusals(keycloak_issuer: OidcIssuer) -> None:
    form = {"grant_type": "password", "username": "alice", "password": "wrong", "client_id": "upf-gateway"}
    with httpx.Client() as http:
        wrong_password = http.post(keycloak_issuer.token_endpoint, data={**form, "client_secret": "gateway-secret"})
        assert (wrong_password.status_code, wrong_password.json()["error"]) == (401, "invalid_grant")
        wrong_client = http.post(keycloak_issuer.token_endpoint, data={**form, "client_secret": "nope"})
        assert (wrong_client.status_code, wrong_client.json()["error"]) == (401, "invalid_client")
        keycloak_issuer.direct_access_grants = False
        refused = http.post(
            keycloak_issuer.token_endpoint,
            data={**form, "password": "alice-password", "client_secret": "gateway-secret"},
        )
        assert (refused.status_code, refused.json()["error"]) == (400, "unauthorized_client")


def test_auth0_tokens_and_opaque_refresh_rotation(auth0_issuer: OidcIssuer) -> None:
    client = (auth0_issuer.client_id, auth0_issuer.client_secret)
    with httpx.Client() as http:
        tokens = http.post(
            auth0_issuer.token_endpoint,
            data={"grant_type": "password", "username": "alice", "password": "alice-password"},
            auth=client,
        ).json()
        claims = verify(auth0_issuer, tokens["access_token"])
        assert claims["iss"] == f"{auth0_issuer.url}/"
        assert claims["permissions"] == ["orders:read"]
        assert claims["https://upf/roles"] == ["user"]
        assert "." not in tokens["refresh_token"]
        first = http.post(
            auth0_issuer.token_endpoint,
            data={"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]},
            auth=client,
        )
        assert first.status_code == 200
        reused = http.post(
            auth0_issuer.token_endpoint,
            data={"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]},
            auth=client,
        )
        assert reused.status_code == 400


def test_minted_attacks_are_what_they_claim(keycloak_issuer: OidcIssuer) -> None:
    none = keycloak_issuer.mint(alg="none", key=None)
    assert none.endswith(".")
    assert jwt.get_unverified_header(none)["alg"] == "none"
    confused = keycloak_issuer.mint(alg="HS256", key=keycloak_issuer.public_pem())
    assert jwt.get_unverified_header(confused) == {"alg": "HS256", "typ": "JWT", "kid": keycloak_issuer.signing_key.kid}
    with pytest.raises(jwt.InvalidSignatureError):
        verify(keycloak_issuer, tamper(keycloak_issuer.mint(), {"sub": "admin"}))
    with pytest.raises(jwt.ExpiredSignatureError):
        verify(keycloak_issuer, keycloak_issuer.mint({"exp": keycloak_issuer.now() - 60}))
    stranger = keycloak_issuer.new_key()
    assert jwt.get_unverified_header(keycloak_issuer.mint(key=stranger))["kid"] == stranger.kid
    assert stranger.kid not in [jwk["kid"] for jwk in keycloak_issuer.jwks()["keys"]]
    assert "exp" not in jwt.decode(keycloak_issuer.mint({"exp": None}), options={"verify_signature": False})
