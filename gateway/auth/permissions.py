"""Permission matching, the one rule used everywhere (manifest policies, events topics, IAuth).

Permissions are `area:action` strings. A granted permission matches a required one when equal, when
it is "*", or when it ends in ":*" and the required one starts with what comes before the "*"
("orders:*" grants "orders:read" and "orders:items:write", not "ordersx:read").
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["permits"]


def permits(granted: Iterable[str], required: str) -> bool:
    for permission in granted:
        if permission == required or permission == "*":
            return True
        if permission.endswith(":*") and required.startswith(permission[:-1]):
            return True
    return False
