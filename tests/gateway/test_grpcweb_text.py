"""Text mode (`application/grpc-web-text`) through the real gateway, byte by byte (research section 4, T1-T8).

Choices pinned here:

- T1/T2 a text response (`application/grpc-web-text+proto` exactly, no parameters) answers a text
  request, and a binary request that sends `Accept: application/grpc-web-text` (Envoy honours only
  Accept, improbable only the request type: the gateway honours both). Errors the gateway answers
  itself use the text type too.
- T3 every response frame is its own padded base64 chunk, written as soon as the upstream produces
  it, so a client decoding 4 characters at a time reads message N before the backend makes N+1.
- T4 request bodies are decoded 4 characters at a time as they arrive, whatever the chunking.
- T5 invalid base64 is INTERNAL (the body is not a gRPC-Web message; the same status as a
  malformed frame), and the backend is not called.
- T6 an unpadded final chunk is tolerated (liberal, unlike Envoy); a single dangling character,
  which no base64 encoder produces, is T5's INTERNAL.
- T7 concatenated padded chunks in a request are accepted, as the spec allows a sender to pad
  whenever it flushes (Envoy answers 400).
- T8 `-bin` trailers stay base64 text inside the (base64) trailer frame: the spec's "skip the
  extra base64 for binary metadata in text mode" is implemented by no one.
"""

from __future__ import annotations

import base64
import struct
from collections.abc import Iterator
from typing import Any
from urllib.parse import unquote

import httpx
import pytest

from tests.support.grpcweb import BINARY, TEXT, decode_text_body, frame, new_key, parse_trailer_block, split_frames
from tests.support.processes import Gateway

TEXT_RESPONSE = "application/grpc-web-text+proto"
INTERNAL, UNIMPLEMENTED = 13, 12


def post(
    gateway: Gateway,
    content: bytes | Iterator[bytes],
    *,
    content_type: str = TEXT,
    method: str = "Unary",
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    return httpx.post(
        f"{gateway.url}/accept.v1.Probe/{method}",
        content=content,
        headers={"content-type": content_type, **(headers or {})},
        timeout=10.0,
    )


def text_body(pb: Any, **fields: Any) -> bytes:
    return base64.b64encode(frame(pb.CallRequest(**fields).SerializeToString()))


def text_frames(r: httpx.Response) -> list[tuple[int, bytes]]:
    """Check a text response byte by byte: type, one padded base64 chunk per frame, one trailer frame last."""
    assert r.status_code == 200
    assert r.headers.get_list("content-type") == [TEXT_RESPONSE]
    frames = split_frames(decode_text_body(r.content))
    # Each frame was encoded on its own: re-encoding them one by one gives back the body exactly.
    assert r.content == b"".join(base64.b64encode(struct.pack(">BI", f, len(p)) + p) for f, p in frames)
    assert [flags for flags, _ in frames].count(0x80) == 1
    assert frames[-1][0] == 0x80
    return frames


def text_reply(pb: Any, r: httpx.Response) -> Any:
    frames = text_frames(r)
    assert len(frames) == 2
    assert parse_trailer_block(frames[1][1]) == [("grpc-status", "0")]
    return pb.CallReply.FromString(frames[0][1])


def assert_text_trailers_only(r: httpx.Response, code: int) -> str:
    assert r.status_code == 200
    assert r.headers.get_list("content-type") == [TEXT_RESPONSE]
    assert r.headers["grpc-status"] == str(code), r.headers.get("grpc-message")
    assert r.headers["content-length"] == "0"
    assert r.content == b""
    return unquote(r.headers.get("grpc-message", ""), errors="strict")


def assert_not_called(pb: Any, probe_stub: Any, key: str) -> None:
    assert probe_stub.Observe(pb.Key(key=key), timeout=5).started == 0, "the backend was called"


# T1-T2 --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content_type",
    ["application/grpc-web-text", "application/grpc-web-text+proto", "Application/GRPC-Web-Text+Proto; charset=x"],
)
def test_t1_text_request_is_decoded_and_answered_in_text(gateway: Gateway, pb: Any, content_type: str) -> None:
    r = post(gateway, text_body(pb, payload=b"\x00\xffbinary"), content_type=content_type)
    assert text_reply(pb, r).payload == b"\x00\xffbinary"


@pytest.mark.parametrize(
    "accept", ["application/grpc-web-text", "application/grpc-web-text+proto", "*/*, Application/Grpc-Web-Text"]
)
def test_t2_binary_request_accepting_text_gets_a_text_response(gateway: Gateway, pb: Any, accept: str) -> None:
    body = frame(pb.CallRequest(payload=b"hi").SerializeToString())
    r = post(gateway, body, content_type=BINARY, headers={"accept": accept})
    assert text_reply(pb, r).payload == b"hi"


def test_t2_text_request_gets_text_whatever_it_accepts(gateway: Gateway, pb: Any) -> None:
    r = post(gateway, text_body(pb, payload=b"hi"), headers={"accept": "application/grpc-web+proto"})
    assert text_reply(pb, r).payload == b"hi"


def test_t2_binary_request_without_text_accept_gets_binary(gateway: Gateway, pb: Any) -> None:
    body = frame(pb.CallRequest(payload=b"hi").SerializeToString())
    r = post(gateway, body, content_type=BINARY, headers={"accept": "application/grpc-web+proto, */*"})
    assert r.headers.get_list("content-type") == ["application/grpc-web+proto"]
    assert split_frames(r.content)[-1] == (0x80, b"grpc-status: 0\r\n")


def test_t2_gateway_errors_for_text_requests_are_text_trailers_only(gateway: Gateway, pb: Any) -> None:
    r = httpx.post(
        f"{gateway.url}/unknown.v1.Svc/M", content=text_body(pb), headers={"content-type": TEXT}, timeout=10.0
    )
    assert "unknown service" in assert_text_trailers_only(r, UNIMPLEMENTED)


# T3-T4 --------------------------------------------------------------------------------------------


class TextFrameReader:
    """Frames off a streamed text body, decoded 4 characters at a time as a browser client does."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self.text = b""  # everything received
        self._decoded = 0  # characters of self.text decoded so far
        self._buffer = b""

    def next_frame(self) -> tuple[int, bytes]:
        while True:
            if len(self._buffer) >= 5:
                flags, length = struct.unpack_from(">BI", self._buffer)
                if len(self._buffer) >= 5 + length:
                    payload, self._buffer = self._buffer[5 : 5 + length], self._buffer[5 + length :]
                    return flags, payload
            chunk = next(self._chunks, None)
            assert chunk is not None, "body ended inside a frame"
            self.text += chunk
            usable = len(self.text) - (len(self.text) - self._decoded) % 4
            for start in range(self._decoded, usable, 4):
                self._buffer += base64.b64decode(self.text[start : start + 4], validate=True)
            self._decoded = usable

    def rest(self) -> bytes:
        return b"".join(self._chunks)


def test_t3_stream_arrives_message_by_message_each_frame_padded_on_its_own(
    gateway: Gateway, pb: Any, probe_stub: Any
) -> None:
    key = new_key()
    body = text_body(pb, key=key, count=3, wait_release=True, payload=b"abcd")
    with (
        httpx.Client(timeout=httpx.Timeout(5.0)) as client,
        client.stream(
            "POST", f"{gateway.url}/accept.v1.Probe/ServerStream", content=body, headers={"content-type": TEXT}
        ) as r,
    ):
        assert r.status_code == 200
        assert r.headers.get_list("content-type") == [TEXT_RESPONSE]
        assert r.headers["transfer-encoding"] == "chunked"
        reader = TextFrameReader(r.iter_raw())
        frames = []
        for index in range(3):
            flags, payload = reader.next_frame()
            assert flags == 0
            assert pb.CallReply.FromString(payload).index == index
            # Message `index` is here while the probe still waits for its Release to make the next one.
            assert probe_stub.Observe(pb.Key(key=key), timeout=5).finished == 0
            frames.append((flags, payload))
            probe_stub.Release(pb.Key(key=key), timeout=5)
        flags, block = reader.next_frame()
        assert flags == 0x80
        assert parse_trailer_block(block) == [("grpc-status", "0")]
        frames.append((flags, block))
        assert reader.rest() == b""
    assert reader.text == b"".join(base64.b64encode(struct.pack(">BI", f, len(p)) + p) for f, p in frames)
    assert b"=" in reader.text.rstrip(b"=")  # padding really sits between frames, not only at the end


@pytest.mark.parametrize("chunk_size", [7, 1001, 4099, 65537])
def test_t4_70_kib_text_body_split_at_odd_chunk_boundaries_is_decoded(
    gateway: Gateway, pb: Any, chunk_size: int
) -> None:
    payload = bytes(range(256)) * 280  # 70 KiB
    body = text_body(pb, payload=payload)
    chunks = iter([body[i : i + chunk_size] for i in range(0, len(body), chunk_size)])
    assert text_reply(pb, post(gateway, chunks)).payload == payload


def test_t4_text_body_in_one_byte_chunks_is_decoded(gateway: Gateway, pb: Any) -> None:
    body = text_body(pb, payload=b"one character at a time")
    assert text_reply(pb, post(gateway, iter([body[i : i + 1] for i in range(len(body))]))).payload == (
        b"one character at a time"
    )


# T5-T7 --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("garbage", [b"****", b"AAAA*AAA", b"A", b"====", b"\n"])
def test_t5_invalid_base64_is_internal_and_never_reaches_the_backend(
    gateway: Gateway, pb: Any, probe_stub: Any, garbage: bytes
) -> None:
    key = new_key()
    # A valid request first: forwarding what decoded before the garbage would make the backend run.
    message = assert_text_trailers_only(post(gateway, text_body(pb, key=key) + garbage), INTERNAL)
    assert "not valid base64" in message
    assert_not_called(pb, probe_stub, key)


@pytest.mark.parametrize("payload", [b"a", b"abc"])  # one and two "=" of padding
def test_t6_unpadded_final_chunk_is_tolerated(gateway: Gateway, pb: Any, payload: bytes) -> None:
    body = text_body(pb, payload=payload)
    assert body.endswith(b"=")
    assert text_reply(pb, post(gateway, body.rstrip(b"="))).payload == payload


def test_t7_concatenated_padded_chunks_are_accepted(gateway: Gateway, pb: Any) -> None:
    request = frame(pb.CallRequest(payload=b"split across chunks").SerializeToString())
    # Cut where neither half is a multiple of 3 bytes, so both chunks carry padding.
    cut = next(i for i in range(1, len(request)) if i % 3 and (len(request) - i) % 3)
    body = base64.b64encode(request[:cut]) + base64.b64encode(request[cut:])
    assert b"=" in body[: len(base64.b64encode(request[:cut]))]
    assert text_reply(pb, post(gateway, body)).payload == b"split across chunks"


def test_t7_concatenated_padded_frames_reach_a_client_streaming_method(gateway: Gateway, pb: Any) -> None:
    body = b"".join(text_body(pb, payload=part) for part in (b"a", b"bc", b"def"))
    assert body.count(b"=") >= 2
    answer = text_reply(pb, post(gateway, body, method="ClientStream"))
    assert answer.payload == b"abcdef"
    assert answer.requests == 3


# T8 -----------------------------------------------------------------------------------------------


def test_t8_bin_trailers_stay_base64_inside_the_text_trailer_frame(gateway: Gateway, pb: Any) -> None:
    raw = b"\x00\xff\xfe binary"
    value = base64.b64encode(raw).decode()
    r = post(gateway, text_body(pb, trailers={"x-trace-bin": value, "x-plain": "text"}))
    frames = text_frames(r)
    block = frames[-1][1]
    trailers = dict(parse_trailer_block(block))
    assert trailers["grpc-status"] == "0"
    assert trailers["x-plain"] == "text"
    assert base64.b64decode(trailers["x-trace-bin"]) == raw
    assert f"x-trace-bin: {value}\r\n".encode() in block


def test_t8_bin_trailers_of_a_text_trailers_only_answer_are_base64_headers(gateway: Gateway, pb: Any) -> None:
    raw = b"\x01\x02\x03\xff"
    body = text_body(pb, fail_code=9, fail_message="no", trailers={"x-trace-bin": base64.b64encode(raw).decode()})
    r = post(gateway, body)
    assert assert_text_trailers_only(r, 9) == "no"
    assert base64.b64decode(r.headers["x-trace-bin"]) == raw
