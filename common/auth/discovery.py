"""OpenID Connect discovery: an issuer's endpoints from <issuer>/.well-known/openid-configuration.

The document must name exactly the issuer it was fetched for (OpenID Connect Discovery 1.0, 4.3):
a document that claims another issuer is refused, since tokens would then be checked against keys
the configured issuer never vouched for.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx

from common.auth.jwks import FetchError, fetch_json_object, require_http_url

__all__ = ["DiscoveryError", "OidcConfiguration", "discover", "discovery_url"]

_OPTIONAL_ENDPOINTS = ("token_endpoint", "userinfo_endpoint", "end_session_endpoint", "revocation_endpoint")


class DiscoveryError(Exception):
    """The issuer's discovery document could not be fetched or is not acceptable; the message says why."""


@dataclass(frozen=True, slots=True)
class OidcConfiguration:
    issuer: str
    jwks_uri: str
    token_endpoint: str | None = None
    userinfo_endpoint: str | None = None
    end_session_endpoint: str | None = None
    revocation_endpoint: str | None = None


def discovery_url(issuer: str) -> str:
    """Where the issuer's document is: a trailing "/" of the issuer is dropped before the well-known path."""
    try:
        require_http_url(issuer, "The issuer")
    except ValueError as exc:
        raise DiscoveryError(str(exc)) from None
    parts = urlsplit(issuer)
    if parts.query or parts.fragment:
        raise DiscoveryError(f"The issuer must have no query or fragment, not {issuer!r}")
    return issuer.rstrip("/") + "/.well-known/openid-configuration"


async def discover(client: httpx.AsyncClient, issuer: str, *, timeout: float = 5.0) -> OidcConfiguration:
    url = discovery_url(issuer)
    try:
        _body, document = await fetch_json_object(client, url, timeout)
    except FetchError as exc:
        raise DiscoveryError(f"discovery of {issuer} failed: {exc}") from None
    claimed = document.get("issuer")
    if claimed != issuer:
        raise DiscoveryError(f"discovery of {issuer} failed: {url} names the issuer {claimed!r}, not {issuer!r}")
    jwks_uri = _endpoint(document, "jwks_uri", issuer)
    if jwks_uri is None:
        raise DiscoveryError(f"discovery of {issuer} failed: {url} has no jwks_uri")
    endpoints = {name: _endpoint(document, name, issuer) for name in _OPTIONAL_ENDPOINTS}
    return OidcConfiguration(issuer=issuer, jwks_uri=jwks_uri, **endpoints)


def _endpoint(document: dict[str, Any], name: str, issuer: str) -> str | None:
    value = document.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise DiscoveryError(f"discovery of {issuer} failed: {name} is not a string")
    try:
        require_http_url(value, name)
    except ValueError as exc:
        raise DiscoveryError(f"discovery of {issuer} failed: {exc}") from None
    return value
