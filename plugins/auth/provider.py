"""What every IAuth provider implements; the gRPC servicer only delegates to one of these.

Answers are the proto messages themselves. A failure a caller should see raises AuthError with the
gRPC status to answer (UNAUTHENTICATED for bad credentials or tokens, NOT_FOUND for an unknown user,
UNIMPLEMENTED for what a provider cannot do, UNAVAILABLE when its store or issuer is down).
"""

from __future__ import annotations

from typing import Protocol

import grpc
from upf.auth.v1 import auth_pb2 as pb

__all__ = ["AuthError", "Provider"]


class AuthError(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Provider(Protocol):
    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def login(self, username: str, password: str) -> pb.TokenResponse: ...

    async def validate(self, token: str) -> pb.TokenValidation: ...

    async def user_info(self, user_id: str, access_token: str) -> pb.UserInfo: ...

    async def refresh(self, refresh_token: str) -> pb.TokenResponse: ...

    async def logout(self, token: str) -> None: ...

    async def permissions(self, user_id: str) -> list[str]: ...

    async def check_permission(self, user_id: str, permission: str) -> bool: ...

    async def jwks(self) -> str:
        """The JWKS document as JSON text."""
        ...
