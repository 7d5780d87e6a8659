"""Permission matching, the one rule used everywhere (manifest policies, events topics, IAuth, the web shell).

Permissions are `area:action` strings. A granted permission matches a required one when equal, when
it is "*", or when it ends in ":*" and the required one is longer and starts with what comes before
the "*" ("orders:*" grants "orders:read" and "orders:items:write", not "ordersx:read"). A "*" in the
required permission has no special meaning: asking for "orders:*" needs "orders:*" or "*".

"orders:*" does not grant "orders:" (nor "orders"): a wildcard stands for the actions of an area, and
an empty action is none of them. A required "orders:" can only come from a mistake (a manifest policy
with the action left out, an events topic that is empty), and a mistake in what is asked must fail
closed rather than be satisfied by every grant in the area. Only an exact "orders:" grant, or "*",
matches it. (The gateway and the auth plugin once had a copy each, and the two disagreed on this.)
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["permits"]


def permits(granted: Iterable[str], required: str) -> bool:
    """Whether the grants cover `required` (a literal permission)."""
    for permission in granted:
        if permission == required or permission == "*":
            return True
        area = permission[:-1]  # "orders:" of "orders:*"
        if permission.endswith(":*") and len(required) > len(area) and required.startswith(area):
            return True
    return False
