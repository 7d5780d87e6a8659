"""common/inflate.py: one whole compressed stream, or an error; never more than the limit."""

from __future__ import annotations

import gzip
import zlib

import pytest

from common.inflate import InflateError, TooLarge, inflate

TEXT = b"hello world " * 50


def test_gzip_and_zlib_streams_inflate_whole() -> None:
    assert inflate(gzip.compress(TEXT), gzip=True, limit=len(TEXT)) == TEXT
    assert inflate(zlib.compress(TEXT), gzip=False, limit=len(TEXT)) == TEXT
    assert inflate(gzip.compress(b""), gzip=True, limit=0) == b""


def test_a_stream_cut_short_is_refused_not_taken_for_a_shorter_message() -> None:
    # zlib alone inflates what arrived and says nothing: the message would go on shortened.
    for cut in (1, 10, 30):
        with pytest.raises(InflateError, match="the compressed stream is cut short"):
            inflate(gzip.compress(TEXT)[:-cut], gzip=True, limit=1 << 20)
        with pytest.raises(InflateError, match="the compressed stream is cut short"):
            inflate(zlib.compress(TEXT)[:-cut], gzip=False, limit=1 << 20)


def test_bytes_after_the_stream_are_refused_but_gzip_members_follow_one_another() -> None:
    with pytest.raises(InflateError, match="incorrect header check"):
        inflate(gzip.compress(TEXT) + b"junk", gzip=True, limit=1 << 20)
    with pytest.raises(InflateError, match="4 bytes follow the end of the compressed stream"):
        inflate(zlib.compress(TEXT) + b"junk", gzip=False, limit=1 << 20)
    # RFC 1952: several members are one gzip stream, as grpc-go's reader takes them.
    assert inflate(gzip.compress(b"hello ") + gzip.compress(b"world"), gzip=True, limit=11) == b"hello world"


def test_garbage_does_not_inflate() -> None:
    with pytest.raises(InflateError):
        inflate(b"not compressed at all", gzip=True, limit=1 << 20)
    with pytest.raises(InflateError):
        inflate(gzip.compress(TEXT), gzip=False, limit=1 << 20)  # gzip where zlib was announced


def test_the_limit_holds_for_the_whole_stream_and_across_members() -> None:
    assert inflate(gzip.compress(TEXT), gzip=True, limit=len(TEXT)) == TEXT
    with pytest.raises(TooLarge, match=f"more than {len(TEXT) - 1} bytes"):
        inflate(gzip.compress(TEXT), gzip=True, limit=len(TEXT) - 1)
    with pytest.raises(TooLarge):
        inflate(gzip.compress(b"hello ") + gzip.compress(b"world"), gzip=True, limit=10)
    bomb = gzip.compress(bytes(50 << 20))  # 50 MiB of zeros in ~50 KiB: stopped at the limit
    with pytest.raises(TooLarge):
        inflate(bomb, gzip=True, limit=1 << 20)
