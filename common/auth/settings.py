"""The revocation store's settings, one class for both sides of it: the auth plugin publishes logouts
there, every gateway learns them from there (common/auth/revocations.py)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from common.config import RedisUrl, Section

__all__ = ["DEFAULT_REDIS_URL", "RevocationSettings"]

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


class RevocationSettings(Section):
    store: Literal["memory", "redis"] = Field(
        default="memory",
        description=(
            "Where revoked sessions and tokens are published and learnt: this process (memory: `upf run`, "
            "where the gateway and the auth plugin share it), or Redis, where every gateway replica sees a "
            "logout within a second (proto/upf/auth/v1/auth.proto gives the layout)."
        ),
    )
    redis_url: RedisUrl = Field(
        default=DEFAULT_REDIS_URL,
        description="The Redis of the redis store (in the gateway's configuration: redis.url unless set here).",
    )
    key_prefix: str = Field(
        default="upf:auth",
        min_length=1,
        description="Revocations are kept under <prefix>:revoked (the gateways and the auth plugin must agree).",
    )
