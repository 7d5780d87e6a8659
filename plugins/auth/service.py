"""The gRPC servicer of upf.auth.v1.Auth: each call delegates to the configured Provider.

A provider's AuthError becomes that status and message. Anything else is a bug or an outage: it is
logged here and the client gets INTERNAL "internal error" (or UNAVAILABLE when the store is down),
never the exception's text.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn, TypeAlias, TypeVar

import grpc
from upf.auth.v1 import auth_pb2 as pb, auth_pb2_grpc

from plugins.auth.provider import AuthError, Provider
from plugins.auth.store.base import StoreUnavailable

__all__ = ["AuthService"]

logger = logging.getLogger(__name__)

_Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"
T = TypeVar("T")


class AuthService(auth_pb2_grpc.AuthServicer):
    def __init__(self, provider: Provider) -> None:
        self.provider = provider

    async def _answer(self, context: _Context, method: str, call: Callable[[], Awaitable[T]]) -> T:
        try:
            return await call()
        except AuthError as exc:
            code, message = exc.code, exc.message
        except StoreUnavailable as exc:
            logger.error("auth: %s: %s", method, exc)
            code, message = grpc.StatusCode.UNAVAILABLE, "the auth store is unavailable"
        except Exception:
            logger.exception("auth: %s failed", method)
            code, message = grpc.StatusCode.INTERNAL, "internal error"
        await _abort(context, code, message)

    async def Login(self, request: pb.LoginRequest, context: _Context) -> pb.TokenResponse:
        return await self._answer(context, "Login", lambda: self.provider.login(request.username, request.password))

    async def ValidateToken(self, request: pb.ValidateTokenRequest, context: _Context) -> pb.TokenValidation:
        return await self._answer(context, "ValidateToken", lambda: self.provider.validate(request.token))

    async def GetUserInfo(self, request: pb.GetUserInfoRequest, context: _Context) -> pb.UserInfo:
        return await self._answer(
            context, "GetUserInfo", lambda: self.provider.user_info(request.user_id, request.access_token)
        )

    async def RefreshToken(self, request: pb.RefreshTokenRequest, context: _Context) -> pb.TokenResponse:
        return await self._answer(context, "RefreshToken", lambda: self.provider.refresh(request.refresh_token))

    async def Logout(self, request: pb.LogoutRequest, context: _Context) -> pb.LogoutResponse:
        async def logout() -> pb.LogoutResponse:
            await self.provider.logout(request.token)
            return pb.LogoutResponse()

        return await self._answer(context, "Logout", logout)

    async def GetPermissions(self, request: pb.GetPermissionsRequest, context: _Context) -> pb.GetPermissionsResponse:
        async def permissions() -> pb.GetPermissionsResponse:
            return pb.GetPermissionsResponse(permissions=await self.provider.permissions(request.user_id))

        return await self._answer(context, "GetPermissions", permissions)

    async def CheckPermission(
        self, request: pb.CheckPermissionRequest, context: _Context
    ) -> pb.CheckPermissionResponse:
        async def check() -> pb.CheckPermissionResponse:
            allowed = await self.provider.check_permission(request.user_id, request.permission)
            return pb.CheckPermissionResponse(allowed=allowed)

        return await self._answer(context, "CheckPermission", check)

    async def GetJwks(self, request: pb.GetJwksRequest, context: _Context) -> pb.GetJwksResponse:
        async def jwks() -> pb.GetJwksResponse:
            return pb.GetJwksResponse(jwks_json=await self.provider.jwks())

        return await self._answer(context, "GetJwks", jwks)


async def _abort(context: _Context, code: grpc.StatusCode, message: str) -> NoReturn:
    await context.abort(code, message)
    raise AssertionError("unreachable: abort raises")  # grpc's stubs do not say abort never returns
