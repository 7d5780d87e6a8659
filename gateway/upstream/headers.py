"""HPACK (RFC 7541) for gRPC calls: request blocks encoded by hand, response blocks decoded with a cache.

Requests use only static-table references and literals "without indexing", so encoding needs no
state and the part that depends on the method alone is built once per path. For responses the
client announces SETTINGS_HEADER_TABLE_SIZE = 0: the server may then use no dynamic table, every
block stands on its own, and a block seen before (grpc sends the same few, call after call) is
looked up instead of decoded again.
"""

from __future__ import annotations

import hpack

__all__ = ["HeaderBlockDecoder", "encode_header", "request_prefix"]

HeaderList = list[tuple[bytes, bytes]]

_CACHE_LIMIT = 1024
_cache: dict[bytes, HeaderList] = {}


def _integer(value: int, prefix_bits: int, first_byte: int) -> bytes:
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((first_byte | value,))
    out = bytearray((first_byte | limit,))
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _string(value: bytes) -> bytes:
    return _integer(len(value), 7, 0) + value  # no Huffman: cheaper to write, and a valid choice


def encode_header(name: bytes, value: bytes) -> bytes:
    """A literal header field without indexing, with a literal name."""
    return b"\x00" + _string(name) + _string(value)


def request_prefix(authority: bytes, path: bytes) -> bytes:
    """The pseudo-headers and fixed headers of a gRPC request to `path`."""
    return b"".join(
        (
            b"\x83",  # :method POST (static index 3)
            b"\x86",  # :scheme http (static index 6)
            _integer(4, 4, 0) + _string(path),  # :path, name from static index 4
            _integer(1, 4, 0) + _string(authority),  # :authority, static index 1
            _integer(31, 4, 0) + _string(b"application/grpc"),  # content-type, static index 31
            encode_header(b"te", b"trailers"),
            # Browsers cannot decode compressed gRPC-Web frames (grpc/grpc-web#561): ask for none.
            encode_header(b"grpc-accept-encoding", b"identity"),
            encode_header(b"user-agent", b"upf-gateway"),
        )
    )


class HeaderBlockDecoder:
    """One per connection: the decoder state follows that connection's header blocks."""

    __slots__ = ("_decoder",)

    def __init__(self) -> None:
        self._decoder = hpack.Decoder()

    def decode(self, block: bytes) -> HeaderList:
        stateless = self._decoder.header_table.maxsize == 0
        if stateless:
            cached = _cache.get(block)
            if cached is not None:
                return cached
        headers: HeaderList = self._decoder.decode(block, raw=True)  # type: ignore[assignment]
        if stateless and self._decoder.header_table.maxsize == 0:
            if len(_cache) >= _CACHE_LIMIT:
                _cache.clear()
            _cache[block] = headers
        return headers
