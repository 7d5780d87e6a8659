"""Unit tests for the pure gRPC-Web modules: frame and base64 decoding, grpc-message and grpc-timeout.

These pin the building blocks the byte-level tests (test_grpcweb_*.py) exercise through the real
gateway; they run in microseconds, so edge cases are enumerated here rather than over HTTP.
"""

from __future__ import annotations

import base64
import struct
from urllib.parse import unquote

import pytest

from gateway.errors import BadRequest, MalformedMessage, MessageTooLarge
from gateway.grpcweb.text import TextDecoder, encode_text
from gateway.wire.framing import FrameDecoder, encode_frame, encode_trailer_block
from gateway.wire.status import percent_encode
from gateway.wire.timeout import parse_timeout

FRAMES = [(0, b"first"), (0, b""), (0x01, b"\x1f\x8b compressed"), (0x80, b"grpc-status: 0\r\n")]
STREAM = b"".join(encode_frame(payload, flags) for flags, payload in FRAMES)


# FrameDecoder


def test_encode_frame_is_flags_then_big_endian_length_then_payload() -> None:
    assert encode_frame(b"abc") == b"\x00\x00\x00\x00\x03abc"
    assert encode_frame(b"", 0x80) == b"\x80\x00\x00\x00\x00"


def test_f14_several_frames_in_one_chunk_come_out_in_order() -> None:
    decoder = FrameDecoder(1024)
    assert decoder.feed(STREAM) == FRAMES
    decoder.close()


def test_f13_frames_fed_one_byte_at_a_time_come_out_whole() -> None:
    decoder = FrameDecoder(1024)
    frames = []
    for index in range(len(STREAM)):
        frames += decoder.feed(STREAM[index : index + 1])
    assert frames == FRAMES
    decoder.close()


@pytest.mark.parametrize("cut", range(1, len(STREAM)))
def test_f13_frames_split_at_any_point_come_out_whole(cut: int) -> None:
    decoder = FrameDecoder(1024)
    assert decoder.feed(STREAM[:cut]) + decoder.feed(STREAM[cut:]) == FRAMES
    decoder.close()


def test_f7_zero_length_frame_is_an_empty_payload() -> None:
    decoder = FrameDecoder(1024)
    assert decoder.feed(b"\x00\x00\x00\x00\x00") == [(0, b"")]
    decoder.close()


def test_f15_message_at_the_limit_is_accepted() -> None:
    assert FrameDecoder(16).feed(encode_frame(b"x" * 16)) == [(0, b"x" * 16)]


def test_f15_length_prefix_over_the_limit_fails_before_the_payload_arrives() -> None:
    decoder = FrameDecoder(16)
    with pytest.raises(MessageTooLarge, match="17 bytes, larger than the gateway's limit of 16 bytes"):
        decoder.feed(struct.pack(">BI", 0, 17))


def test_f15_length_prefix_of_4_gib_fails_without_buffering() -> None:
    decoder = FrameDecoder(1024 * 1024)
    with pytest.raises(MessageTooLarge, match="4294967295 bytes"):
        decoder.feed(b"\x00\xff\xff\xff\xff")


def test_f10_end_of_input_inside_a_prefix_is_malformed() -> None:
    decoder = FrameDecoder(1024)
    assert decoder.feed(b"\x00\x00\x00") == []
    with pytest.raises(MalformedMessage, match="inside a frame prefix"):
        decoder.close()


def test_f10_end_of_input_inside_a_payload_is_malformed() -> None:
    decoder = FrameDecoder(1024)
    assert decoder.feed(encode_frame(b"12345")[:-2]) == []
    with pytest.raises(MalformedMessage, match="announces 5 bytes but only 3 arrived"):
        decoder.close()


def test_f10_end_of_input_right_after_a_whole_prefix_says_none_of_the_payload_arrived() -> None:
    # The boundary: 5 bytes are a whole prefix, so the client is told the length it announced.
    decoder = FrameDecoder(1024)
    assert decoder.feed(encode_frame(b"12345")[:5]) == []
    with pytest.raises(MalformedMessage) as refused:
        decoder.close()
    assert refused.value.message == "request frame announces 5 bytes but only 0 arrived"


def test_encode_trailer_block_is_lower_case_key_value_crlf_lines() -> None:
    block = encode_trailer_block([("Grpc-Status", "0"), ("X-Thing", "a b")])
    assert block == b"grpc-status: 0\r\nx-thing: a b\r\n"


# TextDecoder and encode_text


def _decode_all(chunks: list[bytes]) -> bytes:
    decoder = TextDecoder()
    out = b"".join(decoder.feed(chunk) for chunk in chunks)
    return out + decoder.close()


def test_t3_encode_text_is_one_padded_base64_chunk() -> None:
    assert encode_text(b"\x00\x00\x00\x00\x01a") == b"AAAAAAFh"
    assert encode_text(b"\x80") == b"gA=="


def test_t1_text_body_decodes() -> None:
    assert _decode_all([base64.b64encode(STREAM)]) == STREAM


@pytest.mark.parametrize("size", [1, 2, 3, 5, 7, 1001])
def test_t4_text_body_split_at_any_chunk_size_decodes(size: int) -> None:
    text = base64.b64encode(STREAM * 50)
    assert _decode_all([text[i : i + size] for i in range(0, len(text), size)]) == STREAM * 50


def test_t7_concatenated_padded_chunks_decode() -> None:
    parts = [b"a", b"bc", b"def", b"g"]  # every length modulo 3: '==', '=', none, '=='
    text = b"".join(base64.b64encode(part) for part in parts)
    assert b"=" in text[:-2]
    assert _decode_all([text]) == b"abcdefg"
    assert _decode_all([text[i : i + 3] for i in range(0, len(text), 3)]) == b"abcdefg"


@pytest.mark.parametrize("data", [b"a", b"ab", b"abcd", b"abcde"])
def test_t6_unpadded_final_chunk_is_tolerated(data: bytes) -> None:
    assert _decode_all([base64.b64encode(data).rstrip(b"=")]) == data


def test_t6_final_lone_character_is_malformed() -> None:
    with pytest.raises(MalformedMessage, match="lone character"):
        _decode_all([b"YWJjZ"])


@pytest.mark.parametrize(
    "text",
    [b"****", b"YW*j", b"YQ==YW=j", b"Y===", b"YWJj\n", b"YW Jj", b"====", b"YWJj====", b"YQ======", b"YWJj=YWJ"],
)
def test_t5_invalid_base64_is_malformed(text: bytes) -> None:
    with pytest.raises(MalformedMessage, match="not valid base64"):
        _decode_all([text])


# percent_encode


def test_s4_percent_encode_escapes_percent_non_ascii_and_control_characters() -> None:
    assert percent_encode("100% sure") == "100%25 sure"
    assert percent_encode("héllo") == "h%C3%A9llo"
    assert percent_encode("a\r\nb\tc") == "a%0D%0Ab%09c"
    assert percent_encode("\x7f") == "%7F"


def test_s4_percent_encode_keeps_printable_ascii() -> None:
    printable = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) != "%")
    assert percent_encode(printable) == printable


@pytest.mark.parametrize("message", ["100% done", "ünïcödé ✓ 🚀", "line\r\nbreak", "%41 is not A", ""])
def test_s4_percent_encoded_message_round_trips_through_unquote(message: str) -> None:
    encoded = percent_encode(message)
    assert encoded.isascii()
    assert all(0x20 <= ord(char) < 0x7F for char in encoded)
    assert unquote(encoded, errors="strict") == message


# parse_timeout


@pytest.mark.parametrize(
    ("value", "seconds"),
    [(b"1H", 3600.0), (b"2M", 120.0), (b"3S", 3.0), (b"500m", 0.5), (b"100u", 1e-4), (b"100n", 1e-7), (b"0S", 0.0)],
)
def test_parse_timeout_reads_every_unit(value: bytes, seconds: float) -> None:
    assert parse_timeout(value) == pytest.approx(seconds)


def test_parse_timeout_takes_eight_digits() -> None:
    assert parse_timeout(b"99999999m") == pytest.approx(99999.999)


@pytest.mark.parametrize("value", [b"123456789S", b"5x", b"S", b"", b"-1S", b"1.5S", b" 1S", b"1s", b"1 S"])
def test_parse_timeout_refuses_anything_else(value: bytes) -> None:
    with pytest.raises(BadRequest, match="grpc-timeout"):
        parse_timeout(value)
