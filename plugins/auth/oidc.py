"""IAuth backed by an external OpenID Connect issuer: provider "keycloak" or "auth0".

Tokens are the issuer's: discovery (common/auth/discovery.py) finds its endpoints, JwksCache
(common/auth/jwks.py) its keys. A token is accepted when:
- its header names a kid the issuer publishes and an algorithm pinned for it (RS256 unless the
  `algorithms` argument says otherwise); the algorithm passed to pyjwt is the key's, never the header's;
- it carries iss (exactly the issuer), aud, sub, exp and iat; exp / nbf / iat hold within jwt.leeway;
- `aud` contains jwt.audience. There is no fallback to `azp == clientId`: azp names who asked for the
  token, not who it is for, and Keycloak gives a token asked for by our client to any API the user
  may call. Give Keycloak an "Audience" mapper on the client that adds jwt.audience;
- Keycloak only: its `typ` claim, when present, is "Bearer" (not an ID or refresh token);
- neither its jti nor its sid has been revoked (Revocations, shared with the gateway).

Roles: Keycloak realm_access.roles plus resource_access.<clientId>.roles; Auth0 the claim named by
auth0.rolesClaim. Permissions: the token's `permissions` claim plus the `roles` mapping of each role.

The issuer owns its users, so GetPermissions and CheckPermission answer for users whose valid token
this provider has seen (ValidateToken, Login, RefreshToken), from that token, until it expires; for
any other user they answer NOT_FOUND.

Logout with a valid access token revokes its session (sid, else its jti) for every gateway through
Revocations, then asks the issuer to revoke the token, best effort. Any other token goes to the issuer as
a refresh token: Keycloak's logout endpoint (which ends the session there; its sid is then revoked here
too) and the revocation endpoint (RFC 7009). A Keycloak session revoked here also stops RefreshToken.
With Auth0 a refresh token is opaque: the issuer revokes it, and its access tokens live until they expire.

If the issuer cannot be reached at start, the provider starts anyway and keeps retrying discovery;
until it succeeds tokens are refused and calls that need the issuer answer UNAVAILABLE.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

import grpc
import httpx
import jwt
from upf.auth.v1 import auth_pb2 as pb

from common.auth.claims import TokenRejected, decode_claims
from common.auth.discovery import DiscoveryError, OidcConfiguration, discover
from common.auth.jwks import ASYMMETRIC_ALGORITHMS, JwksCache, http_fetcher
from common.auth.permissions import permits
from common.auth.revocations import Revocations
from plugins.auth.provider import AuthError
from plugins.auth.settings import AuthSettings

__all__ = ["OidcProvider", "issuer_of"]

log = logging.getLogger(__name__)

MAX_TOKEN_CHARS = 16 * 1024  # a bigger "token" is refused before any parsing
_REQUIRED_CLAIMS = ["iss", "aud", "sub", "exp", "iat"]


class _Invalid(Exception):
    """A token refused; the message is the reason given to the caller (never the token)."""


@dataclass(frozen=True, slots=True)
class _Grant:
    roles: tuple[str, ...]
    permissions: tuple[str, ...]
    expires_at: float


def issuer_of(settings: AuthSettings) -> str:
    """The issuer URL of a keycloak or auth0 configuration, exactly as its tokens carry it."""
    if settings.provider == "keycloak":
        if not settings.keycloak.server_url:
            raise ValueError("keycloak.serverUrl is required for the keycloak provider")
        return f"{settings.keycloak.server_url.rstrip('/')}/realms/{settings.keycloak.realm}"
    if settings.provider == "auth0":
        domain = settings.auth0.domain
        if not domain:
            raise ValueError("auth0.domain is required for the auth0 provider")
        base = domain if "://" in domain else f"https://{domain}"
        return base.rstrip("/") + "/"  # Auth0's issuer ends in "/"
    raise ValueError(f"the OIDC provider serves keycloak and auth0, not {settings.provider!r}")


class OidcProvider:
    def __init__(
        self,
        settings: AuthSettings,
        revocations: Revocations,
        *,
        client: httpx.AsyncClient | None = None,
        algorithms: Collection[str] = ("RS256",),
        timeout: float = 5.0,
        discovery_retry: float = 5.0,
        unknown_kid_cooldown: float = 30.0,
        max_users: int = 10_000,
    ) -> None:
        self.issuer = issuer_of(settings)
        self._settings = settings
        self._revocations = revocations
        self._keycloak = settings.provider == "keycloak"
        if self._keycloak:
            self._client_id, self._client_secret = settings.keycloak.client_id, settings.keycloak.client_secret
        else:
            self._client_id, self._client_secret = settings.auth0.client_id, settings.auth0.client_secret
        self._algorithms = tuple(dict.fromkeys(algorithms))
        if not self._algorithms or not ASYMMETRIC_ALGORITHMS.issuperset(self._algorithms):
            raise ValueError(
                f"algorithms {list(self._algorithms)} cannot be pinned: only asymmetric ones verify with a JWKS "
                f"({', '.join(sorted(ASYMMETRIC_ALGORITHMS))})"
            )
        self._http = client
        self._own_http = client is None
        self._timeout = timeout
        self._discovery_retry = discovery_retry
        self._cooldown = unknown_kid_cooldown
        self._max_users = max_users
        self._config: OidcConfiguration | None = None
        self._keys: JwksCache | None = None
        self._discovery_error = "not started"
        self._retry: asyncio.Task[None] | None = None
        self._grants: OrderedDict[str, _Grant] = OrderedDict()

    # -- lifecycle ---------------------------------------------------------------------------------

    async def start(self) -> None:
        if self._http is None:
            self._http = httpx.AsyncClient(timeout=self._timeout, follow_redirects=False)
        if not await self._configure():
            self._retry = asyncio.get_running_loop().create_task(self._configure_until_done(), name="oidc discovery")

    async def _configure(self) -> bool:
        assert self._http is not None
        try:
            config = await discover(self._http, self.issuer, timeout=self._timeout)
        except DiscoveryError as exc:
            self._discovery_error = str(exc)
            log.warning("%s (retrying every %g s)", exc, self._discovery_retry)
            return False
        keys = JwksCache(
            http_fetcher(self._http, self._settings.jwt.public_key_url or config.jwks_uri, self._timeout),
            issuer=self.issuer,
            algorithms=self._algorithms,
            unknown_kid_cooldown=self._cooldown,
        )
        await keys.start()
        self._config, self._keys = config, keys
        return True

    async def _configure_until_done(self) -> None:
        while True:
            await asyncio.sleep(self._discovery_retry)
            if await self._configure():
                return

    async def close(self) -> None:
        if self._retry is not None:
            self._retry.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._retry
        if self._keys is not None:
            await self._keys.close()
        if self._own_http and self._http is not None:
            await self._http.aclose()
            self._http = None

    @property
    def status(self) -> dict[str, Any]:
        """For readiness: the issuer's keys (JwksCache.status), or why discovery has not succeeded."""
        if self._keys is None:
            return {"issuer": self.issuer, "keys": 0, "last_success_age": None, "last_error": self._discovery_error}
        return self._keys.status

    def _configured(self) -> tuple[OidcConfiguration, JwksCache]:
        if self._config is None or self._keys is None:
            raise AuthError(
                grpc.StatusCode.UNAVAILABLE, f"the identity provider is not reachable yet: {self._discovery_error}"
            )
        return self._config, self._keys

    # -- tokens ------------------------------------------------------------------------------------

    async def validate(self, token: str) -> pb.TokenValidation:
        try:
            claims = await self._verify(token)
        except _Invalid as exc:
            return pb.TokenValidation(valid=False, reason=str(exc))
        if self._revocations.is_revoked(_str(claims.get("jti")), _str(claims.get("sid"))):
            return pb.TokenValidation(valid=False, reason="the token has been revoked")
        grant = self._grant(claims)
        return pb.TokenValidation(
            valid=True,
            user_id=claims["sub"],
            email=_str(claims.get("email")) or "",
            roles=grant.roles,
            permissions=grant.permissions,
            expires_at=int(claims["exp"]),
        )

    async def _verify(self, token: str) -> dict[str, Any]:
        """The claims of a token signed by the issuer and valid now (revocation is the caller's check)."""
        if not token:
            raise _Invalid("no token")
        if len(token) > MAX_TOKEN_CHARS:
            raise _Invalid(f"the token is longer than {MAX_TOKEN_CHARS} characters")
        if self._keys is None:
            raise _Invalid(f"the identity provider is not reachable yet: {self._discovery_error}")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise _Invalid("the token is not a JWT") from None
        if header.get("alg") not in self._algorithms:
            raise _Invalid(f"the token's algorithm is not accepted (accepted: {', '.join(self._algorithms)})")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise _Invalid("the token has no key id (kid)")
        key = self._keys.get(kid) or await self._keys.resolve(kid)
        if key is None:
            raise _Invalid("the token is signed with a key the issuer does not publish")
        try:
            claims = decode_claims(
                token,
                key,
                algorithm=key.algorithm_name,
                audience=self._settings.jwt.audience,
                issuer=self.issuer,
                leeway=self._settings.jwt.leeway,
                require=_REQUIRED_CLAIMS,
            )
        except TokenRejected as rejected:
            raise _Invalid(rejected.reason) from None
        if not isinstance(claims.get("sub"), str) or not claims["sub"]:
            raise _Invalid("the token has no sub claim")
        if self._keycloak and claims.get("typ", "Bearer") != "Bearer":
            raise _Invalid("the token is not an access token")
        return claims

    def _grant(self, claims: Mapping[str, Any]) -> _Grant:
        """Roles and permissions of verified claims, remembered for GetPermissions / CheckPermission."""
        if self._keycloak:
            roles = _strings(_get(claims, "realm_access", "roles"))
            roles += _strings(_get(claims, "resource_access", self._client_id, "roles"))
        else:
            roles = _strings(claims.get(self._settings.auth0.roles_claim))
        permissions = _strings(claims.get("permissions"))
        for role in roles:
            permissions += self._settings.roles.get(role, [])
        grant = _Grant(tuple(dict.fromkeys(roles)), tuple(dict.fromkeys(permissions)), float(claims["exp"]))
        user = claims["sub"]
        self._grants[user] = grant
        self._grants.move_to_end(user)
        while len(self._grants) > self._max_users:
            self._grants.popitem(last=False)
        return grant

    # -- users -------------------------------------------------------------------------------------

    async def permissions(self, user_id: str) -> list[str]:
        return list(self._known(user_id).permissions)

    async def check_permission(self, user_id: str, permission: str) -> bool:
        return permits(self._known(user_id).permissions, permission)

    def _known(self, user_id: str) -> _Grant:
        grant = self._grants.get(user_id)
        if grant is None or grant.expires_at <= time.time():
            raise AuthError(
                grpc.StatusCode.NOT_FOUND,
                f"no valid token of user {user_id!r} seen lately: with an external identity provider, "
                "permissions are known from the user's tokens only",
            )
        return grant

    async def user_info(self, user_id: str, access_token: str) -> pb.UserInfo:
        if not access_token:
            raise AuthError(
                grpc.StatusCode.FAILED_PRECONDITION,
                "GetUserInfo needs the user's access token (access_token): the identity provider answers "
                "for the token's owner only",
            )
        config, _keys = self._configured()
        validation = await self.validate(access_token)
        if not validation.valid:
            raise AuthError(grpc.StatusCode.UNAUTHENTICATED, f"access_token refused: {validation.reason}")
        if user_id and user_id != validation.user_id:
            raise AuthError(grpc.StatusCode.PERMISSION_DENIED, "the access token belongs to another user")
        if config.userinfo_endpoint is None:
            raise AuthError(grpc.StatusCode.UNIMPLEMENTED, "the identity provider has no userinfo endpoint")
        response = await self._call(
            "GET", config.userinfo_endpoint, "userinfo", headers={"Authorization": f"Bearer {access_token}"}
        )
        if response.status_code in (401, 403):
            raise AuthError(grpc.StatusCode.UNAUTHENTICATED, "the identity provider refused the access token")
        info = _json_object(response, "userinfo")
        if info.get("sub") != validation.user_id:
            raise AuthError(grpc.StatusCode.UNAVAILABLE, "the identity provider's userinfo is for another user")
        return pb.UserInfo(
            user_id=validation.user_id,
            username=_str(info.get("preferred_username")) or _str(info.get("nickname")) or "",
            email=_str(info.get("email")) or validation.email,
            name=_str(info.get("name")) or "",
            roles=validation.roles,
            permissions=validation.permissions,
        )

    # -- grants ------------------------------------------------------------------------------------

    async def login(self, username: str, password: str) -> pb.TokenResponse:
        if not username or not password:
            raise AuthError(grpc.StatusCode.UNAUTHENTICATED, "a username and a password are required")
        form = {"grant_type": "password", "username": username, "password": password, "scope": "openid"}
        if not self._keycloak:
            form.update({"audience": self._settings.jwt.audience, "scope": "openid profile email offline_access"})
        return await self._token_grant(form, "login")

    async def refresh(self, refresh_token: str) -> pb.TokenResponse:
        if not refresh_token:
            raise AuthError(grpc.StatusCode.UNAUTHENTICATED, "no refresh token")
        # A Keycloak refresh token names its session: a session this platform revoked stays ended even if
        # the issuer did not hear about it. (Unverified claims can only make this refuse, never accept.)
        sid = _str(_unverified_claims(refresh_token).get("sid"))
        if sid and self._revocations.is_revoked(None, sid):
            raise AuthError(grpc.StatusCode.UNAUTHENTICATED, "the session has been logged out")
        return await self._token_grant({"grant_type": "refresh_token", "refresh_token": refresh_token}, "refresh")

    async def _token_grant(self, form: dict[str, str], what: str) -> pb.TokenResponse:
        config, _keys = self._configured()
        if config.token_endpoint is None:
            raise AuthError(grpc.StatusCode.UNIMPLEMENTED, "the identity provider has no token endpoint")
        response = await self._call("POST", config.token_endpoint, "token", data=self._with_client(form))
        if 400 <= response.status_code < 500:
            raise AuthError(
                grpc.StatusCode.UNAUTHENTICATED, f"the identity provider refused the {what}: {_oauth(response)}"
            )
        answer = _json_object(response, "token")
        access = answer.get("access_token")
        if not isinstance(access, str) or not access:
            raise AuthError(grpc.StatusCode.UNAVAILABLE, "the identity provider's token answer has no access_token")
        validation = await self.validate(access)  # remembers the user's permissions
        if not validation.valid:
            # The issuer's own fresh token refused: a configuration mismatch (audience, algorithm...).
            log.warning("the identity provider issued a token this provider refuses: %s", validation.reason)
        return pb.TokenResponse(
            access_token=access,
            refresh_token=_str(answer.get("refresh_token")) or "",
            token_type="Bearer",
            expires_in=_int(answer.get("expires_in")),
            refresh_expires_in=_int(answer.get("refresh_expires_in")),
        )

    async def logout(self, token: str) -> None:
        config, _keys = self._configured()
        try:
            claims: dict[str, Any] | None = await self._verify(token)
        except _Invalid:
            claims = None
        if claims is not None:
            await self._revoke_locally(claims)
            await self._tell_issuer(config, token, "access_token")
            return
        # Not a valid access token: a refresh token (or an expired or foreign token), which only the
        # issuer can judge. Its claims are not trusted here unless the issuer accepted it.
        ended = await self._end_session(config, token) if self._keycloak else False
        if ended:
            await self._revoke_locally(_unverified_claims(token))
        # RFC 7009: the issuer answers 200 for tokens it does not know too, so logging out twice, or
        # with an expired token, is not an error.
        if not await self._tell_issuer(config, token, "refresh_token") and not ended:
            raise AuthError(
                grpc.StatusCode.UNAUTHENTICATED,
                "the token is not a valid access token, and the identity provider did not take it as a refresh token",
            )

    async def _revoke_locally(self, claims: Mapping[str, Any]) -> None:
        sid, jti = _str(claims.get("sid")), _str(claims.get("jti"))
        exp = _int(claims.get("exp"))
        if sid:
            # A session outlives its access tokens: keep it revoked for as long as a refresh token could
            # still mint new ones.
            horizon = int(time.time()) + self._settings.session.refresh_token_ttl
            await self._revocations.revoke("sid", sid, max(exp, horizon))
        elif jti and exp:
            await self._revocations.revoke("jti", jti, exp)

    async def _end_session(self, config: OidcConfiguration, refresh_token: str) -> bool:
        """Keycloak's back-channel logout: POST the refresh token to end_session_endpoint."""
        if config.end_session_endpoint is None:
            return False
        try:
            response = await self._call(
                "POST", config.end_session_endpoint, "logout", data=self._with_client({"refresh_token": refresh_token})
            )
        except AuthError as exc:
            log.warning("logout at the identity provider failed: %s", exc.message)
            return False
        return 200 <= response.status_code < 300

    async def _tell_issuer(self, config: OidcConfiguration, token: str, hint: str) -> bool:
        """RFC 7009 revocation, best effort; True when the issuer answered 2xx."""
        if config.revocation_endpoint is None:
            return False
        form = self._with_client({"token": token, "token_type_hint": hint})
        try:
            response = await self._call("POST", config.revocation_endpoint, "revocation", data=form)
        except AuthError as exc:
            log.warning("token revocation at the identity provider failed: %s", exc.message)
            return False
        if not 200 <= response.status_code < 300:
            log.warning("token revocation at the identity provider failed: %s", _oauth(response))
            return False
        return True

    async def jwks(self) -> str:
        _config, keys = self._configured()
        if keys.status["keys"] == 0:
            raise AuthError(
                grpc.StatusCode.UNAVAILABLE, f"no keys from the identity provider yet: {keys.status['last_error']}"
            )
        return keys.jwks_json()

    # -- HTTP --------------------------------------------------------------------------------------

    def _with_client(self, form: dict[str, str]) -> dict[str, str]:
        form = {**form, "client_id": self._client_id}
        if self._client_secret:
            form["client_secret"] = self._client_secret
        return form

    async def _call(self, method: str, url: str, what: str, **kwargs: Any) -> httpx.Response:
        assert self._http is not None
        try:
            async with asyncio.timeout(self._timeout):
                response = await self._http.request(method, url, timeout=self._timeout, **kwargs)
        except (TimeoutError, httpx.HTTPError) as exc:
            raise AuthError(
                grpc.StatusCode.UNAVAILABLE,
                f"the identity provider's {what} endpoint did not answer ({type(exc).__name__})",
            ) from None
        if response.status_code >= 500:
            raise AuthError(
                grpc.StatusCode.UNAVAILABLE,
                f"the identity provider's {what} endpoint answered HTTP {response.status_code}",
            )
        return response


def _get(claims: Mapping[str, Any], *path: str) -> Any:
    value: Any = claims
    for name in path:
        value = value.get(name) if isinstance(value, Mapping) else None
    return value


def _strings(value: Any) -> list[str]:
    """A claim that should be a list of strings; anything else counts as empty (grants nothing)."""
    return [item for item in value if isinstance(item, str)] if isinstance(value, list) else []


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _unverified_claims(token: str) -> dict[str, Any]:
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        return {}
    return claims if isinstance(claims, dict) else {}


def _json_object(response: httpx.Response, what: str) -> dict[str, Any]:
    if not 200 <= response.status_code < 300:
        raise AuthError(
            grpc.StatusCode.UNAVAILABLE, f"the identity provider's {what} endpoint answered {_oauth(response)}"
        )
    try:
        answer = response.json()
    except ValueError:
        answer = None
    if not isinstance(answer, dict):
        raise AuthError(grpc.StatusCode.UNAVAILABLE, f"the identity provider's {what} endpoint did not answer JSON")
    return answer


def _oauth(response: httpx.Response) -> str:
    """An OAuth error answer as text: "HTTP 401 invalid_grant (Invalid user credentials)"."""
    try:
        body = json.loads(response.content)
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        description = body.get("error_description")
        detail = f" ({description[:200]})" if isinstance(description, str) and description else ""
        return f"HTTP {response.status_code} {body['error'][:100]}{detail}"
    return f"HTTP {response.status_code}"
