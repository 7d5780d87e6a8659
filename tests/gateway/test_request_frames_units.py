"""Unit tests for RequestFrames (gateway/wire/request_frames.py), the check every request stream passes.

The byte-level tests (test_grpcweb_framing.py, test_grpc_websockets.py) reach it only through a
gateway subprocess; these run in process, in microseconds, and pin each refusal's exact message,
the one a client reads in grpc-message.
"""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Callable

import pytest

from gateway.errors import MalformedMessage, MessageTooLarge
from gateway.wire.framing import encode_frame
from gateway.wire.request_frames import RequestFrames

COMPRESSORS: dict[str, Callable[[bytes], bytes]] = {"gzip": gzip.compress, "deflate": zlib.compress}


def upstream_bytes(frames: RequestFrames, *chunks: bytes) -> bytes:
    """What goes upstream for `chunks`, the request then half-closed."""
    sent = b"".join(bytes(frames.feed(chunk)) for chunk in chunks)
    frames.close()
    return sent


# Without a grpc-encoding: the bytes pass as they came


def test_plain_frames_cut_anywhere_go_upstream_unchanged() -> None:
    stream = encode_frame(b"first") + encode_frame(b"") + encode_frame(b"third")
    for cut in range(1, len(stream)):
        assert upstream_bytes(RequestFrames(1024, None), stream[:cut], stream[cut:]) == stream


def test_a_plain_frame_flagged_compressed_is_refused() -> None:
    with pytest.raises(MalformedMessage) as refused:
        RequestFrames(1024, None).feed(encode_frame(b"\x1f\x8b", 0x01))
    assert refused.value.message == "request frame is flagged compressed but no grpc-encoding was given"


def test_a_plain_frame_at_the_limit_goes_upstream() -> None:
    assert upstream_bytes(RequestFrames(16, None), encode_frame(b"x" * 16)) == encode_frame(b"x" * 16)


def test_a_plain_frame_over_the_limit_is_refused_at_its_prefix() -> None:
    with pytest.raises(MessageTooLarge) as refused:
        RequestFrames(16, None).feed(encode_frame(b"x" * 17)[:5])
    assert refused.value.message == "request message is 17 bytes, larger than the gateway's limit of 16 bytes"


# With a grpc-encoding: compressed frames are inflated, the upstream gets them uncompressed


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_compressed_messages_are_inflated_and_sent_on_uncompressed(encoding: str) -> None:
    message = b"squeezed " * 100
    stream = encode_frame(COMPRESSORS[encoding](message), 0x01) + encode_frame(b"plain")
    # The upstream is told no encoding, so every frame it gets must carry the flag byte 0x00.
    expected = encode_frame(message) + encode_frame(b"plain")
    assert upstream_bytes(RequestFrames(1024, encoding), stream) == expected
    one_byte_chunks = [stream[i : i + 1] for i in range(len(stream))]
    assert upstream_bytes(RequestFrames(1024, encoding), *one_byte_chunks) == expected


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_a_compressed_message_at_the_limit_once_inflated_is_accepted(encoding: str) -> None:
    frame = encode_frame(COMPRESSORS[encoding](b"x" * 1000), 0x01)
    assert upstream_bytes(RequestFrames(1000, encoding), frame) == encode_frame(b"x" * 1000)


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_a_compressed_message_over_the_limit_once_inflated_is_refused(encoding: str) -> None:
    # A few dozen bytes on the wire, well under the limit: only inflating shows the size.
    frame = encode_frame(COMPRESSORS[encoding](b"x" * 1001), 0x01)
    assert len(frame) < 100
    with pytest.raises(MessageTooLarge) as refused:
        RequestFrames(1000, encoding).feed(frame)
    assert refused.value.message == "request message decompresses to more than the gateway's limit of 1000 bytes"


def test_a_frame_that_does_not_inflate_is_malformed() -> None:
    with pytest.raises(MalformedMessage) as refused:
        RequestFrames(1024, "gzip").feed(encode_frame(b"not gzip at all", 0x01))
    # zlib's own explanation follows, in its words (they vary between zlib versions).
    assert refused.value.message.startswith("request frame cannot be decompressed with gzip: ")


@pytest.mark.parametrize(
    ("encoding", "compress"), [("gzip", gzip.compress), ("deflate", zlib.compress)], ids=["gzip", "deflate"]
)
def test_a_whole_frame_holding_a_cut_short_stream_is_malformed_not_a_shorter_message(
    encoding: str, compress: Callable[[bytes], bytes]
) -> None:
    # The frame is whole; the compressed stream in it is not. Taken as it inflates, the plugin would get
    # "hello worldh..." as if it were the message the client sent.
    with pytest.raises(MalformedMessage) as refused:
        RequestFrames(1024, encoding).feed(encode_frame(compress(b"hello world" * 10)[:-10], 0x01))
    assert (
        refused.value.message
        == f"request frame cannot be decompressed with {encoding}: the compressed stream is cut short"
    )


# Either way: a request holds whole message frames only


@pytest.mark.parametrize("encoding", [None, "gzip", "deflate"])
@pytest.mark.parametrize("flags", [0x80, 0x81])
def test_a_trailer_flagged_frame_in_a_request_is_refused(encoding: str | None, flags: int) -> None:
    frames = RequestFrames(1024, encoding)
    stream = encode_frame(b"fine") + encode_frame(b"grpc-status: 0\r\n", flags)
    with pytest.raises(MalformedMessage) as refused:
        frames.feed(stream)
    assert refused.value.message == "request carries a trailer frame; only message frames are allowed"


@pytest.mark.parametrize("encoding", [None, "gzip"])
def test_a_frame_with_an_undefined_flag_bit_is_refused(encoding: str | None) -> None:
    with pytest.raises(MalformedMessage) as refused:
        RequestFrames(1024, encoding).feed(encode_frame(b"", 0x1E))
    assert refused.value.message == (
        "request frame has the flag byte 0x1e; a message frame's is 0x00, or 0x01 when compressed"
    )


@pytest.mark.parametrize("encoding", [None, "gzip"])
@pytest.mark.parametrize(
    ("sent", "message"),
    [
        (b"\x00\x00\x00", "request ends inside a frame prefix (3 of 5 bytes)"),
        (encode_frame(b"12345")[:5], "request frame announces 5 bytes but only 0 arrived"),
        (encode_frame(b"12345")[:-2], "request frame announces 5 bytes but only 3 arrived"),
    ],
)
def test_a_request_cut_short_is_malformed_at_the_half_close(encoding: str | None, sent: bytes, message: str) -> None:
    frames = RequestFrames(1024, encoding)
    frames.feed(sent)
    with pytest.raises(MalformedMessage) as refused:
        frames.close()
    assert refused.value.message == message
