"""The `custom` provider: users, passwords and roles of our own, tokens signed with our own keys.

    provider = CustomProvider(settings, revocations)        # store from settings.custom
    await provider.start()                                  # tables, roles from settings, a signing key
    await provider.ensure_user("demo", "demo", "demo@example.org", ["user"])
    tokens = await provider.login("demo", "demo")

Sessions: a login starts a session (`sid`, the refresh tokens' family). Each refresh spends the
refresh token presented and issues a new pair in the same session; presenting a spent one again
means it leaked, so the whole session is revoked. Logout revokes the session too. Revoking a session
marks its refresh tokens in the store and publishes the `sid` (Revocations) until the last access
token of the session has expired, for every gateway replica to refuse them.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import secrets
import time
import uuid
from collections.abc import Callable
from typing import Any

import grpc
import jwt
from upf.auth.v1 import auth_pb2 as pb

from common.auth.claims import TokenRejected, decode_claims
from common.auth.permissions import permits
from common.auth.revocations import Revocations, RevocationUnavailable
from plugins.auth.keyring import KeyRing
from plugins.auth.passwords import HashingBusy, Passwords
from plugins.auth.provider import AuthError
from plugins.auth.settings import AuthSettings
from plugins.auth.store import AuthStore, PostgresAuthStore, RefreshToken, SqliteAuthStore, StoreUnavailable, User

__all__ = ["CustomProvider", "store_from_settings"]

logger = logging.getLogger(__name__)

MAX_TOKEN_LENGTH = 16 * 1024
MAX_CREDENTIAL_LENGTH = 1024
_CLAIMS = ("iss", "aud", "sub", "exp", "iat", "nbf", "jti", "sid")
_BAD_LOGIN = "invalid username or password"
_BUSY = "too many sign-ins at once; try again in a moment"


class _Invalid(Exception):
    """A token that does not verify; the message is the reason (for logs, never secret)."""


def store_from_settings(settings: AuthSettings) -> AuthStore:
    custom = settings.custom
    if custom.store == "postgres":
        return PostgresAuthStore(custom.postgres_url, pool_size=custom.postgres_pool_size)
    return SqliteAuthStore(custom.sqlite_path)


def _hash_refresh(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _strings(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


class CustomProvider:
    def __init__(
        self,
        settings: AuthSettings,
        revocations: Revocations,
        *,
        store: AuthStore | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.store = store if store is not None else store_from_settings(settings)
        self._revocations = revocations
        self._clock = clock
        self._jwt = settings.jwt
        self._access_ttl = settings.session.access_token_ttl
        self._refresh_ttl = settings.session.refresh_token_ttl
        # Revocations and retired keys last until the last token they cover is no longer accepted.
        self._leeway = math.ceil(settings.jwt.leeway)
        self._passwords = Passwords(settings.custom.password_hash)
        self.keys = KeyRing(
            self.store,
            algorithm=settings.jwt.algorithm,
            rotation_interval=settings.jwt.key_rotation_interval,
            retention=self._access_ttl + self._leeway,
            publish_ahead=settings.jwt.key_publish_ahead,
            check_every=settings.custom.maintenance_interval,
            clock=clock,
            passphrase=passphrase.get_secret_value().encode()
            if (passphrase := settings.custom.key_passphrase)
            else None,
        )
        self._maintenance: asyncio.Task[None] | None = None

    # Life cycle

    async def start(self, *, maintenance: bool = True) -> None:
        """Open the store, store the roles of the settings, make sure a signing key (and its successor,
        when due) exists; then keep house every custom.maintenanceInterval seconds (unless
        `maintenance` is False: tests call `maintain()` themselves)."""
        await self.store.start()
        try:
            await self._passwords.prepare()
            for role, permissions in self.settings.roles.items():
                # The settings are the source of truth for the roles they name; others are left alone.
                await self.store.put_role(role, permissions)
            await self.keys.load()
            await self.keys.rotate_if_due()
        except BaseException:
            await self.store.close()  # a start that fails leaves no connection open
            raise
        if maintenance and self._maintenance is None:
            self._maintenance = asyncio.create_task(self._keep_house(), name="auth maintenance")

    async def close(self) -> None:
        if self._maintenance is not None:
            self._maintenance.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._maintenance
            self._maintenance = None
        self._passwords.close()
        await self.store.close()

    async def maintain(self) -> None:
        """Schedule the signing key's successor when due, drop keys no token needs, delete expired refresh tokens."""
        await self.keys.rotate_if_due()
        await self.keys.prune()
        await self.store.delete_expired_refresh_tokens(int(self._clock()) - self._leeway)

    async def _keep_house(self) -> None:
        while True:
            await asyncio.sleep(self.settings.custom.maintenance_interval)
            try:
                await self.maintain()
            except Exception:
                logger.exception(
                    "auth: housekeeping failed; trying again in %.0f s", self.settings.custom.maintenance_interval
                )

    # Users

    async def ensure_user(self, username: str, password: str, email: str, roles: list[str], *, name: str = "") -> str:
        """Make the user exist with this password, email, name and roles (creating it if missing); its id.

        Idempotent: run at every start (`upf run` seeds its demo user this way), it changes nothing
        the second time, and the password is rehashed only when it no longer matches.
        """
        if not username or not password:
            raise ValueError("ensure_user needs a username and a password")
        user = await self.store.user_by_name(username)
        if user is None:
            candidate = User(
                uuid.uuid4().hex, username, email, name, await self._passwords.hash(password), False, self._clock()
            )
            if await self.store.add_user(candidate):
                user = candidate
            else:  # created meanwhile by another replica
                user = await self.store.user_by_name(username)
                if user is None:
                    raise StoreUnavailable(f"user {username!r} could neither be created nor found")
        if user.email != email or user.name != name:
            await self.store.update_user(user.id, email=email, name=name)
        if not await self._passwords.verify(user.password_hash, password, wait=True):
            await self.store.update_user(user.id, password_hash=await self._passwords.hash(password))
        if await self.store.user_roles(user.id) != sorted(set(roles)):
            await self.store.set_user_roles(user.id, sorted(set(roles)))
        return user.id

    async def _known_user(self, user_id: str) -> User:
        if not user_id:
            raise AuthError(grpc.StatusCode.INVALID_ARGUMENT, "user_id is required")
        user = await self.store.user_by_id(user_id)
        if user is None:
            raise AuthError(grpc.StatusCode.NOT_FOUND, "unknown user")
        return user

    # Tokens

    async def login(self, username: str, password: str) -> pb.TokenResponse:
        if not username or not password:
            raise AuthError(grpc.StatusCode.INVALID_ARGUMENT, "username and password are required")
        if len(username) > MAX_CREDENTIAL_LENGTH or len(password) > MAX_CREDENTIAL_LENGTH:
            raise AuthError(grpc.StatusCode.INVALID_ARGUMENT, "username or password too long")
        user = await self.store.user_by_name(username)
        # Verified even for an unknown user (against a dummy hash): the same time, the same answer.
        try:
            matches = await self._passwords.verify(user.password_hash if user else None, password)
        except HashingBusy:
            raise AuthError(grpc.StatusCode.RESOURCE_EXHAUSTED, _BUSY) from None
        if user is None or not matches:
            raise AuthError(grpc.StatusCode.UNAUTHENTICATED, _BAD_LOGIN)
        if user.disabled:
            raise AuthError(grpc.StatusCode.PERMISSION_DENIED, "this account is disabled")
        if self._passwords.needs_rehash(user.password_hash):
            await self.store.update_user(user.id, password_hash=await self._passwords.hash(password))
        return await self._issue(user, uuid.uuid4().hex)

    async def refresh(self, refresh_token: str) -> pb.TokenResponse:
        if not refresh_token:
            raise AuthError(grpc.StatusCode.INVALID_ARGUMENT, "refresh_token is required")
        if len(refresh_token) > MAX_TOKEN_LENGTH:
            raise AuthError(grpc.StatusCode.UNAUTHENTICATED, "invalid refresh token")
        token_hash = _hash_refresh(refresh_token)
        record = await self.store.refresh_token(token_hash)
        if record is None:
            raise AuthError(grpc.StatusCode.UNAUTHENTICATED, "invalid refresh token")
        if record.revoked or self._revocations.is_revoked(None, record.family):
            raise AuthError(grpc.StatusCode.UNAUTHENTICATED, "the session has ended")
        if not record.used and record.expires_at <= self._clock():
            raise AuthError(grpc.StatusCode.UNAUTHENTICATED, "refresh token expired")
        if record.used or not await self.store.spend_refresh_token(token_hash):
            # Spent before (or by a concurrent refresh): someone else holds a copy. End the session.
            logger.warning("auth: refresh token reused; revoking session %s of user %s", record.family, record.user_id)
            await self._end_session(record.family, fail_quietly=True)
            raise AuthError(grpc.StatusCode.UNAUTHENTICATED, "refresh token already used; the session is revoked")
        user = await self.store.user_by_id(record.user_id)
        if user is None or user.disabled:
            await self._end_session(record.family, fail_quietly=True)
            raise AuthError(grpc.StatusCode.UNAUTHENTICATED, "the user can no longer sign in")
        return await self._issue(user, record.family)

    async def _issue(self, user: User, sid: str) -> pb.TokenResponse:
        roles = await self.store.user_roles(user.id)
        permissions = await self.store.user_permissions(user.id)
        key = await self.keys.signing_key()
        now = int(self._clock())
        access_exp = now + self._access_ttl
        claims: dict[str, Any] = {
            "iss": self._jwt.issuer,
            "aud": self._jwt.audience,
            "sub": user.id,
            "exp": access_exp,
            "iat": now,
            "nbf": now,
            "jti": uuid.uuid4().hex,
            "sid": sid,
            "email": user.email,
            "roles": roles,
            "permissions": permissions,
        }
        access = jwt.encode(claims, key.private, algorithm=key.alg, headers={"kid": key.kid, "typ": "JWT"})
        refresh = secrets.token_urlsafe(32)
        record = RefreshToken(_hash_refresh(refresh), sid, user.id, now, now + self._refresh_ttl, access_exp)
        await self.store.add_refresh_token(record)
        return pb.TokenResponse(
            access_token=access,
            refresh_token=refresh,
            token_type="Bearer",
            expires_in=self._access_ttl,
            refresh_expires_in=self._refresh_ttl,
        )

    async def logout(self, token: str) -> None:
        if not token:
            raise AuthError(grpc.StatusCode.INVALID_ARGUMENT, "token is required")
        if token.count(".") == 2:  # a JWT: ours, even if expired (a session can outlive its access token)
            try:
                claims = await self._verify(token, check_time=False)
            except _Invalid as exc:
                raise AuthError(grpc.StatusCode.UNAUTHENTICATED, f"invalid token: {exc}") from None
            await self._end_session(claims["sid"], at_least=claims["exp"])
            return
        record = await self.store.refresh_token(_hash_refresh(token)) if len(token) <= MAX_TOKEN_LENGTH else None
        if record is None:
            raise AuthError(grpc.StatusCode.UNAUTHENTICATED, "invalid token")
        await self._end_session(record.family)

    async def _end_session(self, sid: str, *, at_least: int = 0, fail_quietly: bool = False) -> None:
        await self.store.revoke_family(sid)
        exp = max(await self.store.family_expiry(sid) or 0, at_least) + self._leeway
        if exp <= self._clock():
            return  # every access token of the session has expired already
        try:
            await self._revocations.revoke("sid", sid, exp)
        except RevocationUnavailable as exc:
            logger.error("auth: session %s revoked in the store but not published: %s", sid, exc)
            if not fail_quietly:
                raise AuthError(grpc.StatusCode.UNAVAILABLE, "the logout could not be published; try again") from None

    async def validate(self, token: str) -> pb.TokenValidation:
        try:
            claims = await self._verify(token, check_time=True)
        except _Invalid as exc:
            return pb.TokenValidation(valid=False, reason=str(exc))
        if self._revocations.is_revoked(claims["jti"], claims["sid"]):
            return pb.TokenValidation(valid=False, reason="token revoked")
        return pb.TokenValidation(
            valid=True,
            user_id=claims["sub"],
            email=claims.get("email", ""),
            roles=claims.get("roles", []),
            permissions=claims.get("permissions", []),
            expires_at=claims["exp"],
        )

    async def _verify(self, token: str, *, check_time: bool) -> dict[str, Any]:
        """The claims of one of our tokens, or _Invalid with the reason."""
        if not token:
            raise _Invalid("no token")
        if len(token) > MAX_TOKEN_LENGTH:
            raise _Invalid("token too long")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise _Invalid("the token is malformed") from None
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise _Invalid("no key id")
        key = await self.keys.find(kid)
        if key is None:
            raise _Invalid("unknown signing key")
        if header.get("alg") != key.alg:  # pinned by the key: no "none", no HS/RS confusion
            raise _Invalid("algorithm not allowed")
        try:
            # Times are checked below, on our clock (pyjwt reads the system's).
            claims = decode_claims(
                token,
                key.public,
                algorithm=key.alg,
                audience=self._jwt.audience,
                issuer=self._jwt.issuer,
                require=_CLAIMS,
                verify_times=False,
            )
        except TokenRejected as rejected:
            raise _Invalid(rejected.reason) from None
        for name in ("exp", "iat", "nbf"):
            if not _is_int(claims[name]):
                raise _Invalid(f"claim {name} is not an integer")
        for name in ("sub", "jti", "sid"):
            if not isinstance(claims[name], str) or not claims[name]:
                raise _Invalid(f"claim {name} is not a string")
        if not (_strings(claims.get("roles", [])) and _strings(claims.get("permissions", []))):
            raise _Invalid("roles and permissions must be lists of strings")
        if not isinstance(claims.get("email", ""), str):
            raise _Invalid("claim email is not a string")
        if check_time:
            now = self._clock()
            if claims["exp"] <= now - self._jwt.leeway:
                raise _Invalid("token expired")
            if claims["nbf"] > now + self._jwt.leeway or claims["iat"] > now + self._jwt.leeway:
                raise _Invalid("token not yet valid")
        return claims

    # Users' rights

    async def user_info(self, user_id: str, access_token: str) -> pb.UserInfo:
        user = await self._known_user(user_id)
        return pb.UserInfo(
            user_id=user.id,
            username=user.username,
            email=user.email,
            name=user.name,
            roles=await self.store.user_roles(user.id),
            permissions=await self.store.user_permissions(user.id),
        )

    async def permissions(self, user_id: str) -> list[str]:
        user = await self._known_user(user_id)
        return await self.store.user_permissions(user.id)

    async def check_permission(self, user_id: str, permission: str) -> bool:
        if not permission:
            raise AuthError(grpc.StatusCode.INVALID_ARGUMENT, "permission is required")
        return permits(await self.permissions(user_id), permission)

    async def jwks(self) -> str:
        return await self.keys.jwks_json()
