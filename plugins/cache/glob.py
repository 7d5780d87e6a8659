"""Glob patterns in Redis MATCH syntax, checked once and matched the same way by every backend.

`*` any run of bytes, `?` one byte, `[abc]`, `[a-z]`, `[^a]` a set of bytes, and a backslash takes the
next byte literally. Bytes, not characters, because Redis matches the UTF-8 bytes of a key: `?` does
not match "é", which is two bytes. Redis itself accepts an unclosed `[` or a trailing backslash and
guesses; we refuse both, so that a pattern means the same thing on every backend.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import lru_cache

from plugins.cache.errors import InvalidArgument

__all__ = ["MAX_PATTERN_BYTES", "check_pattern", "escape", "literal_prefix", "matcher"]

MAX_PATTERN_BYTES = 1024
_SPECIAL = frozenset("*?[]\\")


def check_pattern(pattern: str, field: str = "pattern") -> str:
    """`pattern` if it is a valid glob; InvalidArgument naming `field` otherwise."""
    if not pattern:
        raise InvalidArgument(field, "empty; use * for every key")
    if len(pattern.encode()) > MAX_PATTERN_BYTES:
        raise InvalidArgument(field, f"longer than {MAX_PATTERN_BYTES} bytes")
    _translate(pattern.encode(), field)
    return pattern


def matcher(pattern: str) -> Callable[[str], bool]:
    """Whether a key matches the (checked) glob, as Redis would say."""
    fullmatch = _compiled(pattern).fullmatch
    return lambda key: fullmatch(key.encode()) is not None


def literal_prefix(pattern: str) -> str:
    """The text every key the pattern matches starts with (up to its first glob character): what a
    grant on a key prefix is checked against."""
    end = next((i for i, c in enumerate(pattern) if c in _SPECIAL), len(pattern))
    return pattern[:end]


def escape(text: str) -> str:
    """`text` with every glob character made literal (for a fixed prefix in front of a pattern)."""
    return "".join(f"\\{c}" if c in _SPECIAL else c for c in text)


@lru_cache(maxsize=256)
def _compiled(pattern: str) -> re.Pattern[bytes]:
    return re.compile(_translate(pattern.encode(), "pattern"), re.DOTALL)


def _byte(value: int) -> bytes:
    return b"\\x%02x" % value


def _translate(pattern: bytes, field: str) -> bytes:
    out: list[bytes] = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == 0x5C:  # backslash
            if i + 1 == n:
                raise InvalidArgument(field, "ends with a backslash; write \\\\ for a literal one")
            out.append(_byte(pattern[i + 1]))
            i += 2
        elif c == 0x2A:  # *
            out.append(b".*")
            i += 1
        elif c == 0x3F:  # ?
            out.append(b".")
            i += 1
        elif c == 0x5B:  # [
            i, part = _translate_set(pattern, i + 1, field)
            out.append(part)
        else:
            out.append(_byte(c))
            i += 1
    return b"".join(out)


def _translate_set(pattern: bytes, i: int, field: str) -> tuple[int, bytes]:
    """The regex for a set that starts after `[` at `i`, and the index after its `]`."""
    n = len(pattern)
    negate = i < n and pattern[i] == 0x5E  # ^
    if negate:
        i += 1
    items: list[bytes] = []
    while i < n and pattern[i] != 0x5D:  # ]
        c = pattern[i]
        if c == 0x5C and i + 1 < n:
            c = pattern[i + 1]
            i += 1
        if i + 2 < n and pattern[i + 1] == 0x2D and pattern[i + 2] != 0x5D:  # a-z
            low, high = sorted((c, pattern[i + 2]))  # Redis accepts [z-a] as [a-z]
            items.append(_byte(low) + b"-" + _byte(high))
            i += 3
        else:
            items.append(_byte(c))
            i += 1
    if i >= n:
        raise InvalidArgument(field, "has a [ without its ]; write \\[ for a literal one")
    if not items:
        raise InvalidArgument(field, "has an empty set []")
    return i + 1, b"[" + (b"^" if negate else b"") + b"".join(items) + b"]"
