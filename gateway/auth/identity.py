"""The caller as the gateway verified it, left in the ASGI scope for everything behind auth.

`scope["upf.identity"]` holds an Identity when the request carried a valid token, and is absent
otherwise (auth disabled, or a public path without a token). Readers: rate-limit keys (`token`),
permission checks, live-event topics, the metadata forwarded to plugins.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from dataclasses import dataclass, field
from typing import Any

from common.auth.permissions import permits

__all__ = ["IDENTITY_SCOPE_KEY", "Identity", "identity_of"]

IDENTITY_SCOPE_KEY = "upf.identity"


@dataclass(frozen=True, slots=True)
class Identity:
    subject: str  # the user id (`sub`)
    issuer: str
    email: str = ""
    roles: tuple[str, ...] = ()
    permissions: tuple[str, ...] = ()
    expires_at: float = 0.0  # unix seconds (`exp`)
    token_id: str | None = None  # `jti`
    session_id: str | None = None  # `sid`
    # The identity as gRPC metadata for plugins (x-upf-user-*), HPACK-encoded once by the verifier.
    metadata: bytes = field(default=b"", repr=False, compare=False)

    def permits(self, permission: str) -> bool:
        return permits(self.permissions, permission)


def identity_of(scope: MutableMapping[str, Any]) -> Identity | None:
    identity = scope.get(IDENTITY_SCOPE_KEY)
    return identity if isinstance(identity, Identity) else None
