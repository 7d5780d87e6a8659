"""Access-token verification: who the caller is, proved by a JWT from an issuer this gateway trusts.

Every step refuses before the next one runs, in this order, so no attacker-chosen value reaches a
step it could mislead:

1. size and shape: three base64url segments, a JSON header and payload;
2. the header's `alg` must be an asymmetric algorithm (never "none", never HS*: a public key used as an
   HMAC secret is the classic confusion) pinned for the token's issuer;
3. the (not yet verified) `iss` only selects which configured issuer's keys to try; an unknown issuer is refused;
4. the key is the issuer's key with the token's `kid`, whose own algorithm must equal the header's:
   a key is never used with another algorithm (pyjwt GHSA-jq35-7prp-9v3f);
5. signature, then exp / nbf / iss / aud with the configured leeway (pyjwt);
6. the identity claims (sub, email, name, roles, permissions) hold no control character (C0, DEL,
   C1, U+2028/2029): a CR LF in `sub` would otherwise forge lines in logs, and reach rate-limit
   keys and the auth plugin;
7. revocation of the token (`jti`) or its session (`sid`).

A verified token is remembered until it expires, so the next request with it costs a dict lookup, a
clock read and the revocation check (every call pays this step: it has to stay in microseconds).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol
from urllib.parse import quote

import jwt

from common.auth.claims import TokenRejected, decode_claims
from gateway.auth.identity import Identity
from gateway.errors import Unauthenticated
from gateway.upstream.headers import encode_header

__all__ = ["ASYMMETRIC", "KeySource", "RevocationCheck", "TokenVerifier", "TrustedIssuer", "identity_headers"]

ASYMMETRIC = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"})
MAX_TOKEN_BYTES = 16 * 1024  # larger than any real access token; parsing stops here


class KeySource(Protocol):
    """One issuer's signing keys (common/auth/jwks.py's JwksCache)."""

    def get(self, kid: str) -> jwt.PyJWK | None: ...

    async def resolve(self, kid: str) -> jwt.PyJWK | None: ...


class RevocationCheck(Protocol):
    def is_revoked(self, jti: str | None, sid: str | None) -> bool: ...


@dataclass(frozen=True)
class TrustedIssuer:
    issuer: str
    audience: tuple[str, ...]
    algorithms: frozenset[str]
    keys: KeySource
    roles_claim: str = "roles"
    permissions_claim: str = "permissions"
    email_claim: str = "email"


class TokenVerifier:
    def __init__(
        self,
        issuers: Sequence[TrustedIssuer],
        *,
        revocations: RevocationCheck,
        leeway: float = 30.0,
        roles: Mapping[str, Sequence[str]] | None = None,
        clock: Callable[[], float] = time.time,
        cache_size: int = 10_000,
    ) -> None:
        for issuer in issuers:
            if not issuer.algorithms <= ASYMMETRIC:
                raise ValueError(f"issuer {issuer.issuer}: only asymmetric algorithms can be pinned")
        self._issuers = {issuer.issuer: issuer for issuer in issuers}
        self.revocations = revocations
        self.leeway = leeway
        self.roles = {role: tuple(permissions) for role, permissions in (roles or {}).items()}
        self.clock = clock
        self.cache_size = cache_size
        self._cache: dict[str, Identity] = {}

    def cached(self, token: str) -> Identity | None:
        """The identity of a token verified before and still valid (expiry, revocation), else None."""
        identity = self._cache.get(token)
        if identity is None:
            return None
        if self.clock() > identity.expires_at + self.leeway:
            del self._cache[token]
            return None
        if self.revocations.is_revoked(identity.token_id, identity.session_id):
            del self._cache[token]
            return None
        return identity

    def still_valid(self, identity: Identity) -> str | None:
        """Why a caller verified earlier may no longer be served (expired, or its session revoked), else None.

        For what outlives one request: an open live-events socket is closed once its caller's is not.
        """
        if self.clock() > identity.expires_at + self.leeway:
            return "the token has expired"
        if self.revocations.is_revoked(identity.token_id, identity.session_id):
            return "the session has ended"
        return None

    async def verify(self, token: str) -> Identity:
        """The token's identity; Unauthenticated (with the reason) for anything short of valid."""
        identity = self.cached(token)
        if identity is not None:
            return identity
        identity = await self._verify(token)
        if self.cache_size:
            if len(self._cache) >= self.cache_size:
                del self._cache[next(iter(self._cache))]  # the oldest entry
            self._cache[token] = identity
        return identity

    async def _verify(self, token: str) -> Identity:
        if len(token) > MAX_TOKEN_BYTES:
            raise _invalid("the token is too large")
        header, payload = _unverified_parts(token)
        algorithm = header.get("alg")
        if algorithm is None:
            raise _invalid("the token names no algorithm (alg)")
        if not isinstance(algorithm, str) or algorithm not in ASYMMETRIC:
            raise _invalid(f"algorithm {algorithm!r} is not accepted")
        claimed_issuer = payload.get("iss")
        issuer = self._issuers.get(claimed_issuer) if isinstance(claimed_issuer, str) else None
        if issuer is None:
            raise _invalid("the token's issuer is not trusted")
        if algorithm not in issuer.algorithms:
            raise _invalid(f"algorithm {algorithm} is not accepted for this issuer")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise _invalid("the token names no signing key (kid)")
        key = issuer.keys.get(kid) or await issuer.keys.resolve(kid)
        if key is None:
            raise _invalid("the token's signing key is unknown")
        if key.algorithm_name != algorithm:
            raise _invalid(f"the signing key is for {key.algorithm_name}, not {algorithm}")
        try:
            claims = decode_claims(
                token,
                key,
                algorithm=algorithm,
                audience=issuer.audience,
                issuer=issuer.issuer,
                leeway=self.leeway,
            )
        except TokenRejected as rejected:
            raise _invalid(rejected.reason) from None
        identity = self._identity(issuer, claims)
        if self.revocations.is_revoked(identity.token_id, identity.session_id):
            raise _invalid("the token has been revoked")
        return identity

    def _identity(self, issuer: TrustedIssuer, claims: Mapping[str, Any]) -> Identity:
        subject = claims["sub"]
        if not isinstance(subject, str) or not subject:
            raise _invalid("the token's subject is empty")
        roles = _strings(_claim(claims, issuer.roles_claim))
        permissions = dict.fromkeys(_strings(_claim(claims, issuer.permissions_claim)))
        for role in roles:
            permissions.update(dict.fromkeys(self.roles.get(role, ())))
        email = _claim(claims, issuer.email_claim)
        name = claims.get("name")
        texts = [subject, *roles, *_strings(_claim(claims, issuer.permissions_claim))]
        texts += [value for value in (email, name) if isinstance(value, str)]
        if any(_CONTROL.search(text) for text in texts):
            raise _invalid("the token's identity claims hold control characters")
        jti, sid = claims.get("jti"), claims.get("sid")
        identity = Identity(
            subject=subject,
            issuer=issuer.issuer,
            email=email if isinstance(email, str) else "",
            roles=tuple(roles),
            permissions=tuple(permissions),
            expires_at=float(claims["exp"]),
            token_id=jti if isinstance(jti, str) else None,
            session_id=sid if isinstance(sid, str) else None,
        )
        block = b"".join(encode_header(name, value) for name, value in identity_headers(identity))
        return replace(identity, metadata=block)


def identity_headers(identity: Identity) -> list[tuple[bytes, bytes]]:
    """The metadata plugins receive: x-upf-user-id, -email, -roles, -permissions.

    Values are printable ASCII as gRPC metadata requires: anything else is percent-encoded (UTF-8).
    Roles and permissions are lists: each item percent-encoded with its commas too (`%2C`), then
    joined with commas, so a role holding a comma stays one role; plugins/sdk/user.py reads them.
    """
    fields = [
        (b"x-upf-user-id", _ascii(identity.subject)),
        (b"x-upf-user-email", _ascii(identity.email)),
        (b"x-upf-user-roles", _ascii_list(identity.roles)),
        (b"x-upf-user-permissions", _ascii_list(identity.permissions)),
    ]
    return [(name, value) for name, value in fields if value]


_PRINTABLE = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) != "%")
_LIST_ITEM = _PRINTABLE.replace(",", "")
# C0, DEL, C1, and the Unicode line and paragraph separators.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def _ascii(value: str) -> bytes:
    return quote(value, safe=_PRINTABLE).encode("ascii")


def _ascii_list(values: Sequence[str]) -> bytes:
    return ",".join(quote(value, safe=_LIST_ITEM) for value in values).encode("ascii")


def _invalid(reason: str) -> Unauthenticated:
    # The reason may quote a header value of the token: only printable ASCII, no quotes, goes into a header.
    safe = "".join(c if " " <= c <= "~" and c not in '\\"' else "?" for c in reason)[:200]
    return Unauthenticated(
        f"invalid token: {reason}",
        headers={"www-authenticate": f'Bearer realm="upf", error="invalid_token", error_description="{safe}"'},
    )


def _unverified_parts(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    parts = token.split(".")
    if len(parts) != 3:
        raise _invalid("the token is not a JWT")
    try:
        header = json.loads(_b64(parts[0]))
        payload = json.loads(_b64(parts[1]))
    except (ValueError, binascii.Error):
        raise _invalid("the token is not a JWT") from None
    if not isinstance(header, dict) or not isinstance(payload, dict):
        raise _invalid("the token is not a JWT")
    return header, payload


def _b64(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def _claim(claims: Mapping[str, Any], path: str) -> Any:
    value: Any = claims
    for part in path.split("."):
        if not isinstance(value, Mapping):
            return None
        value = value.get(part)
    return value


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return value.split()  # OAuth `scope` style: space-separated
    if isinstance(value, Iterable):
        return [item for item in value if isinstance(item, str)]
    return []
