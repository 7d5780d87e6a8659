"""Connect's streaming envelope: one flags byte, a 4-byte big-endian length, the message.

Flag 0x01 marks a compressed message, 0x02 the end-of-stream message: a JSON object (whatever the
codec) with an optional `error` and the trailing `metadata`. Same five bytes as gRPC's framing, other
meaning of the flags, so it is read here and not with gateway.grpcweb's reader.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from gateway.errors import BadRequest

__all__ = ["COMPRESSED", "END_STREAM", "end_stream", "envelope", "read_envelopes"]

COMPRESSED = 0x01
END_STREAM = 0x02
_HEADER = struct.Struct(">BI")


def envelope(data: bytes, flags: int = 0) -> bytes:
    return _HEADER.pack(flags, len(data)) + data


def end_stream(error: Mapping[str, Any] | None, metadata: Mapping[str, Sequence[str]]) -> bytes:
    body: dict[str, Any] = {}
    if error is not None:
        body["error"] = dict(error)
    if metadata:
        body["metadata"] = {key: list(values) for key, values in metadata.items()}
    return envelope(json.dumps(body, separators=(",", ":")).encode(), END_STREAM)


def read_envelopes(body: bytes, *, limit: int) -> Iterator[tuple[int, bytes]]:
    """(flags, message) for each envelope of a request body; BadRequest for a malformed body."""
    offset = 0
    while offset < len(body):
        if len(body) - offset < _HEADER.size:
            raise BadRequest("the body ends inside an envelope header")
        flags, length = _HEADER.unpack_from(body, offset)
        if flags & ~(COMPRESSED | END_STREAM):
            raise BadRequest(f"envelope flags 0x{flags:02x} have reserved bits set")
        if length > limit:
            raise BadRequest(f"a message of {length} bytes is over the limit of {limit}")
        start = offset + _HEADER.size
        if len(body) - start < length:
            raise BadRequest("the body ends inside a message")
        yield flags, body[start : start + length]
        offset = start + length
