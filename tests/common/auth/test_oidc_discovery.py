"""OIDC discovery (common/auth/discovery.py) against the real local issuer."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from common.auth.discovery import DiscoveryError, OidcConfiguration, discover, discovery_url
from tests.support.oidc_issuer import OidcIssuer, auth0_issuer, keycloak_issuer

__all__ = ["auth0_issuer", "keycloak_issuer"]


async def test_keycloak_discovery(keycloak_issuer: OidcIssuer) -> None:
    async with httpx.AsyncClient() as client:
        config = await discover(client, keycloak_issuer.issuer)
    assert config == OidcConfiguration(
        issuer=keycloak_issuer.issuer,
        jwks_uri=keycloak_issuer.jwks_uri,
        token_endpoint=keycloak_issuer.token_endpoint,
        userinfo_endpoint=keycloak_issuer.userinfo_endpoint,
        end_session_endpoint=keycloak_issuer.end_session_endpoint,
        revocation_endpoint=keycloak_issuer.revocation_endpoint,
    )
    assert config.jwks_uri.endswith("/realms/upf/protocol/openid-connect/certs")


async def test_auth0_discovery_keeps_the_trailing_slash_of_the_issuer(auth0_issuer: OidcIssuer) -> None:
    assert auth0_issuer.issuer.endswith("/")
    assert discovery_url(auth0_issuer.issuer) == f"{auth0_issuer.url}/.well-known/openid-configuration"
    async with httpx.AsyncClient() as client:
        config = await discover(client, auth0_issuer.issuer)
        assert config.issuer == auth0_issuer.issuer
        assert config.jwks_uri == f"{auth0_issuer.url}/.well-known/jwks.json"
        with pytest.raises(DiscoveryError, match=r"names the issuer .*, not"):
            await discover(client, auth0_issuer.issuer.rstrip("/"))  # exact match: no slash is another issuer


async def test_optional_endpoints_may_be_absent(keycloak_issuer: OidcIssuer) -> None:
    keycloak_issuer.discovery_overrides = {
        name: None for name in ("token_endpoint", "userinfo_endpoint", "end_session_endpoint", "revocation_endpoint")
    }
    async with httpx.AsyncClient() as client:
        config = await discover(client, keycloak_issuer.issuer)
    assert config == OidcConfiguration(issuer=keycloak_issuer.issuer, jwks_uri=keycloak_issuer.jwks_uri)


@pytest.mark.parametrize(
    ("overrides", "error"),
    [
        ({"issuer": "http://127.0.0.1:1/realms/upf"}, r"names the issuer 'http://127.0.0.1:1/realms/upf', not"),
        ({"issuer": None}, "names the issuer None, not"),
        ({"jwks_uri": None}, "has no jwks_uri"),
        ({"jwks_uri": "file:///etc/keys.json"}, "jwks_uri must be an http:// or https:// URL"),
        ({"userinfo_endpoint": ["http://x"]}, "userinfo_endpoint is not a string"),
    ],
)
async def test_unacceptable_documents(keycloak_issuer: OidcIssuer, overrides: dict[str, Any], error: str) -> None:
    keycloak_issuer.discovery_overrides = overrides
    async with httpx.AsyncClient() as client:
        with pytest.raises(DiscoveryError, match=f"discovery of {keycloak_issuer.issuer} failed: .*{error}"):
            await discover(client, keycloak_issuer.issuer)


async def test_unreachable_or_wrong_issuers(keycloak_issuer: OidcIssuer) -> None:
    async with httpx.AsyncClient() as client:
        with pytest.raises(DiscoveryError, match="answered HTTP 404"):
            await discover(client, f"{keycloak_issuer.url}/realms/nope")
        with pytest.raises(DiscoveryError, match="could not be fetched: ConnectError"):
            await discover(client, "http://127.0.0.1:1/realms/upf")
        for issuer in ("ftp://issuer.test", "issuer.test", "https://issuer.test/?tenant=1"):
            with pytest.raises(DiscoveryError, match="The issuer must"):
                await discover(client, issuer)
