"""Identity tokens: the registry says, in a signed JWT, which plugin a registered instance is.

A plugin sends its token (metadata `upf-caller-token`) on every call to another plugin. The callee
checks the signature with the registry's public keys (GetIdentityKeys), so it knows its caller from a
credential the caller could not make up; infrastructure plugins keep each caller's data apart by it.
The token names the plugin id the registry accepted at Register (who may register an id is the
registration's own check).

One Ed25519 key per store: registries that share a Redis store share the key (the first one to start
writes it, the others read it), so a token from one verifies with the keys any of them serves. With
the memory store the key lives and dies with the process, as the registrations do.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from collections.abc import Callable

import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from registry.store.base import PluginStore

__all__ = ["AUDIENCE", "ISSUER", "IdentityIssuer"]

ISSUER = "upf-registry"
AUDIENCE = "upf-plugins"


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


class IdentityIssuer:
    def __init__(self, key: Ed25519PrivateKey, *, ttl: float, clock: Callable[[], float] = time.time) -> None:
        self._key = key
        self._ttl = ttl
        self._clock = clock
        public = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        self.kid = hashlib.sha256(public).hexdigest()[:16]
        jwk = {"kty": "OKP", "crv": "Ed25519", "x": _b64url(public), "kid": self.kid, "alg": "EdDSA", "use": "sig"}
        self.jwks_json = json.dumps({"keys": [jwk]})

    @classmethod
    async def from_store(
        cls, store: PluginStore, *, ttl: float, clock: Callable[[], float] = time.time
    ) -> IdentityIssuer:
        """The issuer with the store's key (this process's fresh one if the store has none yet)."""
        fresh = Ed25519PrivateKey.generate().private_bytes_raw()
        raw = await store.signing_key(fresh)
        return cls(Ed25519PrivateKey.from_private_bytes(raw), ttl=ttl, clock=clock)

    def issue(self, plugin_id: str, instance_id: str) -> str:
        now = int(self._clock())
        claims = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": plugin_id,
            "iid": instance_id,
            "iat": now,
            "exp": now + int(self._ttl),
        }
        return jwt.encode(claims, self._key, algorithm="EdDSA", headers={"kid": self.kid})
