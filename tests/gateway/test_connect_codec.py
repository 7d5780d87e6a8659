"""The Connect pieces that read what a client sent: codecs, content types, timeouts, GET queries,
compression, envelopes, error bodies. Each bad input is a client error that names what was wrong."""

from __future__ import annotations

import base64
import gzip
import json

import grpc
import pytest
from upf.demo.v1 import demo_pb2

from gateway.connect.codec import JSON, PROTO
from gateway.connect.envelope import END_STREAM, end_stream, envelope, read_envelopes
from gateway.connect.errors import connect_code, error_body, http_status
from gateway.connect.protocol import check_version, get_request, inflate, post_kind, timeout_seconds
from gateway.errors import BadRequest, MessageTooLarge, UnsupportedEncoding


def test_json_requests_become_the_plugins_wire_bytes() -> None:
    wire = JSON.request(b'{"text": "hello", "notAField": 1}', demo_pb2.SayRequest)
    assert demo_pb2.SayRequest.FromString(wire).text == "hello"  # unknown fields ignored, as connect-go
    assert JSON.request(b"  ", demo_pb2.SayRequest) == b""
    assert PROTO.request(b"\n\x05hello", demo_pb2.SayRequest) == b"\n\x05hello"


@pytest.mark.parametrize(
    ("body", "names"),
    [
        (b'{"text": 5}', "text"),
        (b'{"count": "many"}', "count"),
        (b'{"text": "x"', "SayRequest"),
        (b"\xff\xfe", "UTF-8"),
    ],
)
def test_json_that_does_not_fit_the_schema_is_invalid_argument_naming_it(body: bytes, names: str) -> None:
    message = demo_pb2.CountRequest if b"count" in body else demo_pb2.SayRequest
    with pytest.raises(BadRequest, match=names) as raised:
        JSON.request(body, message)
    assert raised.value.code is grpc.StatusCode.INVALID_ARGUMENT


def test_answers_are_proto_json_or_the_bytes_themselves() -> None:
    wire = demo_pb2.CountResponse(n=3).SerializeToString()
    assert json.loads(JSON.response(wire, demo_pb2.CountResponse)) == {"n": 3}
    assert JSON.response(b"", demo_pb2.CountResponse) == b"{}"
    assert PROTO.response(wire, demo_pb2.CountResponse) == wire


def test_content_types_say_codec_and_streaming() -> None:
    unary = post_kind("application/json; charset=utf-8")
    stream = post_kind("application/connect+proto")
    assert unary is not None
    assert (unary.codec.name, unary.streaming) == ("json", False)
    assert stream is not None
    assert (stream.codec.name, stream.streaming) == ("proto", True)
    for other in ("application/grpc-web+proto", "application/grpc", "text/plain", "application/connect+xml", ""):
        assert post_kind(other) is None, other


def test_timeouts_and_protocol_versions() -> None:
    assert timeout_seconds(None) is None
    assert timeout_seconds("2500") == 2.5
    for bad in ("-1", "1.5", "12345678901", "soon"):
        with pytest.raises(BadRequest, match="Connect-Timeout-Ms"):
            timeout_seconds(bad)
    check_version({"connect-protocol-version": "1"})
    check_version({})
    with pytest.raises(BadRequest, match="Connect-Protocol-Version"):
        check_version({"connect-protocol-version": "2"})


def test_get_queries_carry_the_message_plain_or_in_base64() -> None:
    codec, body = get_request({"encoding": "json", "message": '{"text":"hi"}'}, limit=1024)
    assert (codec.name, body) == ("json", b'{"text":"hi"}')
    wire = demo_pb2.SayRequest(text="hi").SerializeToString()
    packed = base64.urlsafe_b64encode(wire).decode().rstrip("=")
    codec, body = get_request({"encoding": "proto", "base64": "1", "message": packed, "connect": "v1"}, limit=1024)
    assert (codec.name, body) == ("proto", wire)
    for query, says in [
        ({"message": "{}"}, "encoding"),
        ({"encoding": "xml", "message": "{}"}, "xml"),
        ({"encoding": "proto", "base64": "1", "message": "%%%"}, "base64"),
        ({"encoding": "json", "message": "{}", "connect": "v2"}, "v2"),
    ]:
        with pytest.raises(BadRequest, match=says):
            get_request(query, limit=1024)


def test_compressed_bodies_are_inflated_within_the_limit() -> None:
    assert inflate(gzip.compress(b"abc"), "gzip", limit=10) == b"abc"
    assert inflate(b"abc", None, limit=10) == b"abc"
    with pytest.raises(MessageTooLarge):
        inflate(gzip.compress(b"\0" * 1_000_000), "gzip", limit=1024)  # a bomb stops at the limit
    with pytest.raises(BadRequest, match="gzip"):
        inflate(b"not gzip", "gzip", limit=10)
    with pytest.raises(UnsupportedEncoding) as raised:
        inflate(b"x", "br", limit=10)
    assert raised.value.headers == {"accept-encoding": "identity, gzip"}


def test_envelopes_round_trip_and_malformed_ones_are_refused() -> None:
    body = envelope(b"one") + envelope(b"", END_STREAM)
    assert list(read_envelopes(body, limit=10)) == [(0, b"one"), (END_STREAM, b"")]
    for bad, says in [
        (b"\0\0\0", "envelope header"),
        (envelope(b"abc")[:-1], "inside a message"),
        (envelope(b"x", 0x10), "reserved bits"),
        (envelope(b"x" * 11), "over the limit"),
    ]:
        with pytest.raises(BadRequest, match=says):
            list(read_envelopes(bad, limit=10))
    last = end_stream({"code": "internal"}, {"x-id": ["1"]})
    assert last[0] == END_STREAM
    assert json.loads(last[5:]) == {"error": {"code": "internal"}, "metadata": {"x-id": ["1"]}}


def test_error_bodies_use_connect_names_and_the_gateways_http_table() -> None:
    assert connect_code(grpc.StatusCode.CANCELLED) == "canceled"
    assert connect_code(grpc.StatusCode.RESOURCE_EXHAUSTED) == "resource_exhausted"
    assert http_status(grpc.StatusCode.UNAUTHENTICATED) == 401
    assert http_status(grpc.StatusCode.UNAVAILABLE) == 503
    assert error_body(grpc.StatusCode.NOT_FOUND, "") == {"code": "not_found"}
    assert error_body(grpc.StatusCode.INTERNAL, "x", b"\xff garbage") == {"code": "internal", "message": "x"}
