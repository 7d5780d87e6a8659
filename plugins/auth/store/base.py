"""What the custom provider keeps: users, roles, refresh tokens and signing keys, behind one contract.

Two implementations pass the same contract tests (tests/plugins/auth/test_store_contract.py):
sqlite.py (embedded, the default) and postgres.py (shared by plugin replicas). Both create their
tables on start, idempotently; every table name starts with `auth_`, so a database can be shared.
Times are unix seconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

__all__ = ["AuthStore", "KeySchedule", "RefreshToken", "ScheduledKey", "SigningKey", "StoreUnavailable", "User"]


class StoreUnavailable(Exception):
    """The store does not answer (the database is down or unreachable)."""


@dataclass(frozen=True, slots=True)
class User:
    id: str
    username: str
    email: str
    name: str
    password_hash: str
    disabled: bool
    created_at: float


@dataclass(frozen=True, slots=True)
class RefreshToken:
    token_hash: str  # SHA-256 of the opaque token, hex: the token itself is never stored
    family: str  # the session (`sid` of its access tokens): one login and every refresh after it
    user_id: str
    issued_at: int
    expires_at: int
    access_expires_at: int  # exp of the access token issued with it (how long a revocation must last)
    used: bool = False  # spent by a refresh; presenting it again is reuse
    revoked: bool = False  # its session was ended (logout or reuse)


@dataclass(frozen=True, slots=True)
class SigningKey:
    kid: str  # RFC 7638 thumbprint of the public key
    alg: str  # "RS256" or "EdDSA"
    private_pem: str  # PKCS#8 PEM
    created_at: float
    signs_from: float  # published (verifies) from created_at, signs from signs_from
    retired_at: float | None = None  # no longer signs from then on; still verifies its tokens


class ScheduledKey(Protocol):
    """What KeySchedule reads of a key (a SigningKey, or the key ring's loaded key)."""

    @property
    def alg(self) -> str: ...

    @property
    def signs_from(self) -> float: ...


@dataclass(frozen=True, slots=True)
class KeySchedule:
    """When the key that signs last in the schedule needs a successor, and from when that one signs.

    A key signs for `interval` seconds. Its successor is stored, hence in the JWKS, at least
    `publish_ahead` seconds before it signs (gateways fetch the JWKS every jwksMaxAge seconds, and
    know it before they meet its tokens). It is stored `check_every` seconds earlier still (how often
    the schedule is looked at), so that a successor created on time starts exactly at the end of the
    interval; one created late (the plugin was stopped) starts `publish_ahead` seconds after it was
    created, and its predecessor signs until then. The first key, and a key replacing one of another
    algorithm than the configured one, sign at once: no token of the right kind could be signed otherwise.
    """

    alg: str
    interval: float
    publish_ahead: float
    check_every: float = 0.0

    def successor_signs_from(self, last: ScheduledKey | None, now: float) -> float | None:
        """When a new key must start signing, given the last key of the schedule (the only one not
        retired); None while `last` needs no successor yet."""
        if last is None or last.alg != self.alg:
            return now
        end = last.signs_from + self.interval
        if now < end - self.publish_ahead - self.check_every:
            return None
        return max(end, now + self.publish_ahead)


class AuthStore(Protocol):
    async def start(self) -> None:
        """Connect and create the tables if they are missing."""
        ...

    async def close(self) -> None: ...

    # Users

    async def add_user(self, user: User) -> bool:
        """Insert a user; False (and no change) when the username or id is taken."""
        ...

    async def user_by_id(self, user_id: str) -> User | None: ...

    async def user_by_name(self, username: str) -> User | None: ...

    async def update_user(
        self,
        user_id: str,
        *,
        email: str | None = None,
        name: str | None = None,
        password_hash: str | None = None,
        disabled: bool | None = None,
    ) -> bool:
        """Change the given fields; False when there is no such user."""
        ...

    # Roles

    async def put_role(self, role: str, permissions: list[str]) -> None:
        """Create a role or replace its permissions."""
        ...

    async def roles(self) -> dict[str, list[str]]:
        """Every role and its permissions (sorted)."""
        ...

    async def set_user_roles(self, user_id: str, roles: list[str]) -> None:
        """Replace the user's roles."""
        ...

    async def user_roles(self, user_id: str) -> list[str]:
        """The user's roles, sorted."""
        ...

    async def user_permissions(self, user_id: str) -> list[str]:
        """The union of the permissions of the user's roles, sorted."""
        ...

    # Refresh tokens

    async def add_refresh_token(self, token: RefreshToken) -> None: ...

    async def refresh_token(self, token_hash: str) -> RefreshToken | None: ...

    async def spend_refresh_token(self, token_hash: str) -> bool:
        """Mark a live (not used, not revoked) token used; False when it was not live. Atomic: of
        two concurrent spends of the same token exactly one succeeds."""
        ...

    async def revoke_family(self, family: str) -> int:
        """Revoke every refresh token of a session; how many were still unrevoked."""
        ...

    async def family_expiry(self, family: str) -> int | None:
        """The latest access-token exp of a session, or None when it has no tokens."""
        ...

    async def delete_expired_refresh_tokens(self, now: int) -> int:
        """Forget refresh tokens that expired before `now`; how many."""
        ...

    # Signing keys

    async def signing_keys(self) -> list[SigningKey]:
        """Every stored key, newest first."""
        ...

    async def schedule_signing_key(self, candidate: SigningKey, schedule: KeySchedule, *, now: float) -> SigningKey:
        """The last key of the schedule after giving it a successor if it needs one, decided under a lock
        that replicas share (of several replicas that find a successor due, only the first stores one).

        The last key is the newest (by signs_from) key not retired. When schedule.successor_signs_from
        says it needs no successor, it is returned unchanged. Otherwise, with T that answer, every key
        not retired by T is retired at T (the last key: its successor takes over then) and `candidate`
        is stored to sign from T, and returned.
        """
        ...

    async def delete_signing_keys_retired_by(self, when: float) -> int:
        """Forget keys retired at or before `when` (every token they signed has expired); how many."""
        ...
