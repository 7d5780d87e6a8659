"""A real OpenID Connect issuer for tests: a Starlette app on uvicorn in a background thread, on a free
127.0.0.1 port, in the shape of Keycloak or Auth0.

    with OidcIssuer(style="keycloak") as issuer:       # or the `keycloak_issuer` / `auth0_issuer` fixtures
        token = issuer.mint()                          # a valid access token for the default user, alice
        issuer.mint({"exp": issuer.now() - 60})        # any claim changed; None removes a claim
        issuer.mint(alg="none", key=None)              # attacks: alg none, HS256 keyed with the public key
        issuer.mint(alg="HS256", key=issuer.public_pem())
        issuer.mint(key=issuer.new_key())              # signed with a key the JWKS does not publish
        tamper(token, {"sub": "admin"})                # payload changed, signature kept
        issuer.rotate(keep_old=True)                   # a new signing key (the old one published or not)
        issuer.jwks_mode = "error"                     # the JWKS answers 500; "hang" never answers;
                                                       # "not_json" answers HTML; "huge" and
                                                       # "huge_stream" (chunked) over 1 MiB
        issuer.jwks_fetches                            # how many times the JWKS was asked for
        issuer.auth_settings()                         # the auth plugin's config (camelCase) for this issuer

Keycloak style: issuer <url>/realms/<realm>, endpoints under /realms/<realm>/protocol/openid-connect/
(certs, token, userinfo, logout, revoke); access tokens carry realm_access.roles and
resource_access.<clientId>.roles, sid and typ "Bearer"; refresh tokens are HS256 JWTs (typ "Refresh").
Auth0 style: issuer <url>/ (trailing slash), /.well-known/jwks.json, /oauth/token, /userinfo,
/oauth/revoke, /oidc/logout; access tokens carry `permissions` and the roles in a namespaced claim;
refresh tokens are opaque.

The token endpoint does the password grant (Keycloak "direct access grants"; turn it off with
`direct_access_grants = False`) and the refresh grant; clients authenticate with client_id and
client_secret in the form or with HTTP Basic.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import secrets
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import parse_qs

import jwt
import pytest
import uvicorn
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm, get_default_algorithms
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.support.processes import wait_until

__all__ = [
    "OidcIssuer",
    "SigningKey",
    "User",
    "auth0_issuer",
    "b64url",
    "keycloak_issuer",
    "tamper",
]

Style = Literal["keycloak", "auth0"]
JwksMode = Literal["ok", "error", "hang", "not_json", "huge", "huge_stream"]


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _b64json(value: Mapping[str, Any]) -> str:
    return b64url(json.dumps(value, separators=(",", ":")).encode())


def tamper(token: str, changes: Mapping[str, Any]) -> str:
    """The token with its payload claims changed (None removes one), header and signature kept."""
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return f"{header}.{_b64json(_merge(claims, changes))}.{signature}"


def _merge(base: Mapping[str, Any], changes: Mapping[str, Any] | None) -> dict[str, Any]:
    merged = dict(base)
    for name, value in (changes or {}).items():
        if value is None:
            merged.pop(name, None)
        else:
            merged[name] = value
    return merged


@dataclass(frozen=True)
class SigningKey:
    kid: str
    private_key: rsa.RSAPrivateKey

    @classmethod
    def generate(cls, kid: str | None = None, bits: int = 2048) -> SigningKey:
        key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
        return cls(kid or f"key-{uuid.uuid4().hex[:10]}", key)

    def public_jwk(self, alg: str | None = "RS256") -> dict[str, Any]:
        jwk = RSAAlgorithm.to_jwk(self.private_key.public_key(), as_dict=True)
        assert isinstance(jwk, dict)
        jwk.update({"kid": self.kid, "use": "sig"})
        if alg is not None:
            jwk["alg"] = alg
        return jwk

    def public_pem(self) -> bytes:
        return self.private_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )


@dataclass
class User:
    username: str
    password: str
    sub: str
    email: str = ""
    name: str = ""
    roles: list[str] = field(default_factory=list)  # realm roles (Keycloak) or the namespaced roles (Auth0)
    client_roles: list[str] = field(default_factory=list)  # Keycloak resource_access.<clientId>.roles
    permissions: list[str] = field(default_factory=list)  # Auth0 `permissions` claim


async def _chunks(first: bytes, repeat: int, last: bytes) -> AsyncIterator[bytes]:
    yield first
    for _ in range(repeat):
        yield b"x" * 65536
    yield last


def _settle(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class _Current:
    """The issuer's current signing key (mint's default)."""


CURRENT = _Current()


@dataclass
class _Refresh:
    username: str
    sid: str
    exp: int


class OidcIssuer:
    def __init__(
        self,
        *,
        style: Style = "keycloak",
        realm: str = "upf",
        client_id: str = "upf-gateway",
        client_secret: str = "gateway-secret",
        audience: str = "upf-api",
        roles_claim: str = "https://upf/roles",
        access_token_ttl: int = 300,
        refresh_token_ttl: int = 1800,
    ) -> None:
        self.style: Style = style
        self.realm = realm
        self.client_id = client_id
        self.client_secret = client_secret
        self.audience = audience
        self.roles_claim = roles_claim
        self.access_token_ttl = access_token_ttl
        self.refresh_token_ttl = refresh_token_ttl
        self.direct_access_grants = True
        self.signing_key = SigningKey.generate()
        self.published: list[SigningKey] = [self.signing_key]
        self.extra_jwks: list[dict[str, Any]] = []  # raw JWKs published as they are (bad keys, for tests)
        self.discovery_overrides: dict[str, Any] = {}  # merged into the discovery document (None removes)
        self.users: dict[str, User] = {}
        self.add_user(
            "alice",
            "alice-password",
            sub="0b5e5a8e-alice",
            email="alice@example.test",
            name="Alice Example",
            roles=["user"],
            client_roles=["editor"],
            permissions=["orders:read"],
        )
        # What the tests read: counters, ended sessions (logout), revoked tokens (revocation endpoint).
        self.jwks_fetches = 0
        self.discovery_fetches = 0
        self.token_requests = 0
        self.userinfo_requests = 0
        self.ended_sessions: set[str] = set()
        self.revoked_tokens: list[str] = []
        self._refresh_secret = secrets.token_bytes(32)
        self._refresh_tokens: dict[str, _Refresh] = {}  # by jti (Keycloak) or the opaque token (Auth0)
        self._lock = threading.Lock()
        self._jwks_mode: JwksMode = "ok"
        self._hung: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    # -- addresses ---------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def _base(self) -> str:
        return f"/realms/{self.realm}" if self.style == "keycloak" else ""

    @property
    def issuer(self) -> str:
        return f"{self.url}{self._base}" if self.style == "keycloak" else f"{self.url}/"

    def _paths(self) -> dict[str, str]:
        if self.style == "keycloak":
            oidc = f"{self._base}/protocol/openid-connect"
            return {
                "discovery": f"{self._base}/.well-known/openid-configuration",
                "jwks": f"{oidc}/certs",
                "token": f"{oidc}/token",
                "userinfo": f"{oidc}/userinfo",
                "logout": f"{oidc}/logout",
                "revoke": f"{oidc}/revoke",
            }
        return {
            "discovery": "/.well-known/openid-configuration",
            "jwks": "/.well-known/jwks.json",
            "token": "/oauth/token",
            "userinfo": "/userinfo",
            "logout": "/oidc/logout",
            "revoke": "/oauth/revoke",
        }

    @property
    def discovery_url(self) -> str:
        return self.url + self._paths()["discovery"]

    @property
    def jwks_uri(self) -> str:
        return self.url + self._paths()["jwks"]

    @property
    def token_endpoint(self) -> str:
        return self.url + self._paths()["token"]

    @property
    def userinfo_endpoint(self) -> str:
        return self.url + self._paths()["userinfo"]

    @property
    def end_session_endpoint(self) -> str:
        return self.url + self._paths()["logout"]

    @property
    def revocation_endpoint(self) -> str:
        return self.url + self._paths()["revoke"]

    def auth_settings(self, **overrides: Any) -> dict[str, Any]:
        """The auth plugin's configuration (plugins/auth/settings.py, camelCase) for this issuer."""
        config: dict[str, Any] = {"provider": self.style, "jwt": {"audience": self.audience, "leeway": 5}}
        if self.style == "keycloak":
            config["keycloak"] = {
                "serverUrl": self.url,
                "realm": self.realm,
                "clientId": self.client_id,
                "clientSecret": self.client_secret,
            }
        else:
            config["auth0"] = {
                "domain": self.url,
                "clientId": self.client_id,
                "clientSecret": self.client_secret,
                "rolesClaim": self.roles_claim,
            }
        config.update(overrides)
        return config

    # -- controls ----------------------------------------------------------------------------------

    @property
    def jwks_mode(self) -> JwksMode:
        return self._jwks_mode

    @jwks_mode.setter
    def jwks_mode(self, mode: JwksMode) -> None:
        with self._lock:
            self._jwks_mode = mode
            if mode != "hang":
                self._release_hung()

    def _release_hung(self) -> None:
        hung, self._hung = self._hung, []
        for loop, future in hung:
            loop.call_soon_threadsafe(_settle, future)

    def add_user(
        self,
        username: str,
        password: str,
        *,
        sub: str | None = None,
        email: str = "",
        name: str = "",
        roles: list[str] | None = None,
        client_roles: list[str] | None = None,
        permissions: list[str] | None = None,
    ) -> User:
        user = User(
            username,
            password,
            sub or f"{uuid.uuid4()}",
            email,
            name,
            list(roles or []),
            list(client_roles or []),
            list(permissions or []),
        )
        self.users[username] = user
        return user

    def new_key(self, kid: str | None = None) -> SigningKey:
        """A fresh RSA key that is not published (for unknown-kid tests, or to publish later)."""
        return SigningKey.generate(kid)

    def rotate(self, *, keep_old: bool = True, kid: str | None = None) -> SigningKey:
        """Sign with a new key from now on; the old one stays in the JWKS when keep_old."""
        key = SigningKey.generate(kid)
        self.published = [*self.published, key] if keep_old else [key]
        self.signing_key = key
        return key

    def public_pem(self) -> bytes:
        return self.signing_key.public_pem()

    def jwks(self) -> dict[str, Any]:
        return {"keys": [key.public_jwk() for key in self.published] + list(self.extra_jwks)}

    @staticmethod
    def now() -> int:
        return int(time.time())

    # -- tokens ------------------------------------------------------------------------------------

    def claims(self, user: User | str | None = None, *, sid: str | None = None) -> dict[str, Any]:
        """The claims of an access token this issuer would give `user` (default: alice)."""
        account = self._user(user)
        now = self.now()
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "sub": account.sub,
            "iat": now,
            "exp": now + self.access_token_ttl,
            "jti": str(uuid.uuid4()),
            "azp": self.client_id,
            "scope": "openid email profile",
        }
        if self.style == "keycloak":
            claims.update(
                {
                    "aud": [self.audience, "account"],
                    "typ": "Bearer",
                    "sid": sid or str(uuid.uuid4()),
                    "realm_access": {"roles": [*account.roles, "offline_access"]},
                    "resource_access": {
                        self.client_id: {"roles": list(account.client_roles)},
                        "account": {"roles": ["manage-account"]},
                    },
                    "email": account.email,
                    "email_verified": True,
                    "preferred_username": account.username,
                    "name": account.name,
                }
            )
        else:
            claims.update(
                {
                    "aud": [self.audience, f"{self.issuer}userinfo"],
                    "permissions": list(account.permissions),
                    self.roles_claim: list(account.roles),
                    "gty": "password",
                }
            )
            if sid:
                claims["sid"] = sid
        return claims

    def mint(
        self,
        claims: Mapping[str, Any] | None = None,
        *,
        headers: Mapping[str, Any] | None = None,
        key: SigningKey | bytes | str | _Current | None = CURRENT,
        alg: str = "RS256",
        user: User | str | None = None,
        defaults: bool = True,
    ) -> str:
        """Any JWS: `claims` merged onto the default claims (unless defaults=False; None removes one),
        `headers` onto {alg, typ, kid} (kid: the key's, else the current signing key's). `key` is a
        SigningKey (RS*/PS*), a secret (HS*, used as is: a public key PEM too), or None (alg none)."""
        signer = self.signing_key if isinstance(key, _Current) else key
        payload = _merge(self.claims(user) if defaults else {}, claims)
        # An attack token names the issuer's real kid by default, as an attacker would.
        kid = signer.kid if isinstance(signer, SigningKey) else self.signing_key.kid
        header: dict[str, Any] = {"alg": alg, "typ": "JWT", "kid": kid}
        header = _merge(header, headers)
        signing_input = f"{_b64json(header)}.{_b64json(payload)}".encode()
        signature = self._sign(signing_input, signer, alg)
        return f"{signing_input.decode()}.{b64url(signature)}"

    @staticmethod
    def _sign(signing_input: bytes, signer: SigningKey | bytes | str | None, alg: str) -> bytes:
        if alg == "none":
            return b""
        algorithm = get_default_algorithms()[alg]
        if isinstance(signer, SigningKey):
            return algorithm.sign(signing_input, signer.private_key)
        if signer is None:
            raise ValueError(f"alg {alg} needs a key")
        # Straight to the algorithm, skipping prepare_key: pyjwt (rightly) refuses a PEM as an HMAC
        # secret, and minting that attack is the point.
        secret = signer.encode() if isinstance(signer, str) else signer
        return algorithm.sign(signing_input, secret)

    def _user(self, user: User | str | None) -> User:
        if isinstance(user, User):
            return user
        return self.users[user or "alice"]

    def _issue(self, user: User, *, sid: str | None = None) -> dict[str, Any]:
        sid = sid or str(uuid.uuid4())
        access = self.mint(self.claims(user, sid=sid if self.style == "keycloak" else None))
        now = self.now()
        answer: dict[str, Any] = {
            "access_token": access,
            "token_type": "Bearer",
            "expires_in": self.access_token_ttl,
            "scope": "openid email profile",
        }
        record = _Refresh(user.username, sid, now + self.refresh_token_ttl)
        if self.style == "keycloak":
            jti = str(uuid.uuid4())
            refresh_claims = {
                "iss": self.issuer,
                "aud": self.issuer,
                "sub": user.sub,
                "typ": "Refresh",
                "azp": self.client_id,
                "sid": sid,
                "jti": jti,
                "iat": now,
                "exp": record.exp,
            }
            refresh = jwt.encode(refresh_claims, self._refresh_secret, algorithm="HS256", headers={"kid": "hmac"})
            self._refresh_tokens[jti] = record
            answer.update(
                {"refresh_token": refresh, "refresh_expires_in": self.refresh_token_ttl, "session_state": sid}
            )
        else:
            refresh = secrets.token_urlsafe(32)
            self._refresh_tokens[refresh] = record
            answer["refresh_token"] = refresh
        return answer

    def _refresh_record(self, token: str) -> tuple[str, _Refresh] | None:
        """The refresh token's (id, record) if it is live: issued here, not expired, revoked or logged out."""
        if self.style == "keycloak":
            try:
                claims = jwt.decode(token, self._refresh_secret, algorithms=["HS256"], audience=self.issuer)
            except jwt.PyJWTError:
                return None
            token_id = str(claims.get("jti"))
        else:
            token_id = token
        record = self._refresh_tokens.get(token_id)
        if record is None or record.exp <= self.now() or record.sid in self.ended_sessions:
            return None
        return token_id, record

    def _verify_access(self, token: str) -> dict[str, Any] | None:
        try:
            kid = jwt.get_unverified_header(token).get("kid")
            key = next(k for k in self.published if k.kid == kid)
            claims: dict[str, Any] = jwt.decode(
                token,
                key.private_key.public_key(),
                algorithms=["RS256"],
                issuer=self.issuer,
                options={"verify_aud": False, "require": ["exp", "sub"]},
            )
        except (jwt.PyJWTError, StopIteration):
            return None
        if claims.get("sid") in self.ended_sessions or token in self.revoked_tokens:
            return None
        return claims

    # -- HTTP --------------------------------------------------------------------------------------

    def _app(self) -> Starlette:
        paths = self._paths()
        return Starlette(
            routes=[
                Route(paths["discovery"], self._discovery),
                Route(paths["jwks"], self._jwks),
                Route(paths["token"], self._token, methods=["POST"]),
                Route(paths["userinfo"], self._userinfo, methods=["GET", "POST"]),
                Route(paths["logout"], self._logout, methods=["GET", "POST"]),
                Route(paths["revoke"], self._revoke, methods=["POST"]),
            ]
        )

    async def _discovery(self, request: Request) -> Response:
        self.discovery_fetches += 1
        document = {
            "issuer": self.issuer,
            "authorization_endpoint": f"{self.url}{self._base}/protocol/openid-connect/auth",
            "token_endpoint": self.token_endpoint,
            "userinfo_endpoint": self.userinfo_endpoint,
            "jwks_uri": self.jwks_uri,
            "end_session_endpoint": self.end_session_endpoint,
            "revocation_endpoint": self.revocation_endpoint,
            "grant_types_supported": ["password", "refresh_token", "authorization_code"],
            "id_token_signing_alg_values_supported": ["RS256"],
        }
        return JSONResponse(_merge(document, self.discovery_overrides))

    async def _jwks(self, request: Request) -> Response:
        with self._lock:
            self.jwks_fetches += 1
            mode = self._jwks_mode
            if mode == "hang":
                loop = asyncio.get_running_loop()
                future: asyncio.Future[None] = loop.create_future()
                self._hung.append((loop, future))
        if mode == "hang":
            await future  # released when the mode changes or the issuer stops
            return JSONResponse({"error": "released"}, status_code=503)
        if mode == "error":
            return JSONResponse({"error": "unknown_error"}, status_code=500)
        if mode == "not_json":
            return Response("<html>maintenance</html>", media_type="text/html")
        if mode == "huge":  # a valid JWKS padded past 1 MiB
            return JSONResponse({**self.jwks(), "padding": "x" * (1024 * 1024 + 1)})
        if mode == "huge_stream":  # the same, chunked: no Content-Length to refuse it early
            return StreamingResponse(_chunks(b'{"keys": [], "padding": "' + b"x" * 65536, 17, b'"}'))
        return JSONResponse(self.jwks())

    async def _form(self, request: Request) -> dict[str, str]:
        # Parsed by hand: Starlette's form parser needs python-multipart, not a dependency here.
        parsed = parse_qs((await request.body()).decode(), keep_blank_values=True)
        return {name: values[0] for name, values in parsed.items()}

    def _client_ok(self, request: Request, form: Mapping[str, str]) -> bool:
        client_id, secret = form.get("client_id"), form.get("client_secret")
        basic = request.headers.get("authorization", "")
        if basic.lower().startswith("basic "):
            try:
                client_id, _, secret = base64.b64decode(basic[6:]).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                return False
        return client_id == self.client_id and (not self.client_secret or secret == self.client_secret)

    @staticmethod
    def _oauth_error(status: int, error: str, description: str) -> Response:
        return JSONResponse({"error": error, "error_description": description}, status_code=status)

    async def _token(self, request: Request) -> Response:
        self.token_requests += 1
        form = await self._form(request)
        if not self._client_ok(request, form):
            return self._oauth_error(401, "invalid_client", "Invalid client or Invalid client credentials")
        grant = form.get("grant_type")
        if grant == "password":
            if not self.direct_access_grants:
                return self._oauth_error(400, "unauthorized_client", "Client not allowed for direct access grants")
            user = self.users.get(form.get("username", ""))
            if user is None or not secrets.compare_digest(user.password, form.get("password", "")):
                if self.style == "keycloak":
                    return self._oauth_error(401, "invalid_grant", "Invalid user credentials")
                return self._oauth_error(403, "invalid_grant", "Wrong email or password.")
            return JSONResponse(self._issue(user))
        if grant == "refresh_token":
            found = self._refresh_record(form.get("refresh_token", ""))
            if found is None:
                return self._oauth_error(400, "invalid_grant", "Invalid refresh token")
            token_id, record = found
            if self.style == "auth0":
                del self._refresh_tokens[token_id]  # Auth0 rotation: a refresh token is used once
            return JSONResponse(self._issue(self.users[record.username], sid=record.sid))
        return self._oauth_error(400, "unsupported_grant_type", f"Unsupported grant_type {grant!r}")

    async def _userinfo(self, request: Request) -> Response:
        self.userinfo_requests += 1
        authorization = request.headers.get("authorization", "")
        token = authorization[7:] if authorization.lower().startswith("bearer ") else ""
        claims = self._verify_access(token) if token else None
        user = next((u for u in self.users.values() if claims and u.sub == claims.get("sub")), None)
        if claims is None or user is None:
            return Response(
                status_code=401,
                headers={
                    "WWW-Authenticate": 'Bearer error="invalid_token", error_description="Token verification failed"'
                },
            )
        info: dict[str, Any] = {"sub": user.sub, "email": user.email, "email_verified": True, "name": user.name}
        info["preferred_username" if self.style == "keycloak" else "nickname"] = user.username
        return JSONResponse(info)

    async def _logout(self, request: Request) -> Response:
        if request.method == "GET":  # a browser's RP-initiated logout
            return Response("logged out", media_type="text/plain")
        form = await self._form(request)
        if not self._client_ok(request, form):
            return self._oauth_error(401, "invalid_client", "Invalid client credentials")
        found = self._refresh_record(form.get("refresh_token", ""))
        if found is None:
            return self._oauth_error(400, "invalid_grant", "Invalid refresh token")
        self.ended_sessions.add(found[1].sid)
        return Response(status_code=204)

    async def _revoke(self, request: Request) -> Response:
        form = await self._form(request)
        if not self._client_ok(request, form):
            return self._oauth_error(401, "invalid_client", "Invalid client credentials")
        token = form.get("token", "")
        self.revoked_tokens.append(token)
        found = self._refresh_record(token)
        if found is not None:
            del self._refresh_tokens[found[0]]
        return Response(status_code=200)  # RFC 7009: 200 whether or not the token was known

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> OidcIssuer:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self.port = int(sock.getsockname()[1])
        config = uvicorn.Config(
            self._app(),
            loop="asyncio",
            lifespan="off",
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=2,
        )
        server = uvicorn.Server(config)
        self._server = server
        self._thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name=f"oidc-issuer-{self.port}", daemon=True
        )
        self._thread.start()
        thread = self._thread
        wait_until(lambda: server.started or not thread.is_alive(), what="the OIDC issuer to listen")
        if not server.started:
            raise RuntimeError("the OIDC issuer did not start (see the log above)")
        return self

    def stop(self) -> None:
        if self._server is None or self._thread is None:
            return
        self._server.should_exit = True
        with self._lock:
            self._release_hung()
        self._thread.join(10)
        self._server = None

    def __enter__(self) -> OidcIssuer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@pytest.fixture
def keycloak_issuer() -> Iterator[OidcIssuer]:
    """A Keycloak-style issuer (realm "upf", client "upf-gateway", audience "upf-api", user alice)."""
    with OidcIssuer(style="keycloak") as issuer:
        yield issuer


@pytest.fixture
def auth0_issuer() -> Iterator[OidcIssuer]:
    """An Auth0-style issuer (issuer URL with a trailing slash, roles in "https://upf/roles")."""
    with OidcIssuer(style="auth0") as issuer:
        yield issuer
