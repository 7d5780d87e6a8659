"""Inflating a compressed gRPC message or HTTP body: one whole stream, never more than a limit.

What zlib's decompressobj leaves to its caller, and every inflating site here once left out: a stream
cut short inflates to the part that arrived without an error (`eof` stays False), and bytes after the
end of the stream are set aside (`unused_data`) rather than refused. A truncated message taken as
whole would go on as a different, shorter message. gzip may hold several members one after another
(RFC 1952 2.2), which gzip readers such as Go's (grpc-go) read as one stream; so does this.
"""

from __future__ import annotations

import zlib

__all__ = ["InflateError", "TooLarge", "inflate"]


class InflateError(Exception):
    """The bytes are not one whole compressed stream: they do not inflate, stop short, or go on after it."""


class TooLarge(Exception):
    """The stream inflates to more than the limit (inflation stops there: a zip bomb costs no more)."""


def inflate(data: bytes, *, gzip: bool, limit: int) -> bytes:
    """`data` inflated: gzip (RFC 1952), or zlib (RFC 1950, what gRPC calls deflate) when not `gzip`."""
    wbits = 16 + zlib.MAX_WBITS if gzip else zlib.MAX_WBITS
    parts: list[bytes] = []
    size = 0
    rest = data
    while True:
        inflater = zlib.decompressobj(wbits)
        try:
            part = inflater.decompress(rest, limit + 1 - size)  # never 0, which would mean "no limit"
        except zlib.error as exc:
            raise InflateError(str(exc)) from None
        size += len(part)
        if size > limit:
            raise TooLarge(f"inflates to more than {limit} bytes")
        parts.append(part)
        if not inflater.eof:
            raise InflateError("the compressed stream is cut short")
        rest = inflater.unused_data
        if not rest:
            return parts[0] if len(parts) == 1 else b"".join(parts)
        if not gzip:
            raise InflateError(f"{len(rest)} bytes follow the end of the compressed stream")
