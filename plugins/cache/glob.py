"""Glob patterns in Redis MATCH syntax, checked once and matched the same way by every backend.

`*` any run of characters, `?` one character, `[abc]`, `[a-z]`, `[^a]` a set, and a backslash takes
the next character literally. Redis itself accepts an unclosed `[` or a trailing backslash and guesses;
we refuse both, so that a pattern means the same thing on every backend.
"""

from __future__ import annotations

import re
from functools import lru_cache

from plugins.cache.errors import InvalidArgument

__all__ = ["MAX_PATTERN_BYTES", "check_pattern", "escape", "matcher"]

MAX_PATTERN_BYTES = 1024
_SPECIAL = frozenset("*?[]\\")


def check_pattern(pattern: str, field: str = "pattern") -> str:
    """`pattern` if it is a valid glob; InvalidArgument naming `field` otherwise."""
    if not pattern:
        raise InvalidArgument(field, "empty; use * for every key")
    if len(pattern.encode()) > MAX_PATTERN_BYTES:
        raise InvalidArgument(field, f"longer than {MAX_PATTERN_BYTES} bytes")
    _translate(pattern, field)
    return pattern


def matcher(pattern: str) -> re.Pattern[str]:
    """A compiled regular expression that full-matches what the (checked) glob matches."""
    return _compiled(pattern)


def escape(text: str) -> str:
    """`text` with every glob character made literal (for a fixed prefix in front of a pattern)."""
    return "".join(f"\\{c}" if c in _SPECIAL else c for c in text)


@lru_cache(maxsize=256)
def _compiled(pattern: str) -> re.Pattern[str]:
    return re.compile(_translate(pattern, "pattern"), re.DOTALL)


def _translate(pattern: str, field: str) -> str:
    out: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "\\":
            if i + 1 == n:
                raise InvalidArgument(field, "ends with a backslash; write \\\\ for a literal one")
            out.append(re.escape(pattern[i + 1]))
            i += 2
        elif c == "*":
            out.append(".*")
            i += 1
        elif c == "?":
            out.append(".")
            i += 1
        elif c == "[":
            i, part = _translate_set(pattern, i + 1, field)
            out.append(part)
        else:
            out.append(re.escape(c))
            i += 1
    return "".join(out)


def _translate_set(pattern: str, i: int, field: str) -> tuple[int, str]:
    """The regex for a set that starts after `[` at `i`, and the index after its `]`."""
    n = len(pattern)
    negate = i < n and pattern[i] == "^"
    if negate:
        i += 1
    items: list[str] = []
    while i < n and pattern[i] != "]":
        c = pattern[i]
        if c == "\\" and i + 1 < n:
            c = pattern[i + 1]
            i += 1
        if i + 2 < n and pattern[i + 1] == "-" and pattern[i + 2] != "]":
            low, high = sorted((c, pattern[i + 2]))  # Redis accepts [z-a] as [a-z]
            items.append(f"{re.escape(low)}-{re.escape(high)}")
            i += 3
        else:
            items.append(re.escape(c))
            i += 1
    if i >= n:
        raise InvalidArgument(field, "has a [ without its ]; write \\[ for a literal one")
    if not items:
        raise InvalidArgument(field, "has an empty set []")
    return i + 1, f"[{'^' if negate else ''}{''.join(items)}]"
