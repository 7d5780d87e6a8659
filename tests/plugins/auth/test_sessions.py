"""Login, refresh rotation, reuse detection and logout over real gRPC (custom provider, SQLite in memory)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable

import grpc
import pytest
from upf.auth.v1 import auth_pb2 as pb

from tests.plugins.auth.harness import Auth, serve_auth


@pytest.fixture
async def auth() -> AsyncIterator[Auth]:
    async with serve_auth() as running:
        yield running


async def rpc_error(call: Awaitable[object]) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


async def test_login_returns_a_signed_access_token_and_an_opaque_refresh_token(auth: Auth) -> None:
    tokens = await auth.login()
    assert (tokens.token_type, tokens.expires_in, tokens.refresh_expires_in) == ("Bearer", 60, 600)
    claims = await auth.claims(tokens.access_token)
    user_id = (await auth.provider.store.user_by_name("alice")).id  # type: ignore[union-attr]
    now = int(auth.clock.now)
    assert claims == {
        "iss": "http://auth.test",
        "aud": "upf-test",
        "sub": user_id,
        "exp": now + 60,
        "iat": now,
        "nbf": now,
        "jti": claims["jti"],
        "sid": claims["sid"],
        "email": "alice@example.org",
        "roles": ["user"],
        "permissions": ["demo:read"],
    }
    assert len(claims["jti"]) >= 32
    assert len(claims["sid"]) >= 32
    assert "." not in tokens.refresh_token
    assert len(tokens.refresh_token) >= 43
    # Only a hash of the refresh token is stored.
    assert await auth.provider.store.refresh_token(tokens.refresh_token) is None

    validation = await auth.validate(tokens.access_token)
    assert validation.valid, validation.reason
    assert (validation.user_id, validation.email, list(validation.roles), list(validation.permissions)) == (
        user_id,
        "alice@example.org",
        ["user"],
        ["demo:read"],
    )
    assert validation.expires_at == now + 60


async def test_unknown_user_and_wrong_password_get_the_same_answer(auth: Auth) -> None:
    wrong = await rpc_error(auth.login("alice", "not-her-password"))
    unknown = await rpc_error(auth.login("mallory", "alice-secret"))
    for error in (wrong, unknown):
        assert (error.code(), error.details()) == (grpc.StatusCode.UNAUTHENTICATED, "invalid username or password")
    empty = await rpc_error(auth.login("alice", ""))
    assert (empty.code(), empty.details()) == (grpc.StatusCode.INVALID_ARGUMENT, "username and password are required")


async def test_a_disabled_user_cannot_log_in_or_refresh(auth: Auth) -> None:
    tokens = await auth.login()
    alice = await auth.provider.store.user_by_name("alice")
    assert alice is not None
    await auth.provider.store.update_user(alice.id, disabled=True)
    error = await rpc_error(auth.login())
    assert (error.code(), error.details()) == (grpc.StatusCode.PERMISSION_DENIED, "this account is disabled")
    # A wrong password still gets the usual answer: being disabled is not disclosed to a guesser.
    assert (await rpc_error(auth.login("alice", "guess"))).details() == "invalid username or password"
    refused = await rpc_error(auth.stub.RefreshToken(pb.RefreshTokenRequest(refresh_token=tokens.refresh_token)))
    assert refused.code() == grpc.StatusCode.UNAUTHENTICATED
    assert not (await auth.validate(tokens.access_token)).valid  # its session was ended


async def test_refresh_rotates_within_the_session(auth: Auth) -> None:
    first = await auth.login()
    auth.clock.advance(10)
    second = await auth.stub.RefreshToken(pb.RefreshTokenRequest(refresh_token=first.refresh_token))
    assert second.refresh_token != first.refresh_token
    old, new = await auth.claims(first.access_token), await auth.claims(second.access_token)
    assert new["sid"] == old["sid"]
    assert new["jti"] != old["jti"]
    assert new["exp"] == old["exp"] + 10
    third = await auth.stub.RefreshToken(pb.RefreshTokenRequest(refresh_token=second.refresh_token))
    assert (await auth.claims(third.access_token))["sid"] == old["sid"]
    assert (await auth.validate(first.access_token)).valid  # access tokens live on until they expire


async def test_reusing_a_spent_refresh_token_revokes_the_whole_session(auth: Auth) -> None:
    first = await auth.login()
    second = await auth.stub.RefreshToken(pb.RefreshTokenRequest(refresh_token=first.refresh_token))
    other_session = await auth.login()

    reuse = await rpc_error(auth.stub.RefreshToken(pb.RefreshTokenRequest(refresh_token=first.refresh_token)))
    assert (reuse.code(), reuse.details()) == (
        grpc.StatusCode.UNAUTHENTICATED,
        "refresh token already used; the session is revoked",
    )
    # The legitimate holder's newer refresh token is dead too, and so are the session's access tokens.
    ended = await rpc_error(auth.stub.RefreshToken(pb.RefreshTokenRequest(refresh_token=second.refresh_token)))
    assert (ended.code(), ended.details()) == (grpc.StatusCode.UNAUTHENTICATED, "the session has ended")
    sid = (await auth.claims(first.access_token))["sid"]
    assert auth.revocations.is_revoked(None, sid)
    for token in (first.access_token, second.access_token):
        assert (await auth.validate(token)).reason == "token revoked"
    # Another session of the same user is untouched.
    assert (await auth.validate(other_session.access_token)).valid
    await auth.stub.RefreshToken(pb.RefreshTokenRequest(refresh_token=other_session.refresh_token))


async def test_concurrent_refreshes_with_one_token_leave_at_most_one_winner(auth: Auth) -> None:
    tokens = await auth.login()
    request = pb.RefreshTokenRequest(refresh_token=tokens.refresh_token)
    results = await asyncio.gather(*(auth.stub.RefreshToken(request) for _ in range(4)), return_exceptions=True)
    winners = [r for r in results if isinstance(r, pb.TokenResponse)]
    assert len(winners) <= 1
    assert all(r.code() == grpc.StatusCode.UNAUTHENTICATED for r in results if isinstance(r, grpc.aio.AioRpcError))
    # Two holders of one token: treated as a leak, the session ends.
    assert (await auth.validate(tokens.access_token)).reason == "token revoked"


async def test_an_expired_refresh_token_is_refused(auth: Auth) -> None:
    tokens = await auth.login()
    auth.clock.advance(600)
    error = await rpc_error(auth.stub.RefreshToken(pb.RefreshTokenRequest(refresh_token=tokens.refresh_token)))
    assert (error.code(), error.details()) == (grpc.StatusCode.UNAUTHENTICATED, "refresh token expired")
    unknown = await rpc_error(auth.stub.RefreshToken(pb.RefreshTokenRequest(refresh_token="made-up")))
    assert (unknown.code(), unknown.details()) == (grpc.StatusCode.UNAUTHENTICATED, "invalid refresh token")


@pytest.mark.parametrize("with_access_token", [True, False])
async def test_logout_ends_the_session(auth: Auth, with_access_token: bool) -> None:
    first = await auth.login()
    second = await auth.stub.RefreshToken(pb.RefreshTokenRequest(refresh_token=first.refresh_token))
    await auth.stub.Logout(pb.LogoutRequest(token=second.access_token if with_access_token else second.refresh_token))

    sid = (await auth.claims(first.access_token))["sid"]
    assert auth.revocations.is_revoked(None, sid)
    for token in (first.access_token, second.access_token):
        assert (await auth.validate(token)).reason == "token revoked"
    refused = await rpc_error(auth.stub.RefreshToken(pb.RefreshTokenRequest(refresh_token=second.refresh_token)))
    assert (refused.code(), refused.details()) == (grpc.StatusCode.UNAUTHENTICATED, "the session has ended")
    # Twice is fine.
    await auth.stub.Logout(pb.LogoutRequest(token=second.access_token))


async def test_the_session_revocation_lasts_until_its_last_access_token_expires(auth: Auth) -> None:
    first = await auth.login()
    auth.clock.advance(30)
    second = await auth.stub.RefreshToken(pb.RefreshTokenRequest(refresh_token=first.refresh_token))
    await auth.stub.Logout(pb.LogoutRequest(token=first.access_token))
    sid = (await auth.claims(second.access_token))["sid"]
    last_exp = (await auth.claims(second.access_token))["exp"]
    auth.clock.now = last_exp + 5 - 1  # exp + leeway: the last moment a verifier still accepts it
    assert auth.revocations.is_revoked(None, sid)
    auth.clock.now = last_exp + 5
    assert not auth.revocations.is_revoked(None, sid)
    assert auth.revocations.status.entries == 0


async def test_logout_with_an_expired_access_token_still_ends_the_session(auth: Auth) -> None:
    tokens = await auth.login()
    auth.clock.advance(120)  # the access token has expired, the refresh token has not
    await auth.stub.Logout(pb.LogoutRequest(token=tokens.access_token))
    refused = await rpc_error(auth.stub.RefreshToken(pb.RefreshTokenRequest(refresh_token=tokens.refresh_token)))
    assert refused.code() == grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.parametrize("token", ["", "not-a-token", "a.b.c"])
async def test_logout_with_a_bad_token_is_refused(auth: Auth, token: str) -> None:
    error = await rpc_error(auth.stub.Logout(pb.LogoutRequest(token=token)))
    assert error.code() == (grpc.StatusCode.INVALID_ARGUMENT if not token else grpc.StatusCode.UNAUTHENTICATED)


async def test_store_down_is_unavailable_without_details(auth: Auth) -> None:
    await auth.provider.store.close()
    error = await rpc_error(auth.login())
    assert (error.code(), error.details()) == (grpc.StatusCode.UNAVAILABLE, "the auth store is unavailable")
