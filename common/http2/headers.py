"""HPACK (RFC 7541) for gRPC calls: request blocks encoded by hand, response blocks decoded with a cache.

Requests: the headers every call repeats (content-type, te, :authority, :path, ...) enter the
upstream's dynamic table the first time and are one- or two-byte indexes after that, as grpc's own
clients do; a server decodes an index far more cheaply than a literal. Metadata and grpc-timeout
change from call to call and go as literals "without indexing". Entries are never evicted: a
header that does not fit any more goes as a literal, so an index, once given, stays valid.
Responses: grpc servers index the headers they repeat too, so after the first calls a response's
header blocks are the same few byte strings, call after call. A block seen before is looked up
instead of decoded again, as long as the dynamic table has not changed since: any block that adds
to the table empties the cache. (Announcing a table of size 0 would make every block stand alone,
but then the server encodes every header as a literal on every call: it cost the upstream ~25 us
of CPU per call.) The ingress server decodes its clients' request blocks the same way: grpc
clients index what they repeat as well. A cached list is shared by every call that decoded the
same block, so whoever gets one reads it and never changes it.
"""

from __future__ import annotations

import math
import re
from urllib.parse import quote

import hpack

__all__ = [
    "HeaderBlockDecoder", "RequestEncoder", "decode_timeout", "encode_header", "encode_timeout", "percent_encode",
]  # fmt: skip

HeaderList = list[tuple[bytes, bytes]]

_CACHE_LIMIT = 1024


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


def encode_timeout(seconds: float) -> bytes:
    """grpc-timeout: at most 8 digits and a unit, rounded up so the upstream never sees a shorter deadline."""
    for unit, scale in ((b"m", 1e3), (b"S", 1.0), (b"M", 1 / 60), (b"H", 1 / 3600)):
        value = math.ceil(seconds * scale)
        if value < 100_000_000:
            return str(max(value, 0)).encode() + unit
    return b"99999999H"


_TIMEOUT = re.compile(rb"^(\d{1,8})([HMSmun])$")
_TIMEOUT_UNITS = {b"H": 3600.0, b"M": 60.0, b"S": 1.0, b"m": 1e-3, b"u": 1e-6, b"n": 1e-9}


def decode_timeout(value: bytes) -> float | None:
    """grpc-timeout in seconds; None unless it is 1-8 digits and a unit (what to do then is the reader's)."""
    match = _TIMEOUT.match(value)
    if match is None:
        return None
    return int(match.group(1)) * _TIMEOUT_UNITS[match.group(2)]


def percent_encode(message: str) -> str:
    """A grpc-message, percent-encoded: everything outside printable ASCII, and '%' itself."""
    # gRPC's rule (PROTOCOL-HTTP2.md) keeps space and every other printable ASCII byte as is;
    # grpc-web JS runs decodeURIComponent on it, so a bare '%' would break the client.
    return quote(message, safe=" !\"#$&'()*+,-./:;<=>?@[\\]^_`{|}~")


_DEFAULT_TABLE_SIZE = 4096  # SETTINGS_HEADER_TABLE_SIZE until the upstream says otherwise
# Static-table indexes of the names used below (RFC 7541 appendix A).
_AUTHORITY, _PATH, _CONTENT_TYPE = 1, 4, 31


class RequestEncoder:
    """One per connection: its blocks must reach the upstream in the order they were encoded.
    `user_agent` names the client to the upstream (the gateway, or a plugin's SDK)."""

    __slots__ = ("_capacity", "_entries", "_inserted", "_prefixes", "_size", "_size_update", "_user_agent")

    def __init__(self, user_agent: bytes = b"upf-gateway") -> None:
        self._user_agent = user_agent
        self._capacity = _DEFAULT_TABLE_SIZE
        self._entries: dict[tuple[int | bytes, bytes], int] = {}  # header -> its insertion number
        self._inserted = 0
        self._size = 0
        self._size_update = b""  # dynamic table size update(s) owed at the start of the next block
        self._prefixes: dict[tuple[bytes, bytes], bytes] = {}

    def set_table_size(self, size: int) -> None:
        """The upstream's SETTINGS_HEADER_TABLE_SIZE changed."""
        size = min(size, _DEFAULT_TABLE_SIZE)
        if size < self._size or size < self._capacity:
            # Empty the table (size 0), then announce the new limit; indexing starts afresh.
            self._size_update = _integer(0, 5, 0x20) + _integer(size, 5, 0x20)
            self._entries.clear()
            self._prefixes.clear()
            self._size = 0
        self._capacity = size

    def _field(self, name: int | bytes, value: bytes) -> bytes:
        key = (name, value)
        number = self._entries.get(key)
        if number is not None:
            return _integer(62 + self._inserted - 1 - number, 7, 0x80)  # indexed header field
        size = (len(name) if isinstance(name, bytes) else _STATIC_NAME_SIZES[name]) + len(value) + 32
        if self._size + size > self._capacity:
            return _integer(name, 4, 0) + _string(value) if isinstance(name, int) else encode_header(name, value)
        self._entries[key] = self._inserted
        self._inserted += 1
        self._size += size
        self._prefixes.clear()  # an index counts back from the newest entry: cached blocks are now wrong
        # Literal with incremental indexing: the upstream adds it to its table.
        if isinstance(name, int):
            return _integer(name, 6, 0x40) + _string(value)
        return b"\x40" + _string(name) + _string(value)

    def prefix(self, authority: bytes, path: bytes) -> bytes:
        """The pseudo-headers and fixed headers of a gRPC request to `path`."""
        key = (authority, path)
        cached = self._prefixes.get(key)
        if cached is not None and not self._size_update:
            return cached
        fields = (
            (_PATH, path),
            (_AUTHORITY, authority),
            (_CONTENT_TYPE, b"application/grpc"),
            (b"te", b"trailers"),
            # Browsers cannot decode compressed gRPC-Web frames (grpc/grpc-web#561): ask for none.
            (b"grpc-accept-encoding", b"identity"),
            (b"user-agent", self._user_agent),
        )
        all_indexed = not self._size_update and all(field in self._entries for field in fields)
        block = b"".join(
            (
                self._size_update,
                b"\x83",  # :method POST (static index 3)
                b"\x86",  # :scheme http (static index 6)
                *(self._field(name, value) for name, value in fields),
            )
        )
        self._size_update = b""
        if all_indexed:
            # Indexes only: the same bytes for every later call, until the table is reset.
            self._prefixes[key] = block
        return block


_STATIC_NAME_SIZES = {_AUTHORITY: len(":authority"), _PATH: len(":path"), _CONTENT_TYPE: len("content-type")}


class HeaderBlockDecoder:
    """One per connection: the decoder state follows that connection's header blocks."""

    __slots__ = ("_cache", "_decoder")

    def __init__(self) -> None:
        self._decoder = hpack.Decoder()
        self._cache: dict[bytes, HeaderList] = {}

    def decode(self, block: bytes) -> HeaderList:
        cached = self._cache.get(block)
        if cached is not None:
            return cached
        table = self._decoder.header_table
        entries = table.dynamic_entries
        newest, count, size = (entries[0] if entries else None), len(entries), table.maxsize
        headers: HeaderList = self._decoder.decode(block, raw=True)  # type: ignore[assignment]
        # An insertion puts a new entry first; a size update changes maxsize. Either one changes
        # what the indexes in every cached block mean.
        if (entries[0] if entries else None) is newest and len(entries) == count and table.maxsize == size:
            if len(self._cache) >= _CACHE_LIMIT:
                self._cache.clear()
            self._cache[block] = headers
        else:
            self._cache.clear()
        return headers
