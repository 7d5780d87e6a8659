"""The auth plugin's servicer on a real grpc.aio server, with the custom provider and an injected clock."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import grpc
import jwt
from upf.auth.v1 import auth_pb2 as pb, auth_pb2_grpc

from common.auth.revocations import MemoryRevocations, Revocations
from plugins.auth.custom import CustomProvider
from plugins.auth.service import AuthService
from plugins.auth.settings import AuthSettings
from plugins.auth.store import AuthStore, SqliteAuthStore

# Cheap argon2 parameters: the tests are about behaviour, not the cost.
FAST_HASH = {"timeCost": 1, "memoryCost": 1024, "parallelism": 1}
ROLES = {"admin": ["*"], "user": ["demo:read"], "clerk": ["orders:*", "demo:read"]}


class Clock:
    def __init__(self, now: float | None = None) -> None:
        self.now = float(int(time.time())) if now is None else now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def make_settings(**overrides: Any) -> AuthSettings:
    data: dict[str, Any] = {
        "jwt": {"issuer": "http://auth.test", "audience": "upf-test", "leeway": 5},
        "session": {"accessTokenTTL": 60, "refreshTokenTTL": 600},
        "custom": {"store": "sqlite", "sqlitePath": ":memory:", "passwordHash": FAST_HASH},
        "roles": ROLES,
    }
    for key, value in overrides.items():
        data[key] = {**data[key], **value} if isinstance(value, dict) and key != "roles" else value
    return AuthSettings.model_validate(data)


@dataclass
class Auth:
    provider: CustomProvider
    revocations: Revocations
    stub: auth_pb2_grpc.AuthAsyncStub
    clock: Clock
    settings: AuthSettings

    async def login(self, username: str = "alice", password: str = "alice-secret") -> pb.TokenResponse:
        return await self.stub.Login(pb.LoginRequest(username=username, password=password))

    async def jwks(self) -> jwt.PyJWKSet:
        reply = await self.stub.GetJwks(pb.GetJwksRequest())
        return jwt.PyJWKSet.from_json(reply.jwks_json)

    async def claims(self, access_token: str) -> dict[str, Any]:
        """Decoded the way a gateway would: with the JWKS, the kid's key and its algorithm only."""
        kid = jwt.get_unverified_header(access_token)["kid"]
        key = (await self.jwks())[kid]
        return jwt.decode(
            access_token,
            key,
            algorithms=[key.algorithm_name],
            audience=self.settings.jwt.audience,
            issuer=self.settings.jwt.issuer,
            options={"verify_exp": False, "verify_iat": False, "verify_nbf": False},
        )

    async def validate(self, token: str) -> pb.TokenValidation:
        return await self.stub.ValidateToken(pb.ValidateTokenRequest(token=token))


@asynccontextmanager
async def serve_auth(
    settings: AuthSettings | None = None,
    *,
    store: AuthStore | None = None,
    clock: Clock | None = None,
    revocations: Revocations | None = None,
    users: bool = True,
) -> AsyncIterator[Auth]:
    settings = settings or make_settings()
    clock = clock or Clock()
    revocations = revocations or MemoryRevocations(clock=clock)
    provider = CustomProvider(
        settings, revocations, store=store or SqliteAuthStore(settings.custom.sqlite_path), clock=clock
    )
    await provider.start(maintenance=False)
    if users:
        await provider.ensure_user("alice", "alice-secret", "alice@example.org", ["user"], name="Alice")
        await provider.ensure_user("root", "root-secret", "root@example.org", ["admin"])
        await provider.ensure_user("carol", "carol-secret", "carol@example.org", ["clerk", "user"])
    server = grpc.aio.server()
    auth_pb2_grpc.add_AuthServicer_to_server(AuthService(provider), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield Auth(provider, revocations, auth_pb2_grpc.AuthStub(channel), clock, settings)
    finally:
        await channel.close(None)
        await server.stop(None)
        await provider.close()
