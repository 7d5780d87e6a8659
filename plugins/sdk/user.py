"""The user a call is made for, as the gateway verified it: the x-upf-user-* metadata.

    user = user_of(context.invocation_metadata())   # None: no verified user (a public call)
    if "orders:write" not in user.permissions: ...

The gateway sets these on every call it forwards and drops any copy a client sent
(gateway/auth/verify.py writes them): x-upf-user-id and -email percent-encoded (UTF-8), -roles and
-permissions as lists whose items are percent-encoded, commas included, then joined with commas;
so "a,b" is two items and "a%2Cb" is the one item "a,b".
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import unquote

__all__ = ["User", "user_of"]


@dataclass(frozen=True, slots=True)
class User:
    user_id: str
    email: str = ""
    roles: tuple[str, ...] = ()
    permissions: tuple[str, ...] = ()


def user_of(metadata: Iterable[tuple[str, str | bytes]] | None) -> User | None:
    """The verified user of a call's metadata, or None when the gateway named none."""
    values: dict[str, str] = {}
    for key, value in metadata or ():
        if key.startswith("x-upf-user-") and isinstance(value, str):
            values[key] = value
    user_id = values.get("x-upf-user-id")
    if not user_id:
        return None
    return User(
        user_id=unquote(user_id),
        email=unquote(values.get("x-upf-user-email", "")),
        roles=_items(values.get("x-upf-user-roles", "")),
        permissions=_items(values.get("x-upf-user-permissions", "")),
    )


def _items(value: str) -> tuple[str, ...]:
    return tuple(unquote(item) for item in value.split(",") if item)
