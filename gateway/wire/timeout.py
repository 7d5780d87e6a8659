"""grpc-timeout, both ways: at most 8 digits and a unit (PROTOCOL-HTTP2.md). The encoder lives in
common.http2.headers, shared with the plugins' channel (common/rpc/channel.py)."""

from __future__ import annotations

import re

from common.http2.headers import encode_timeout
from gateway.errors import BadRequest

__all__ = ["encode_timeout", "parse_timeout"]

_TIMEOUT = re.compile(rb"^(\d{1,8})([HMSmun])$")
_TIMEOUT_UNITS = {b"H": 3600.0, b"M": 60.0, b"S": 1.0, b"m": 1e-3, b"u": 1e-6, b"n": 1e-9}
# A deadline is an absolute time in int64 nanoseconds in grpc and in many servers: a valid
# "9999999H" overflows it into the past and fails the call at once. Longer deadlines are capped to
# the longest 8-digit second count (~3 years), more than grpc core passes on (27000 h).
_LONGEST_TIMEOUT = 99_999_999.0


def parse_timeout(value: bytes) -> float:
    """A client's `grpc-timeout` in seconds; anything but 1-8 digits and a unit is refused."""
    match = _TIMEOUT.match(value)
    if match is None:
        raise BadRequest(f"grpc-timeout {value.decode('latin-1')!r} is not 1-8 digits followed by H, M, S, m, u or n")
    return min(int(match.group(1)) * _TIMEOUT_UNITS[match.group(2)], _LONGEST_TIMEOUT)
