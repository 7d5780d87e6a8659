"""Signing keys of the custom provider: generation (Ed25519 or RSA 2048), RFC 7638 key ids, JWKs.

A stored key is its private half as PKCS#8 PEM; the public half and the JWK are derived from it.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from plugins.auth.store.base import SigningKey

__all__ = ["LoadedKey", "generate_key", "load_key", "public_jwk", "thumbprint"]

PrivateKey = ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey
PublicKey = ed25519.Ed25519PublicKey | rsa.RSAPublicKey

RSA_BITS = 2048


@dataclass(frozen=True, slots=True)
class LoadedKey:
    kid: str
    alg: str
    private: PrivateKey
    public: PublicKey
    jwk: dict[str, str]  # public members only, with kid, alg and use
    created_at: float
    signs_from: float
    retired_at: float | None


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _uint(value: int) -> str:
    return _b64(value.to_bytes((value.bit_length() + 7) // 8 or 1, "big"))


def _required_members(public: PublicKey) -> dict[str, str]:
    """The members RFC 7638 hashes (and the whole public JWK, before kid, alg and use)."""
    if isinstance(public, ed25519.Ed25519PublicKey):
        raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return {"crv": "Ed25519", "kty": "OKP", "x": _b64(raw)}
    numbers = public.public_numbers()
    return {"e": _uint(numbers.e), "kty": "RSA", "n": _uint(numbers.n)}


def thumbprint(public: PublicKey) -> str:
    """RFC 7638: SHA-256 of the required members as compact JSON with sorted keys, base64url."""
    members = json.dumps(_required_members(public), sort_keys=True, separators=(",", ":"))
    return _b64(hashlib.sha256(members.encode("utf-8")).digest())


def public_jwk(public: PublicKey, alg: str) -> dict[str, str]:
    return {**_required_members(public), "kid": thumbprint(public), "alg": alg, "use": "sig"}


def generate_key(alg: str, created_at: float, passphrase: bytes | None = None) -> SigningKey:
    """A new key for `alg` ("EdDSA" or "RS256"), signing from its creation until the store schedules it
    (KeySchedule), its private part encrypted with `passphrase` when one is given; RSA takes tens of
    milliseconds, so run it in a thread."""
    private: PrivateKey
    if alg == "EdDSA":
        private = ed25519.Ed25519PrivateKey.generate()
    elif alg == "RS256":
        private = rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS)
    else:
        raise ValueError(f"unsupported signing algorithm {alg!r} (RS256 or EdDSA)")
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase) if passphrase else serialization.NoEncryption()
    )
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption).decode(
        "ascii"
    )
    return SigningKey(thumbprint(private.public_key()), alg, pem, created_at, created_at)


def load_key(key: SigningKey, passphrase: bytes | None = None) -> LoadedKey:
    """A stored key, decrypted with `passphrase` if it was stored encrypted; ValueError if it cannot be."""
    pem = key.private_pem.encode("ascii")
    encrypted = b"ENCRYPTED PRIVATE KEY" in pem
    if encrypted and not passphrase:
        raise ValueError(f"stored key {key.kid} is encrypted and custom.keyPassphrase is not set")
    try:
        private: Any = serialization.load_pem_private_key(pem, password=passphrase if encrypted else None)
    except (ValueError, TypeError):
        raise ValueError(f"stored key {key.kid} cannot be read (a wrong custom.keyPassphrase?)") from None
    expected = ed25519.Ed25519PrivateKey if key.alg == "EdDSA" else rsa.RSAPrivateKey
    if not isinstance(private, expected):
        raise ValueError(f"stored key {key.kid} is not a key for {key.alg}")
    public = private.public_key()
    jwk = public_jwk(public, key.alg)
    return LoadedKey(key.kid, key.alg, private, public, jwk, key.created_at, key.signs_from, key.retired_at)
