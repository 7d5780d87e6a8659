"""Counters are values holding a signed 64-bit integer in decimal ASCII, as Redis stores them."""

from __future__ import annotations

import re

from plugins.cache.errors import FailedPrecondition

__all__ = ["INT64_MAX", "INT64_MIN", "add", "parse"]

INT64_MAX = 2**63 - 1
INT64_MIN = -(2**63)
_DECIMAL = re.compile(rb"-?(0|[1-9][0-9]{0,18})")


def parse(key: str, value: bytes) -> int:
    number = int(value) if _DECIMAL.fullmatch(value) else None
    if number is None or not INT64_MIN <= number <= INT64_MAX:
        raise FailedPrecondition(f"key {key!r} does not hold a signed 64-bit integer")
    return number


def add(key: str, current: int, delta: int) -> int:
    result = current + delta
    if not INT64_MIN <= result <= INT64_MAX:
        raise FailedPrecondition(f"key {key!r}: the counter would overflow a signed 64-bit integer")
    return result
