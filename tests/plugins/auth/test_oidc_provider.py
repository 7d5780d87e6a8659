"""The keycloak and auth0 providers (plugins/auth/oidc.py) against the real local OIDC issuer."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any, Literal

import grpc
import jwt
import pytest

from common.auth.revocations import MemoryRevocations
from plugins.auth.oidc import OidcProvider
from plugins.auth.provider import AuthError, Provider
from plugins.auth.settings import AuthSettings
from tests.support.oidc_issuer import OidcIssuer, auth0_issuer, keycloak_issuer, tamper


class RecordingRevocations(MemoryRevocations):
    """The real in-process store, also remembering what it was asked to revoke."""

    def __init__(self) -> None:
        super().__init__()
        self.revoked: dict[tuple[str, str], int] = {}

    async def revoke(self, kind: Literal["jti", "sid"], value: str, exp: int) -> None:
        self.revoked[(kind, value)] = exp
        await super().revoke(kind, value, exp)


__all__ = ["auth0_issuer", "keycloak_issuer"]

ROLES = {"admin": ["*"], "user": ["demo:read"], "editor": ["orders:*"]}


@asynccontextmanager
async def running(
    issuer: OidcIssuer, revocations: RecordingRevocations | None = None, **options: Any
) -> AsyncIterator[OidcProvider]:
    settings = AuthSettings.model_validate(issuer.auth_settings(roles=ROLES))
    provider = OidcProvider(settings, revocations or RecordingRevocations(), **options)
    await provider.start()
    try:
        yield provider
    finally:
        await provider.close()


async def refused(call: Awaitable[Any], code: grpc.StatusCode, message: str) -> None:
    with pytest.raises(AuthError) as caught:
        await call
    assert caught.value.code == code
    assert message in caught.value.message


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


# -- accepted tokens ----------------------------------------------------------------------------------


async def test_keycloak_token_accepted_with_roles_mapped_to_permissions(keycloak_issuer: OidcIssuer) -> None:
    alice = keycloak_issuer.users["alice"]
    async with running(keycloak_issuer) as provider:
        token = keycloak_issuer.mint()
        validation = await provider.validate(token)

        assert validation.valid, validation.reason
        assert validation.user_id == alice.sub
        assert validation.email == "alice@example.test"
        assert list(validation.roles) == ["user", "offline_access", "editor"]  # realm, then client roles
        assert list(validation.permissions) == ["demo:read", "orders:*"]
        assert validation.expires_at > time.time()

        assert await provider.permissions(alice.sub) == ["demo:read", "orders:*"]
        assert await provider.check_permission(alice.sub, "orders:items:write")
        assert await provider.check_permission(alice.sub, "demo:read")
        assert not await provider.check_permission(alice.sub, "demo:write")
        await refused(provider.permissions("someone-else"), grpc.StatusCode.NOT_FOUND, "no valid token of user")


async def test_keycloak_roles_of_other_clients_grant_nothing(keycloak_issuer: OidcIssuer) -> None:
    claims = {"resource_access": {"other-app": {"roles": ["admin"]}}, "realm_access": {"roles": "admin"}}
    async with running(keycloak_issuer) as provider:
        validation = await provider.validate(keycloak_issuer.mint(claims))
    assert validation.valid, validation.reason
    assert list(validation.roles) == []
    assert list(validation.permissions) == []


async def test_auth0_token_accepted_with_permissions_and_namespaced_roles(auth0_issuer: OidcIssuer) -> None:
    auth0_issuer.add_user("root", "root-password", sub="auth0|root", roles=["admin"], permissions=["billing:read"])
    async with running(auth0_issuer) as provider:
        assert provider.issuer == auth0_issuer.issuer
        assert provider.issuer.endswith("/")
        alice = await provider.validate(auth0_issuer.mint())
        root = await provider.validate(auth0_issuer.mint(user="root"))

        assert alice.valid, alice.reason
        assert list(alice.roles) == ["user"]
        assert list(alice.permissions) == ["orders:read", "demo:read"]  # the claim's, then the roles'
        assert root.valid, root.reason
        assert root.user_id == "auth0|root"
        assert await provider.check_permission("auth0|root", "anything:at-all")
        assert not await provider.check_permission(alice.user_id, "orders:write")


async def test_leeway_tolerates_small_clock_skew(keycloak_issuer: OidcIssuer) -> None:
    now = keycloak_issuer.now()
    async with running(keycloak_issuer) as provider:  # leeway 5 s (auth_settings)
        skewed = keycloak_issuer.mint({"exp": now - 2, "nbf": now + 2, "iat": now + 2})
        validation = await provider.validate(skewed)
    assert validation.valid, validation.reason


# -- refused tokens -----------------------------------------------------------------------------------

# Each attack with the whole reason the provider gives: the reason is what a refused client sees.
ALGORITHM_REFUSED = "the token's algorithm is not accepted (accepted: RS256)"
BAD_SIGNATURE = "the token's signature does not verify"
NOT_YET_VALID = "the token is not valid yet"
ATTACKS: dict[str, tuple[Callable[[OidcIssuer], str], str]] = {
    "alg-none": (lambda i: i.mint(alg="none", key=None), ALGORITHM_REFUSED),
    "alg-none-no-signature-check": (lambda i: i.mint(alg="none", key=None, headers={"alg": "RS256"}), BAD_SIGNATURE),
    "hs256-with-public-key-pem": (lambda i: i.mint(alg="HS256", key=i.public_pem()), ALGORITHM_REFUSED),
    "hs256-with-jwk-json": (
        lambda i: i.mint(alg="HS256", key=json.dumps(i.signing_key.public_jwk())),
        ALGORITHM_REFUSED,
    ),
    "rs512-header-on-an-rs256-key": (lambda i: i.mint(alg="RS512"), ALGORITHM_REFUSED),
    "unknown-kid": (lambda i: i.mint(key=i.new_key()), "the token is signed with a key the issuer does not publish"),
    "no-kid": (lambda i: i.mint(headers={"kid": None}), "the token has no key id (kid)"),
    "kid-of-another-key": (lambda i: i.mint(key=i.new_key(), headers={"kid": i.signing_key.kid}), BAD_SIGNATURE),
    "tampered-payload": (lambda i: tamper(i.mint(), {"realm_access": {"roles": ["admin"]}}), BAD_SIGNATURE),
    "tampered-sub": (lambda i: tamper(i.mint(), {"sub": "admin"}), BAD_SIGNATURE),
    "expired": (lambda i: i.mint({"exp": i.now() - 60}), "the token has expired"),
    "nbf-in-the-future": (lambda i: i.mint({"nbf": i.now() + 3600}), NOT_YET_VALID),
    "iat-in-the-future": (lambda i: i.mint({"iat": i.now() + 3600}), NOT_YET_VALID),
    "wrong-issuer": (lambda i: i.mint({"iss": "http://127.0.0.1:1/realms/upf"}), "the token's issuer is not trusted"),
    "issuer-with-trailing-slash": (lambda i: i.mint({"iss": i.issuer + "/"}), "the token's issuer is not trusted"),
    "wrong-audience": (lambda i: i.mint({"aud": ["account", "other-api"]}), "the token is not meant for this audience"),
    "no-audience": (lambda i: i.mint({"aud": None}), "the token has no aud claim"),
    "no-exp": (lambda i: i.mint({"exp": None}), "the token has no exp claim"),
    "no-iat": (lambda i: i.mint({"iat": None}), "the token has no iat claim"),
    "no-sub": (lambda i: i.mint({"sub": None}), "the token has no sub claim"),
    # Signed by the issuer, but with an expiry pyjwt cannot read.
    "exp-not-a-number": (lambda i: i.mint({"exp": "tomorrow"}), "the token is malformed"),
    "id-token": (lambda i: i.mint({"typ": "ID"}), "the token is not an access token"),
    "not-a-jwt": (lambda i: "not.a.jwt", "the token is not a JWT"),
    "empty": (lambda i: "", "no token"),
    "oversized": (lambda i: i.mint({"padding": "x" * 20_000}), "the token is longer than 16384 characters"),
}


@pytest.fixture(scope="module")
def attacked_issuer() -> Iterator[OidcIssuer]:
    """One issuer for all the attacks: minting them changes nothing in it."""
    with OidcIssuer(style="keycloak") as issuer:
        yield issuer


@pytest.mark.parametrize("attack", ATTACKS)
async def test_attacks_are_refused(attacked_issuer: OidcIssuer, attack: str) -> None:
    make, reason = ATTACKS[attack]
    async with running(attacked_issuer) as provider:
        validation = await provider.validate(make(attacked_issuer))
    assert (validation.valid, validation.reason, validation.user_id) == (False, reason, "")


async def test_auth0_wrong_issuer_and_audience_refused(auth0_issuer: OidcIssuer) -> None:
    async with running(auth0_issuer) as provider:
        no_slash = await provider.validate(auth0_issuer.mint({"iss": auth0_issuer.issuer.rstrip("/")}))
        userinfo_only = await provider.validate(auth0_issuer.mint({"aud": f"{auth0_issuer.issuer}userinfo"}))
    assert (no_slash.valid, no_slash.reason) == (False, "the token's issuer is not trusted")
    assert (userinfo_only.valid, userinfo_only.reason) == (False, "the token is not meant for this audience")


async def test_revoked_session_or_token_refused(keycloak_issuer: OidcIssuer) -> None:
    revocations = RecordingRevocations()
    async with running(keycloak_issuer, revocations) as provider:
        by_sid = keycloak_issuer.mint({"sid": "session-1"})
        by_jti = keycloak_issuer.mint({"jti": "token-1"})
        await revocations.revoke("sid", "session-1", keycloak_issuer.now() + 60)
        await revocations.revoke("jti", "token-1", keycloak_issuer.now() + 60)
        for token in (by_sid, by_jti):
            validation = await provider.validate(token)
            assert (validation.valid, validation.reason) == (False, "the token has been revoked")
        assert (await provider.validate(keycloak_issuer.mint())).valid


# -- the issuer's keys --------------------------------------------------------------------------------


async def test_jwks_down_cached_keys_keep_validating_and_unknown_kids_are_refused(
    keycloak_issuer: OidcIssuer,
) -> None:
    async with running(keycloak_issuer) as provider:
        assert keycloak_issuer.jwks_fetches == 1
        keycloak_issuer.jwks_mode = "error"
        strangers = [keycloak_issuer.mint(key=keycloak_issuer.new_key()) for _ in range(3)]

        assert (await provider.validate(keycloak_issuer.mint())).valid
        for token in strangers * 5:
            validation = await provider.validate(token)
            assert (validation.valid, validation.reason) == (
                False,
                "the token is signed with a key the issuer does not publish",
            )
        assert (await provider.validate(keycloak_issuer.mint())).valid
        assert keycloak_issuer.jwks_fetches == 2  # one refetch for 15 unknown kids, then the cooldown
        assert provider.status["keys"] == 1
        assert "answered HTTP 500" in provider.status["last_error"]


async def test_jwks_hanging_does_not_hold_validation_beyond_the_timeout(keycloak_issuer: OidcIssuer) -> None:
    async with running(keycloak_issuer, timeout=0.5) as provider:
        keycloak_issuer.jwks_mode = "hang"
        started = time.monotonic()
        stranger = await provider.validate(keycloak_issuer.mint(key=keycloak_issuer.new_key()))
        assert time.monotonic() - started < 5
        assert not stranger.valid
        assert (await provider.validate(keycloak_issuer.mint())).valid
        assert "did not answer within 0.5 s" in provider.status["last_error"]


async def test_rotated_key_is_picked_up(keycloak_issuer: OidcIssuer) -> None:
    async with running(keycloak_issuer) as provider:
        old = keycloak_issuer.mint()
        keycloak_issuer.rotate(keep_old=True)
        new = keycloak_issuer.mint()
        assert (await provider.validate(new)).valid
        assert (await provider.validate(old)).valid
        kids = [key["kid"] for key in json.loads(await provider.jwks())["keys"]]
        assert kids == [key.kid for key in keycloak_issuer.published]


async def test_get_jwks_returns_the_issuers_keys(auth0_issuer: OidcIssuer) -> None:
    async with running(auth0_issuer) as provider:
        assert json.loads(await provider.jwks()) == auth0_issuer.jwks()


async def test_issuer_down_at_start_then_back(keycloak_issuer: OidcIssuer) -> None:
    keycloak_issuer.discovery_overrides = {"issuer": "http://127.0.0.1:1/realms/upf"}
    token = keycloak_issuer.mint()
    async with running(keycloak_issuer, discovery_retry=0.1) as provider:
        validation = await provider.validate(token)
        assert not validation.valid
        assert "not reachable yet" in validation.reason
        await refused(provider.login("alice", "alice-password"), grpc.StatusCode.UNAVAILABLE, "names the issuer")
        assert "names the issuer" in provider.status["last_error"]

        keycloak_issuer.discovery_overrides = {}

        async def accepted() -> bool:
            return (await provider.validate(token)).valid

        await eventually(accepted)


async def test_jwt_public_key_url_replaces_the_discovered_jwks_uri(keycloak_issuer: OidcIssuer) -> None:
    # The seed's jwt.publicKeyUrl: the keys come from there, whatever the discovery document says.
    keycloak_issuer.discovery_overrides = {"jwks_uri": "http://127.0.0.1:1/nowhere"}
    config = keycloak_issuer.auth_settings(roles=ROLES)
    config["jwt"]["publicKeyUrl"] = keycloak_issuer.jwks_uri
    provider = OidcProvider(AuthSettings.model_validate(config), RecordingRevocations())
    await provider.start()
    try:
        validation = await provider.validate(keycloak_issuer.mint())
    finally:
        await provider.close()
    assert validation.valid, validation.reason
    assert keycloak_issuer.jwks_fetches >= 1


def test_bad_configurations_are_refused() -> None:
    with pytest.raises(ValueError, match=r"keycloak.serverUrl is required"):
        OidcProvider(AuthSettings(provider="keycloak"), RecordingRevocations())
    with pytest.raises(ValueError, match=r"auth0.domain is required"):
        OidcProvider(AuthSettings(provider="auth0"), RecordingRevocations())
    settings = AuthSettings.model_validate({"provider": "keycloak", "keycloak": {"serverUrl": "https://kc.test"}})
    with pytest.raises(ValueError, match="cannot be pinned"):
        OidcProvider(settings, RecordingRevocations(), algorithms=["HS256"])
    provider: Provider = OidcProvider(settings, RecordingRevocations())  # mypy checks it is a Provider
    assert isinstance(provider, OidcProvider)
    assert provider.issuer == "https://kc.test/realms/upf"
    auth0 = AuthSettings.model_validate({"provider": "auth0", "auth0": {"domain": "tenant.eu.auth0.com"}})
    assert OidcProvider(auth0, RecordingRevocations()).issuer == "https://tenant.eu.auth0.com/"


# -- userinfo, grants, logout -------------------------------------------------------------------------


async def test_userinfo(keycloak_issuer: OidcIssuer) -> None:
    alice = keycloak_issuer.users["alice"]
    async with running(keycloak_issuer) as provider:
        token = keycloak_issuer.mint()
        info = await provider.user_info(alice.sub, token)
        assert (info.user_id, info.username, info.email, info.name) == (
            alice.sub,
            "alice",
            "alice@example.test",
            "Alice Example",
        )
        assert list(info.permissions) == ["demo:read", "orders:*"]
        assert (await provider.user_info("", token)).user_id == alice.sub

        await refused(provider.user_info(alice.sub, ""), grpc.StatusCode.FAILED_PRECONDITION, "needs the user's access")
        await refused(provider.user_info("bob", token), grpc.StatusCode.PERMISSION_DENIED, "another user")
        expired = keycloak_issuer.mint({"exp": keycloak_issuer.now() - 60})
        await refused(provider.user_info(alice.sub, expired), grpc.StatusCode.UNAUTHENTICATED, "expired")


async def test_auth0_userinfo(auth0_issuer: OidcIssuer) -> None:
    async with running(auth0_issuer) as provider:
        info = await provider.user_info("", auth0_issuer.mint())
    assert (info.username, info.email, list(info.roles)) == ("alice", "alice@example.test", ["user"])


async def test_password_and_refresh_grants(keycloak_issuer: OidcIssuer) -> None:
    async with running(keycloak_issuer) as provider:
        tokens = await provider.login("alice", "alice-password")
        assert tokens.token_type == "Bearer"
        assert tokens.expires_in == 300
        assert tokens.refresh_expires_in == 1800
        validation = await provider.validate(tokens.access_token)
        assert validation.valid, validation.reason

        refreshed = await provider.refresh(tokens.refresh_token)
        assert refreshed.access_token != tokens.access_token
        assert (await provider.validate(refreshed.access_token)).valid

        await refused(
            provider.login("alice", "wrong"),
            grpc.StatusCode.UNAUTHENTICATED,
            "refused the login: HTTP 401 invalid_grant (Invalid user credentials)",
        )
        await refused(provider.login("nobody", "x"), grpc.StatusCode.UNAUTHENTICATED, "invalid_grant")
        await refused(provider.refresh("junk"), grpc.StatusCode.UNAUTHENTICATED, "refused the refresh")
        keycloak_issuer.direct_access_grants = False
        await refused(provider.login("alice", "alice-password"), grpc.StatusCode.UNAUTHENTICATED, "unauthorized_client")


async def test_auth0_password_and_refresh_grants(auth0_issuer: OidcIssuer) -> None:
    async with running(auth0_issuer) as provider:
        tokens = await provider.login("alice", "alice-password")
        assert (await provider.validate(tokens.access_token)).valid
        assert await provider.check_permission((await provider.validate(tokens.access_token)).user_id, "demo:read")
        refreshed = await provider.refresh(tokens.refresh_token)
        assert (await provider.validate(refreshed.access_token)).valid
        await refused(provider.refresh(tokens.refresh_token), grpc.StatusCode.UNAUTHENTICATED, "invalid_grant")
        await refused(provider.login("alice", "nope"), grpc.StatusCode.UNAUTHENTICATED, "Wrong email or password")


async def test_token_endpoint_down_is_unavailable(keycloak_issuer: OidcIssuer) -> None:
    async with running(keycloak_issuer) as provider:
        keycloak_issuer.client_secret = "rotated"  # our secret is now wrong: a configuration error
        await refused(provider.login("alice", "alice-password"), grpc.StatusCode.UNAUTHENTICATED, "invalid_client")
        keycloak_issuer.stop()
        await refused(provider.login("alice", "alice-password"), grpc.StatusCode.UNAVAILABLE, "did not answer")


async def test_logout_with_the_access_token_revokes_the_session(keycloak_issuer: OidcIssuer) -> None:
    revocations = RecordingRevocations()
    async with running(keycloak_issuer, revocations) as provider:
        tokens = await provider.login("alice", "alice-password")
        sid = jwt.decode(tokens.access_token, options={"verify_signature": False})["sid"]
        await provider.logout(tokens.access_token)

        assert list(revocations.revoked) == [("sid", sid)]
        assert revocations.revoked[("sid", sid)] >= time.time() + 604800 - 60  # as long as a refresh could run
        assert (await provider.validate(tokens.access_token)).reason == "the token has been revoked"
        assert tokens.access_token in keycloak_issuer.revoked_tokens  # the issuer was told too
        # The refresh token of that session is refused here even though the issuer still accepts it.
        await refused(provider.refresh(tokens.refresh_token), grpc.StatusCode.UNAUTHENTICATED, "logged out")
        await provider.logout(tokens.access_token)  # twice is fine


async def test_logout_with_the_refresh_token_ends_the_session_at_the_issuer(keycloak_issuer: OidcIssuer) -> None:
    revocations = RecordingRevocations()
    async with running(keycloak_issuer, revocations) as provider:
        tokens = await provider.login("alice", "alice-password")
        await provider.logout(tokens.refresh_token)
        assert len(keycloak_issuer.ended_sessions) == 1
        [session] = keycloak_issuer.ended_sessions
        assert ("sid", session) in revocations.revoked
        assert (await provider.validate(tokens.access_token)).reason == "the token has been revoked"
        await refused(provider.refresh(tokens.refresh_token), grpc.StatusCode.UNAUTHENTICATED, "logged out")


async def test_auth0_logout(auth0_issuer: OidcIssuer) -> None:
    revocations = RecordingRevocations()
    async with running(auth0_issuer, revocations) as provider:
        tokens = await provider.login("alice", "alice-password")
        await provider.logout(tokens.access_token)  # no sid in Auth0 access tokens: the jti is revoked
        [(kind, _jti)] = revocations.revoked
        assert kind == "jti"
        assert not (await provider.validate(tokens.access_token)).valid
        await provider.logout(tokens.refresh_token)  # opaque: revoked at the issuer
        assert tokens.refresh_token in auth0_issuer.revoked_tokens
        await refused(provider.refresh(tokens.refresh_token), grpc.StatusCode.UNAUTHENTICATED, "invalid_grant")


async def test_forged_refresh_token_does_not_log_anyone_out(keycloak_issuer: OidcIssuer) -> None:
    revocations = RecordingRevocations()
    async with running(keycloak_issuer, revocations) as provider:
        tokens = await provider.login("alice", "alice-password")
        forged = keycloak_issuer.mint({"typ": "Refresh", "sid": "victim-session", "exp": 1}, alg="HS256", key=b"guess")
        await provider.logout(forged)  # the issuer takes any token at its revocation endpoint (RFC 7009)
        assert revocations.revoked == {}
        assert (await provider.validate(tokens.access_token)).valid
