"""Users' rights over gRPC: GetUserInfo, GetPermissions, CheckPermission (wildcards), and error answers."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable

import grpc
import pytest
from upf.auth.v1 import auth_pb2 as pb, auth_pb2_grpc

from common.auth.permissions import permits
from plugins.auth.service import AuthService
from tests.plugins.auth.harness import Auth, serve_auth


@pytest.fixture
async def auth() -> AsyncIterator[Auth]:
    async with serve_auth() as running:
        yield running


async def user_id(auth: Auth, username: str) -> str:
    user = await auth.provider.store.user_by_name(username)
    assert user is not None
    return user.id


@pytest.mark.parametrize(
    ("granted", "wanted", "allowed"),
    [
        (["*"], "anything:at:all", True),
        (["orders:*"], "orders:read", True),
        (["orders:*"], "orders:items:write", True),
        (["orders:*"], "orders", False),
        (["orders:*"], "orders:", False),
        (["orders:*"], "ordersx:read", False),
        (["orders:read"], "orders:read", True),
        (["orders:read"], "orders:write", False),
        (["orders:read"], "orders:*", False),  # a wildcard asked for is literal
        ([], "demo:read", False),
        (["demo:*", "orders:read"], "demo:write", True),
    ],
)
def test_wildcard_grants(granted: list[str], wanted: str, allowed: bool) -> None:
    assert permits(granted, wanted) is allowed


async def test_check_permission_applies_the_users_roles(auth: Auth) -> None:
    async def check(username: str, permission: str) -> bool:
        request = pb.CheckPermissionRequest(user_id=await user_id(auth, username), permission=permission)
        return (await auth.stub.CheckPermission(request)).allowed

    assert await check("root", "orders:delete")  # admin: "*"
    assert await check("carol", "orders:write")  # clerk: "orders:*"
    assert await check("carol", "demo:read")
    assert not await check("carol", "billing:read")
    assert await check("alice", "demo:read")
    assert not await check("alice", "demo:write")


async def test_user_info_and_permissions(auth: Auth) -> None:
    carol = await user_id(auth, "carol")
    info = await auth.stub.GetUserInfo(pb.GetUserInfoRequest(user_id=carol))
    assert (info.user_id, info.username, info.email, list(info.roles), list(info.permissions)) == (
        carol,
        "carol",
        "carol@example.org",
        ["clerk", "user"],
        ["demo:read", "orders:*"],
    )
    assert (await auth.stub.GetUserInfo(pb.GetUserInfoRequest(user_id=await user_id(auth, "alice")))).name == "Alice"
    reply = await auth.stub.GetPermissions(pb.GetPermissionsRequest(user_id=carol))
    assert list(reply.permissions) == ["demo:read", "orders:*"]


async def test_unknown_users_are_not_found(auth: Auth) -> None:
    calls: list[Awaitable[object]] = [
        auth.stub.GetUserInfo(pb.GetUserInfoRequest(user_id="nobody")),
        auth.stub.GetPermissions(pb.GetPermissionsRequest(user_id="nobody")),
        auth.stub.CheckPermission(pb.CheckPermissionRequest(user_id="nobody", permission="demo:read")),
    ]
    for call in calls:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        assert (caught.value.code(), caught.value.details()) == (grpc.StatusCode.NOT_FOUND, "unknown user")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await auth.stub.CheckPermission(pb.CheckPermissionRequest(user_id=await user_id(auth, "alice")))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_roles_from_the_settings_are_stored_and_ensure_user_is_idempotent(auth: Auth) -> None:
    assert await auth.provider.store.roles() == {
        "admin": ["*"],
        "clerk": ["demo:read", "orders:*"],
        "user": ["demo:read"],
    }
    alice = await user_id(auth, "alice")
    before = await auth.provider.store.user_by_id(alice)
    assert (
        await auth.provider.ensure_user("alice", "alice-secret", "alice@example.org", ["user"], name="Alice") == alice
    )
    assert await auth.provider.store.user_by_id(alice) == before  # nothing changed, not even the hash
    # Changed arguments are applied: the seeded credentials always work.
    await auth.provider.ensure_user("alice", "new-secret", "a@example.org", ["admin"], name="Alice")
    assert (await auth.login("alice", "new-secret")).access_token
    assert await auth.provider.store.user_roles(alice) == ["admin"]


class FailingProvider:
    """A provider with a bug: what reaches the client must not include its message."""

    async def login(self, username: str, password: str) -> pb.TokenResponse:
        raise RuntimeError("database password is hunter2")


async def test_unexpected_errors_are_internal_and_not_leaked(caplog: pytest.LogCaptureFixture) -> None:
    server = grpc.aio.server()
    auth_pb2_grpc.add_AuthServicer_to_server(AuthService(FailingProvider()), server)  # type: ignore[arg-type]
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await auth_pb2_grpc.AuthStub(channel).Login(pb.LoginRequest(username="a", password="b"))
    finally:
        await server.stop(None)
    assert (caught.value.code(), caught.value.details()) == (grpc.StatusCode.INTERNAL, "internal error")
    assert "hunter2" in caplog.text  # logged for the operator
