"""Permission grants with wildcards: "*" grants every permission, "orders:*" every one that starts "orders:"."""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["permits"]


def permits(granted: Iterable[str], wanted: str) -> bool:
    """Whether the grants cover `wanted` (a literal permission; a "*" in it has no special meaning)."""
    for grant in granted:
        if grant == wanted or grant == "*":
            return True
        if grant.endswith(":*") and wanted.startswith(grant[:-1]) and len(wanted) > len(grant) - 1:
            return True
    return False
