"""grpc-timeout, both ways: at most 8 digits and a unit (PROTOCOL-HTTP2.md). The encoder and the decoder
live in common.http2.headers, shared with the plugins' channel and server (common/rpc/); the gateway
refuses a malformed timeout and caps a long one."""

from __future__ import annotations

from common.http2.headers import decode_timeout, encode_timeout
from gateway.errors import BadRequest

__all__ = ["encode_timeout", "parse_timeout"]

# A deadline is an absolute time in int64 nanoseconds in grpc and in many servers: a valid
# "9999999H" overflows it into the past and fails the call at once. Longer deadlines are capped to
# the longest 8-digit second count (~3 years), more than grpc core passes on (27000 h).
_LONGEST_TIMEOUT = 99_999_999.0


def parse_timeout(value: bytes) -> float:
    """A client's `grpc-timeout` in seconds; anything but 1-8 digits and a unit is refused."""
    seconds = decode_timeout(value)
    if seconds is None:
        raise BadRequest(f"grpc-timeout {value.decode('latin-1')!r} is not 1-8 digits followed by H, M, S, m, u or n")
    return min(seconds, _LONGEST_TIMEOUT)
