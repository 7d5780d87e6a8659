"""Framing and content types through the real gateway, byte by byte (research section 4, F1-F18).

Choices pinned here:

- Responses are `application/grpc-web+proto` exactly (no parameters; protobuf-ts rejects anything
  else) for all three binary request types; a successful call is one 0x00 frame per message, then
  one 0x80 trailer frame of lower-case `key: value\\r\\n` lines, last and only once.
- F3 the request content type is matched case-insensitively and its parameters are ignored.
- F4 `application/grpc-web+json` (and `-text+json`) is HTTP 415: the gateway does not transcode
  JSON, and a JSON body is never forwarded to a backend as if it were protobuf.
- F5 any other content type (or none) on a method path is HTTP 415, except Connect's own (gateway/connect/:
  application/json and application/proto are Connect calls); F6 any method but POST is HTTP 405 with
  `Allow: POST, OPTIONS` (OPTIONS preflights are the CORS middleware's; Connect's GET is only for
  methods marked side-effect free).
- F8 a body without any frame is UNIMPLEMENTED, answered by the gateway: a grpc.aio server answers
  a unary or server-streaming method that gets no request message with nothing at all (the call
  hangs until its deadline), so it is never forwarded. grpcio's sync server answers the same
  status ("requires exactly one request message"). A client-streaming call with zero messages is
  refused with it too: browsers cannot make one.
- F9/F14 several frames go upstream on one stream-stream call and the upstream decides: a
  client-streaming method gets them all, in order. A grpc.aio *unary* method given two messages
  runs its handler once, with the first, and answers OK (grpcio reads one message and never looks
  for a second); the gateway proxies bytes without the service's descriptors, so it cannot tell the
  two kinds of method apart. This is pinned as grpcio's answer, not the survey's UNIMPLEMENTED.
- F10 a truncated frame and F11 a compressed-flagged frame without `grpc-encoding` are INTERNAL,
  and the backend is not called (the body is read and checked whole before the upstream call).
- F12 an unknown `grpc-encoding` is UNIMPLEMENTED and the answer lists `grpc-accept-encoding:
  identity,gzip,deflate`; gzip- and deflate-compressed request frames are decompressed (within the
  message limit) and forwarded; a frame that does not decompress is INTERNAL.
- F15 a request message over `maxMessageBytes` (1 MiB for the session gateway) is
  RESOURCE_EXHAUSTED, checked on the length prefix: a prefix claiming 4 GiB is answered as soon as
  its five bytes arrive, without waiting for (or buffering) the body.
- F16 an upstream reply over the same limit is RESOURCE_EXHAUSTED naming the sizes (grpc core's
  own message); a gateway with a raised limit delivers a 5 MiB reply.
- F17 unknown services (gateway) and unknown methods (upstream) are trailers-only UNIMPLEMENTED.
- F18 grpc.aio decompresses whatever the upstream compresses, so browsers only see flag 0 frames.
"""

from __future__ import annotations

import gzip
import re
import socket
import struct
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.grpcweb import (
    BINARY,
    RESPONSE_TYPE,
    assert_trailers_only,
    frame,
    new_key,
    parse_trailer_block,
    split_frames,
)
from tests.support.processes import Gateway, run_gateway

INTERNAL, RESOURCE_EXHAUSTED, UNIMPLEMENTED = 13, 8, 12
LIMIT = 1024 * 1024  # the session gateway's maxMessageBytes
TRAILER_BLOCK = re.compile(rb"(?:[0-9a-z_.-]+: [\x20-\x7e]*\r\n)*")


@pytest.fixture(scope="module")
def roomy_gateway(probe_address: str, work_dir: Path) -> Iterator[Gateway]:
    """The probe behind a gateway whose message limit is 8 MiB."""
    with run_gateway({"upstreams": {"accept.v1.Probe": [probe_address]}, "maxMessageBytes": 8 << 20}, work_dir) as gw:
        yield gw


def post(
    gateway: Gateway,
    path: str,
    content: bytes | Iterator[bytes],
    content_type: str | None = BINARY,
    headers: dict[str, str] | None = None,
    method: str = "POST",
) -> httpx.Response:
    all_headers = {} if content_type is None else {"content-type": content_type}
    all_headers.update(headers or {})
    return httpx.request(method, f"{gateway.url}{path}", content=content, headers=all_headers, timeout=10.0)


def unary(gateway: Gateway, body: bytes | Iterator[bytes], **kwargs: Any) -> httpx.Response:
    return post(gateway, "/accept.v1.Probe/Unary", body, **kwargs)


def request_body(pb: Any, **fields: Any) -> bytes:
    return frame(pb.CallRequest(**fields).SerializeToString())


def messages_and_trailers(r: httpx.Response) -> tuple[list[bytes], list[tuple[str, str]]]:
    """Check a response that has a body, byte by byte, and take it apart."""
    assert r.status_code == 200
    assert r.headers.get_list("content-type") == [RESPONSE_TYPE]
    assert "grpc-status" not in r.headers, "status in the headers of a response with a body"
    frames = split_frames(r.content)
    assert [flags for flags, _ in frames].count(0x80) == 1, "not exactly one trailer frame"
    *data, (last_flags, block) = frames
    assert last_flags == 0x80, "the trailer frame is not the last frame"
    assert all(flags == 0 for flags, _ in data), "a data frame with flags set"
    assert TRAILER_BLOCK.fullmatch(block), f"trailer block is not lower-case `key: value\\r\\n` lines: {block!r}"
    return [payload for _, payload in data], parse_trailer_block(block)


def assert_not_called(pb: Any, probe_stub: Any, key: str) -> None:
    assert probe_stub.Observe(pb.Key(key=key), timeout=5).started == 0, "the backend was called"


def reply(pb: Any, r: httpx.Response) -> Any:
    messages, trailers = messages_and_trailers(r)
    assert trailers == [("grpc-status", "0")]
    assert len(messages) == 1
    return pb.CallReply.FromString(messages[0])


# F1-F3 --------------------------------------------------------------------------------------------


def test_f1_unary_call_is_one_data_frame_then_one_trailer_frame(gateway: Gateway, pb: Any) -> None:
    r = unary(gateway, request_body(pb, payload=b"hello"))
    assert r.headers.get_list("content-type") == [RESPONSE_TYPE]
    flags, length = struct.unpack_from(">BI", r.content)
    assert flags == 0
    data, rest = r.content[5 : 5 + length], r.content[5 + length :]
    assert pb.CallReply.FromString(data).payload == b"hello"
    # Nothing after the trailer frame, and nothing in it but the status.
    assert rest == b"\x80\x00\x00\x00\x10grpc-status: 0\r\n"


@pytest.mark.parametrize(
    "content_type",
    ["application/grpc-web+proto", "application/grpc-web"],
    ids=["f1-proto-suffix", "f2-no-suffix"],
)
def test_f2_content_type_with_or_without_proto_suffix_is_answered_in_proto(
    gateway: Gateway, pb: Any, content_type: str
) -> None:
    r = unary(gateway, request_body(pb, payload=b"hi"), content_type=content_type)
    assert reply(pb, r).payload == b"hi"


@pytest.mark.parametrize(
    "content_type",
    ["Application/Grpc-Web+Proto; charset=x", "APPLICATION/GRPC-WEB", "application/grpc-web+proto ; q=1"],
)
def test_f3_content_type_case_and_parameters_are_ignored(gateway: Gateway, pb: Any, content_type: str) -> None:
    r = unary(gateway, request_body(pb, payload=b"hi"), content_type=content_type)
    assert reply(pb, r).payload == b"hi"


# F4-F6 --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("content_type", ["application/grpc-web+json", "application/grpc-web-text+json"])
def test_f4_grpc_web_json_is_415_and_never_forwarded(
    gateway: Gateway, pb: Any, probe_stub: Any, content_type: str
) -> None:
    key = new_key()
    # A protobuf body under a JSON type: forwarding it "as proto" would make the backend run.
    r = unary(gateway, request_body(pb, key=key), content_type=content_type)
    assert r.status_code == 415
    assert "grpc-status" not in r.headers
    assert_not_called(pb, probe_stub, key)


@pytest.mark.parametrize("content_type", ["image/jpeg", "application/grpc", "text/plain", None])
def test_f5_non_grpc_web_content_type_is_415(gateway: Gateway, pb: Any, probe_stub: Any, content_type: str) -> None:
    key = new_key()
    r = unary(gateway, request_body(pb, key=key), content_type=content_type)
    assert r.status_code == 415
    assert r.headers["content-length"] == str(len(r.content))
    assert "grpc-web" in r.text
    assert_not_called(pb, probe_stub, key)


def test_f5_a_protobuf_body_sent_as_connect_json_is_refused_and_never_forwarded(
    gateway: Gateway, pb: Any, probe_stub: Any
) -> None:
    # application/json is Connect's unary JSON on the same path (gateway/connect/): framed protobuf
    # bytes are not JSON, so the call is INVALID_ARGUMENT and the backend never runs.
    key = new_key()
    r = unary(gateway, request_body(pb, key=key), content_type="application/json")
    assert r.status_code == 400
    assert r.json()["code"] == "invalid_argument"
    assert_not_called(pb, probe_stub, key)


@pytest.mark.parametrize("method", ["GET", "DELETE", "PUT", "PATCH"])
def test_f6_method_other_than_post_is_405_with_allow(gateway: Gateway, pb: Any, method: str) -> None:
    r = post(gateway, "/accept.v1.Probe/Unary", request_body(pb), method=method)
    assert r.status_code == 405
    assert r.headers["allow"] == "POST, OPTIONS"
    assert "grpc-status" not in r.headers


# F7-F9 --------------------------------------------------------------------------------------------


def test_f7_zero_length_frame_is_an_empty_message(gateway: Gateway, pb: Any) -> None:
    r = unary(gateway, b"\x00\x00\x00\x00\x00")
    answer = reply(pb, r)
    assert answer.payload == b""
    assert answer.index == 0


@pytest.mark.parametrize("method", ["Unary", "ServerStream", "ClientStream"])
def test_f8_body_without_frames_is_unimplemented_at_once(gateway: Gateway, method: str) -> None:
    started = time.monotonic()
    r = post(gateway, f"/accept.v1.Probe/{method}", b"")
    message = assert_trailers_only(r, UNIMPLEMENTED)
    assert "requires a request message" in message
    # Answered by the gateway, not after the upstream's deadline (grpc.aio never answers).
    assert time.monotonic() - started < 5


def test_f9_two_frames_to_a_unary_grpc_aio_method_run_it_once_with_the_first(
    gateway: Gateway, pb: Any, probe_stub: Any
) -> None:
    first, second = new_key(), new_key()
    r = unary(gateway, request_body(pb, key=first, payload=b"one") + request_body(pb, key=second, payload=b"two"))
    assert reply(pb, r).payload == b"one"
    assert probe_stub.Observe(pb.Key(key=first), timeout=5).started == 1
    assert_not_called(pb, probe_stub, second)


def test_f9_two_frames_to_a_server_streaming_grpc_aio_method_run_it_once_with_the_first(
    gateway: Gateway, pb: Any, probe_stub: Any
) -> None:
    first, second = new_key(), new_key()
    body = request_body(pb, key=first, count=2) + request_body(pb, key=second, count=5)
    messages, trailers = messages_and_trailers(post(gateway, "/accept.v1.Probe/ServerStream", body))
    assert trailers == [("grpc-status", "0")]
    assert len(messages) == 2
    assert_not_called(pb, probe_stub, second)


# F10-F12 ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cut", ["payload", "prefix"])
def test_f10_truncated_frame_is_internal_and_never_reaches_the_backend(
    gateway: Gateway, pb: Any, probe_stub: Any, cut: str
) -> None:
    key = new_key()
    payload = pb.CallRequest(key=key).SerializeToString()
    if cut == "payload":
        # The prefix announces one byte more than arrives: the bytes that did arrive parse on their own.
        body = struct.pack(">BI", 0, len(payload) + 1) + payload
        expected = f"announces {len(payload) + 1} bytes but only {len(payload)} arrived"
    else:
        body = frame(payload) + b"\x00\x00\x00"
        expected = "ends inside a frame prefix"
    message = assert_trailers_only(unary(gateway, body), INTERNAL)
    assert expected in message
    assert_not_called(pb, probe_stub, key)


@pytest.mark.parametrize("encoding", [None, "identity"])
def test_f11_compressed_flag_without_grpc_encoding_is_internal(
    gateway: Gateway, pb: Any, probe_stub: Any, encoding: str | None
) -> None:
    key = new_key()
    body = frame(gzip.compress(pb.CallRequest(key=key).SerializeToString()), flags=0x01)
    headers = {} if encoding is None else {"grpc-encoding": encoding}
    message = assert_trailers_only(unary(gateway, body, headers=headers), INTERNAL)
    assert "flagged compressed but no grpc-encoding" in message
    assert_not_called(pb, probe_stub, key)


def test_f12_unknown_grpc_encoding_is_unimplemented_and_lists_accepted_encodings(
    gateway: Gateway, pb: Any, probe_stub: Any
) -> None:
    key = new_key()
    r = unary(gateway, frame(pb.CallRequest(key=key).SerializeToString(), flags=0x01), headers={"grpc-encoding": "foo"})
    message = assert_trailers_only(r, UNIMPLEMENTED)
    assert "'foo'" in message
    assert r.headers["grpc-accept-encoding"] == "identity,gzip,deflate"
    assert_not_called(pb, probe_stub, key)


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "GZIP"])
def test_f12_compressed_request_frame_with_grpc_encoding_is_decompressed(
    gateway: Gateway, pb: Any, encoding: str
) -> None:
    payload = pb.CallRequest(payload=b"squeezed " * 100).SerializeToString()
    packed = gzip.compress(payload) if encoding.lower() == "gzip" else zlib.compress(payload)
    r = unary(gateway, frame(packed, flags=0x01), headers={"grpc-encoding": encoding})
    assert reply(pb, r).payload == b"squeezed " * 100


def test_f12_frame_that_does_not_decompress_is_internal(gateway: Gateway, pb: Any, probe_stub: Any) -> None:
    key = new_key()
    body = frame(pb.CallRequest(key=key).SerializeToString(), flags=0x01)  # flagged, but not gzip
    message = assert_trailers_only(unary(gateway, body, headers={"grpc-encoding": "gzip"}), INTERNAL)
    assert "cannot be decompressed with gzip" in message
    assert_not_called(pb, probe_stub, key)


# F13-F14 ------------------------------------------------------------------------------------------


def test_f13_request_in_one_byte_chunks_gives_the_same_answer(gateway: Gateway, pb: Any) -> None:
    body = request_body(pb, payload=b"byte by byte " * 20)
    whole = unary(gateway, body)
    chunked = unary(gateway, iter([body[i : i + 1] for i in range(len(body))]))
    assert chunked.request.headers["transfer-encoding"] == "chunked"
    assert reply(pb, chunked).payload == reply(pb, whole).payload == b"byte by byte " * 20


@pytest.mark.parametrize("chunking", ["one-chunk", "one-byte-chunks"])
def test_f14_several_frames_reach_a_client_streaming_method_in_order(gateway: Gateway, pb: Any, chunking: str) -> None:
    body = b"".join(request_body(pb, payload=part) for part in (b"a", b"", b"bc", b"d"))
    content = body if chunking == "one-chunk" else iter([body[i : i + 1] for i in range(len(body))])
    answer = reply(pb, post(gateway, "/accept.v1.Probe/ClientStream", content))
    assert answer.requests == 4
    assert answer.payload == b"abcd"


# F15-F16 ------------------------------------------------------------------------------------------


def test_f15_request_over_the_limit_is_resource_exhausted_before_the_upstream(
    gateway: Gateway, pb: Any, probe_stub: Any
) -> None:
    key = new_key()
    body = request_body(pb, key=key, payload=b"x" * LIMIT)
    message = assert_trailers_only(unary(gateway, body), RESOURCE_EXHAUSTED)
    assert f"{len(body) - 5} bytes, larger than the gateway's limit of {LIMIT} bytes" in message
    assert_not_called(pb, probe_stub, key)


def test_f15_request_at_the_limit_is_accepted(gateway: Gateway, pb: Any) -> None:
    overhead = len(pb.CallRequest(payload=b"x" * LIMIT, response_bytes=1).SerializeToString()) - LIMIT
    body = request_body(pb, payload=b"x" * (LIMIT - overhead), response_bytes=1)
    assert len(body) - 5 == LIMIT
    assert reply(pb, unary(gateway, body)).payload == b"r"


def test_f15_compressed_request_that_inflates_over_the_limit_is_resource_exhausted(
    gateway: Gateway, pb: Any, probe_stub: Any
) -> None:
    key = new_key()
    bomb = gzip.compress(pb.CallRequest(key=key, payload=b"\0" * (4 * LIMIT)).SerializeToString())
    assert len(bomb) < LIMIT // 10
    r = unary(gateway, frame(bomb, flags=0x01), headers={"grpc-encoding": "gzip"})
    assert f"decompresses to more than the gateway's limit of {LIMIT} bytes" in assert_trailers_only(
        r, RESOURCE_EXHAUSTED
    )
    assert_not_called(pb, probe_stub, key)


def test_f15_length_prefix_claiming_4_gib_is_answered_before_the_body(gateway: Gateway) -> None:
    # httpx sends a whole body before it reads the answer, so this client is a socket: it sends the
    # headers for a 4 GiB body and the 5-byte prefix, then waits for the answer.
    with socket.create_connection(("127.0.0.1", gateway.http_port), timeout=10) as sock:
        sock.sendall(
            b"POST /accept.v1.Probe/Unary HTTP/1.1\r\nhost: gateway\r\n"
            b"content-type: application/grpc-web+proto\r\ncontent-length: 4294967301\r\n\r\n"
            b"\x00\xff\xff\xff\xff"
        )
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = sock.recv(65536)
            assert chunk, "connection closed without an answer"
            answer += chunk
        # The rest of the body is not wanted: the gateway closes the connection after its answer.
        while chunk:
            chunk = sock.recv(65536)
    head = answer.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in head[1:])
    assert head[0] == "HTTP/1.1 200 OK"
    assert headers["grpc-status"] == str(RESOURCE_EXHAUSTED)
    assert (
        headers["grpc-message"]
        == f"request message is 4294967295 bytes, larger than the gateway's limit of {LIMIT} bytes"
    )
    assert headers["content-length"] == "0"
    assert headers["connection"] == "close"


def test_f16_upstream_reply_over_the_limit_is_resource_exhausted(gateway: Gateway, pb: Any) -> None:
    message = assert_trailers_only(unary(gateway, request_body(pb, response_bytes=2 * LIMIT)), RESOURCE_EXHAUSTED)
    assert re.search(rf"upstream message of \d+ bytes is larger than the gateway's limit of {LIMIT} bytes", message)


def test_f16_upstream_reply_of_5_mib_is_delivered_under_a_raised_limit(roomy_gateway: Gateway, pb: Any) -> None:
    r = unary(roomy_gateway, request_body(pb, response_bytes=5 << 20))
    answer = reply(pb, r)
    assert answer.payload == b"r" * (5 << 20)


# F17-F18 ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/unknown.v1.Svc/M", "unknown service unknown.v1.Svc"),
        ("/api/unknown.v1.Svc/M", "unknown service unknown.v1.Svc"),
        ("/accept.v1.Probe/Unknown", "Method not found"),
        ("/api/accept.v1.Probe/Unknown", "Method not found"),
    ],
)
def test_f17_unknown_service_or_method_is_trailers_only_unimplemented(
    gateway: Gateway, pb: Any, path: str, expected: str
) -> None:
    message = assert_trailers_only(post(gateway, path, request_body(pb)), UNIMPLEMENTED)
    assert expected in message


def test_f18_compressed_upstream_replies_reach_the_client_uncompressed(compressing_gateway: Gateway, pb: Any) -> None:
    body = request_body(pb, count=3, response_bytes=4096)
    r = post(compressing_gateway, "/accept.v1.Probe/ServerStream", body, headers={"grpc-accept-encoding": "gzip"})
    messages, trailers = messages_and_trailers(r)  # checks every data frame has flags 0
    assert "grpc-encoding" not in r.headers
    assert trailers == [("grpc-status", "0")]
    assert [pb.CallReply.FromString(m).payload for m in messages] == [b"r" * 4096] * 3
