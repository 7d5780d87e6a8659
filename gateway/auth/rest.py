"""REST endpoints in front of the auth plugin (IAuth), for pages and curl.

    POST /api/auth/login     {"username", "password"}  -> 200 tokens
    POST /api/auth/refresh   {"refreshToken"}          -> 200 tokens (the refresh token is spent)
    POST /api/auth/logout    bearer token, or {"refreshToken"} -> 204 (the session is revoked)
    GET  /api/auth/me        bearer token              -> 200 the verified identity (+ the user's profile)
    GET  /.well-known/jwks.json                         -> the keys that verify access tokens

Failed logins and refreshes are limited per client address, and failed logins back off per
username and address (gateway/auth/login_guard.py): 429 with Retry-After, before any password is
hashed.

Tokens: {"accessToken", "refreshToken", "tokenType": "Bearer", "expiresIn", "refreshExpiresIn"}.
Failures are the error middleware's JSON ({"code", "message"}) with the HTTP status of the plugin's
gRPC status (401 for bad credentials, with WWW-Authenticate), never the plugin's internals.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from upf.auth.v1 import auth_pb2 as pb

from common.auth.revocations import Revocations, RevocationUnavailable
from gateway.auth.authenticator import bearer_token
from gateway.auth.identity import Identity, identity_of
from gateway.auth.login_guard import LoginGuard
from gateway.errors import BadRequest, GatewayError, Unauthenticated
from gateway.ratelimit.keys import TrustedProxies
from gateway.upstream.call import unary_call
from gateway.upstream.pool import UpstreamPool

__all__ = ["AuthEndpoints"]

logger = logging.getLogger(__name__)

MAX_BODY = 16 * 1024
_CHALLENGE = {"www-authenticate": 'Bearer realm="upf"'}


class AuthEndpoints:
    def __init__(
        self,
        pool: UpstreamPool,
        *,
        service: str,
        revocations: Revocations,
        jwks: Callable[[], Awaitable[bytes]],
        timeout: float = 10.0,
        guard: LoginGuard | None = None,
        proxies: TrustedProxies | None = None,
    ) -> None:
        self.pool = pool
        self.service = service
        self.revocations = revocations
        self.jwks_document = jwks
        self.timeout = timeout
        self.guard = guard
        self.proxies = proxies or TrustedProxies()

    def routes(self) -> list[Route]:
        return [
            Route("/api/auth/login", self.login, methods=["POST"]),
            Route("/api/auth/refresh", self.refresh, methods=["POST"]),
            Route("/api/auth/logout", self.logout, methods=["POST"]),
            Route("/api/auth/me", self.me, methods=["GET"]),
            Route("/.well-known/jwks.json", self.jwks, methods=["GET"]),
        ]

    async def _call(self, method: str, request: Any, response_type: type[Any], metadata: bytes = b"") -> Any:
        try:
            return await unary_call(
                self.pool, self.service, method, request, response_type, metadata=metadata, timeout=self.timeout
            )
        except GatewayError as exc:
            if exc.code is grpc.StatusCode.UNAUTHENTICATED:
                exc.headers = {**exc.headers, **_CHALLENGE}
            raise

    async def login(self, request: Request) -> Response:
        body = await _json_body(request)
        username, password = _string(body, "username"), _string(body, "password")
        if self.guard is None:
            tokens = await self._call("Login", pb.LoginRequest(username=username, password=password), pb.TokenResponse)
            return _tokens(tokens)
        with self.guard.attempt("login", self.proxies.client(request.scope), username):
            tokens = await self._call("Login", pb.LoginRequest(username=username, password=password), pb.TokenResponse)
        return _tokens(tokens)

    async def refresh(self, request: Request) -> Response:
        body = await _json_body(request)
        token = _string(body, "refreshToken")
        if self.guard is None:
            tokens = await self._call("RefreshToken", pb.RefreshTokenRequest(refresh_token=token), pb.TokenResponse)
            return _tokens(tokens)
        with self.guard.attempt("refresh", self.proxies.client(request.scope)):
            tokens = await self._call("RefreshToken", pb.RefreshTokenRequest(refresh_token=token), pb.TokenResponse)
        return _tokens(tokens)

    async def logout(self, request: Request) -> Response:
        token = bearer_token(request.scope["headers"])
        if token is None:
            body = await _json_body(request)
            token = _string(body, "refreshToken")
        await self._call("Logout", pb.LogoutRequest(token=token), pb.LogoutResponse)
        identity = identity_of(request.scope)
        if identity is not None and identity.session_id is not None:
            # Known here at once, not only when the revocation comes back from Redis (the plugin
            # has revoked it already: a failure here only delays this replica by that round trip).
            try:
                await self.revocations.revoke("sid", identity.session_id, int(identity.expires_at) + 1)
            except RevocationUnavailable as exc:
                logger.warning("logout: revocation not recorded locally: %s", exc)
        return Response(status_code=204, headers={"cache-control": "no-store"})

    async def me(self, request: Request) -> Response:
        identity = identity_of(request.scope)
        if identity is None:
            raise Unauthenticated("this call needs a bearer token", headers=_CHALLENGE)
        answer = _identity_json(identity)
        token = bearer_token(request.scope["headers"]) or ""
        try:
            info = await self._call(
                "GetUserInfo", pb.GetUserInfoRequest(user_id=identity.subject, access_token=token), pb.UserInfo
            )
        except GatewayError as exc:
            logger.info("GET /api/auth/me: no profile for %s (%s)", identity.subject, exc.message)
        else:
            answer.update({"username": info.username, "name": info.name})
            if info.email:
                answer["email"] = info.email
        return JSONResponse(answer, headers={"cache-control": "no-store"})

    async def jwks(self, request: Request) -> Response:
        document = await self.jwks_document()
        return Response(
            document, media_type="application/jwk-set+json", headers={"cache-control": "public, max-age=300"}
        )


async def _json_body(request: Request) -> dict[str, Any]:
    media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media != "application/json":
        raise BadRequest("send a JSON body (content-type: application/json)")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY:
            raise BadRequest(f"the body is larger than {MAX_BODY} bytes")
    try:
        parsed = json.loads(body)
    except ValueError:
        raise BadRequest("the body is not valid JSON") from None
    if not isinstance(parsed, dict):
        raise BadRequest("the body must be a JSON object")
    return parsed


def _string(body: dict[str, Any], key: str) -> str:
    value = body.get(key)
    if not isinstance(value, str) or not value:
        raise BadRequest(f"{key} is required (a non-empty string)")
    return value


def _tokens(tokens: pb.TokenResponse) -> Response:
    return JSONResponse(
        {
            "accessToken": tokens.access_token,
            "refreshToken": tokens.refresh_token,
            "tokenType": tokens.token_type or "Bearer",
            "expiresIn": tokens.expires_in,
            "refreshExpiresIn": tokens.refresh_expires_in,
        },
        headers={"cache-control": "no-store", "pragma": "no-cache"},  # RFC 6749 5.1
    )


def _identity_json(identity: Identity) -> dict[str, Any]:
    return {
        "userId": identity.subject,
        "email": identity.email,
        "roles": list(identity.roles),
        "permissions": list(identity.permissions),
        "expiresAt": int(identity.expires_at),
        "issuer": identity.issuer,
    }
