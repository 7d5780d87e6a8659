"""Status, errors and trailers through the real gateway, byte by byte (research section 4, S1-S11).

Choices pinned here:

- Every gRPC-Web answer is HTTP 200 with the status in `grpc-status`, including the gateway's own
  errors. Before any message or response metadata, an error is trailers-only: status (and trailing
  metadata) in the headers, `content-length: 0`, an empty body, and no empty trailer frame
  (`80 00 00 00 00` breaks nice-grpc and connect-es). Once headers or messages have gone out, the
  status is one trailer frame, the last frame, and the headers carry no `grpc-status`.
- S4 `grpc-message` is percent-encoded: '%', bytes outside printable ASCII (UTF-8 first) and CR/LF,
  so `decodeURIComponent` (here: `urllib.parse.unquote`) gives the message back.
- S5 `grpc-status-details-bin` is forwarded base64 (header or trailer line) and CORS-exposed.
- S6 an unreachable backend is trailers-only UNAVAILABLE naming the service and its address.
- S7 a non-gRPC HTTP answer from upstream (an LB's 502 page) becomes the status of
  grpc/grpc doc/http-grpc-status-mapping.md, with the start of its body (at most 16 KiB) in
  grpc-message; still HTTP 200 to the client (not Envoy's 503).
- S8 errors the gateway raises itself (unknown service, bad grpc-timeout, unknown grpc-encoding,
  oversized message) are trailers-only with the gRPC status, and carry the CORS headers for an
  allowed Origin so the page can read them; auth, rate-limit and breaker rejections land later.
- S9 duplicate metadata values are separate header lines, or separate `k: v` trailer lines (never
  joined with commas by the gateway), the values of one name in the order the backend sent them.
  grpc.aio groups metadata by name, so how different names were interleaved is not kept; HTTP gives
  that order no meaning.
- S10 an unexpected exception becomes INTERNAL with a fixed message, never an HTML 500 or a stack
  trace. The gateway gives a real request no way to raise one, so ErrorMiddleware (the outermost
  layer, as app.py assembles it) runs in-process around an app that raises, via httpx.ASGITransport.
- S11 a response's `content-length` always matches its body: trailers-only and plain-text answers
  carry it, responses with frames are chunked and do not.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import grpc
import httpx
import pytest
from google.rpc import status_pb2  # type: ignore[import-untyped]
from starlette.types import Receive, Scope, Send

from gateway.middleware.cors import CorsMiddleware
from gateway.middleware.errors import ErrorMiddleware
from gateway.settings import CorsSettings
from tests.conftest import ALLOWED_ORIGIN
from tests.support.grpcweb import (
    BINARY,
    RESPONSE_TYPE,
    TEXT,
    assert_trailers_only,
    frame,
    parse_trailer_block,
    split_frames,
)
from tests.support.h2server import H2Server, Request, ServerConnection
from tests.support.processes import Gateway, free_port, run_gateway

TEXT_RESPONSE_TYPE = "application/grpc-web-text+proto"
INVALID_ARGUMENT, PERMISSION_DENIED, RESOURCE_EXHAUSTED = 3, 7, 8
FAILED_PRECONDITION, ABORTED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE = 9, 10, 12, 13, 14
TRAILER_BLOCK = re.compile(rb"(?:[0-9a-z_.-]+: [\x20-\x7e]*\r\n)*")


def post(
    gateway: Gateway,
    path: str,
    body: bytes,
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    all_headers = {"content-type": BINARY, **(headers or {})}
    return httpx.post(f"{gateway.url}{path}", content=body, headers=all_headers, timeout=10.0)


def probe_call(
    gateway: Gateway, pb: Any, method: str = "Unary", http_headers: dict[str, str] | None = None, **fields: Any
) -> httpx.Response:
    """POST one CallRequest made of `fields`; `http_headers` go on the HTTP request."""
    body = frame(pb.CallRequest(**fields).SerializeToString())
    return post(gateway, f"/accept.v1.Probe/{method}", body, http_headers)


def frames_and_trailers(r: httpx.Response) -> tuple[list[bytes], list[tuple[str, str]], bytes]:
    """A response with a body: data frames, then exactly one trailer frame, last; no status in the headers."""
    assert r.status_code == 200
    assert r.headers.get_list("content-type") == [RESPONSE_TYPE]
    assert "grpc-status" not in r.headers
    assert "grpc-message" not in r.headers
    # A whole answer at hand is sent with its length; a stream in progress is chunked.
    if "content-length" in r.headers:
        assert int(r.headers["content-length"]) == len(r.content)
    else:
        assert r.headers["transfer-encoding"] == "chunked"
    frames = split_frames(r.content)
    assert [flags for flags, _ in frames].count(0x80) == 1, "not exactly one trailer frame"
    *data, (last_flags, block) = frames
    assert last_flags == 0x80, "the trailer frame is not the last frame"
    assert all(flags == 0 for flags, _ in data)
    assert TRAILER_BLOCK.fullmatch(block), f"trailer block is not lower-case `key: value\\r\\n` lines: {block!r}"
    return [payload for _, payload in data], parse_trailer_block(block), block


# S1-S3 --------------------------------------------------------------------------------------------


def test_s1_upstream_error_before_any_message_is_trailers_only(gateway: Gateway, pb: Any) -> None:
    r = probe_call(gateway, pb, fail_code=FAILED_PRECONDITION, fail_message="not now")
    assert assert_trailers_only(r, FAILED_PRECONDITION) == "not now"
    assert b"\x80\x00\x00\x00\x00" not in r.content


def test_s1_server_stream_failing_before_its_first_message_is_trailers_only(gateway: Gateway, pb: Any) -> None:
    r = probe_call(gateway, pb, "ServerStream", count=3, fail_after=0, fail_code=ABORTED, fail_message="stop")
    assert assert_trailers_only(r, ABORTED) == "stop"


def test_s1_trailing_metadata_of_a_trailers_only_answer_is_in_the_headers(gateway: Gateway, pb: Any) -> None:
    r = probe_call(gateway, pb, fail_code=ABORTED, fail_message="x", trailers={"x-reason": "quota"})
    assert_trailers_only(r, ABORTED)
    assert r.headers["x-reason"] == "quota"


def test_s2_error_after_streamed_messages_is_data_frames_then_one_trailer_frame(gateway: Gateway, pb: Any) -> None:
    r = probe_call(gateway, pb, "ServerStream", count=5, fail_after=2, fail_code=ABORTED, fail_message="midway")
    messages, trailers, _ = frames_and_trailers(r)
    assert [pb.CallReply.FromString(m).index for m in messages] == [0, 1]
    assert trailers == [("grpc-status", str(ABORTED)), ("grpc-message", "midway")]


def test_s3_error_after_response_headers_is_headers_then_a_lone_trailer_frame(gateway: Gateway, pb: Any) -> None:
    r = probe_call(
        gateway,
        pb,
        http_headers={"origin": ALLOWED_ORIGIN},
        send_headers_first=True,
        headers={"x-early": "yes"},
        fail_code=PERMISSION_DENIED,
        fail_message="late no",
        trailers={"x-late": "t"},
    )
    messages, trailers, _ = frames_and_trailers(r)
    assert messages == []
    assert r.headers["x-early"] == "yes"
    assert "x-late" not in r.headers
    assert trailers == [("grpc-status", str(PERMISSION_DENIED)), ("grpc-message", "late no"), ("x-late", "t")]
    assert "x-early" in r.headers["access-control-expose-headers"].split(", ")


# S4 -----------------------------------------------------------------------------------------------

AWKWARD = "100% sure: naïve ✓\r\nline 2\ttab"
AWKWARD_ENCODED = "100%25 sure: na%C3%AFve %E2%9C%93%0D%0Aline 2%09tab"


def test_s4_grpc_message_header_is_percent_encoded(gateway: Gateway, pb: Any) -> None:
    r = probe_call(gateway, pb, fail_code=INVALID_ARGUMENT, fail_message=AWKWARD)
    assert r.headers["grpc-message"] == AWKWARD_ENCODED
    assert assert_trailers_only(r, INVALID_ARGUMENT) == AWKWARD


def test_s4_grpc_message_trailer_line_is_percent_encoded(gateway: Gateway, pb: Any) -> None:
    r = probe_call(gateway, pb, "ServerStream", count=2, fail_after=1, fail_code=INVALID_ARGUMENT, fail_message=AWKWARD)
    messages, trailers, block = frames_and_trailers(r)
    assert len(messages) == 1
    assert f"grpc-message: {AWKWARD_ENCODED}\r\n".encode() in block
    assert unquote(dict(trailers)["grpc-message"], errors="strict") == AWKWARD


def test_s4_gateway_error_message_is_percent_encoded(gateway: Gateway, pb: Any) -> None:
    # The gateway's own messages quote what the client sent: 100% is a legal grpc-encoding token.
    r = probe_call(gateway, pb, http_headers={"grpc-encoding": "100%zip"})
    assert "grpc-encoding '100%zip'" in assert_trailers_only(r, UNIMPLEMENTED)
    assert "%25" in r.headers["grpc-message"]


# S5 -----------------------------------------------------------------------------------------------


def test_s5_status_details_in_a_trailers_only_answer_are_a_base64_header_and_exposed(gateway: Gateway, pb: Any) -> None:
    r = probe_call(
        gateway,
        pb,
        http_headers={"origin": ALLOWED_ORIGIN},
        fail_code=FAILED_PRECONDITION,
        fail_message="why",
        details=True,
    )
    assert_trailers_only(r, FAILED_PRECONDITION)
    details = status_pb2.Status.FromString(base64.b64decode(r.headers["grpc-status-details-bin"], validate=True))
    assert (details.code, details.message) == (FAILED_PRECONDITION, "why")
    exposed = r.headers["access-control-expose-headers"].split(", ")
    assert {"grpc-status", "grpc-message", "grpc-status-details-bin"} <= set(exposed)


def test_s5_status_details_after_a_message_are_a_base64_trailer_line(gateway: Gateway, pb: Any) -> None:
    r = probe_call(
        gateway, pb, "ServerStream", count=2, fail_after=1, fail_code=ABORTED, fail_message="why", details=True
    )
    _, trailers, _ = frames_and_trailers(r)
    details = status_pb2.Status.FromString(base64.b64decode(dict(trailers)["grpc-status-details-bin"], validate=True))
    assert (details.code, details.message) == (ABORTED, "why")


# S6 -----------------------------------------------------------------------------------------------


def test_s6_unreachable_backend_is_unavailable_naming_the_service(gateway: Gateway, pb: Any) -> None:
    r = post(gateway, "/gone.v1.Nothing/Anything", frame(b""), {"origin": ALLOWED_ORIGIN})
    message = assert_trailers_only(r, UNAVAILABLE)
    assert re.match(
        r"gone\.v1\.Nothing is unavailable: cannot connect to 127\.0\.0\.1:\d+: Connection refused$", message
    ), message
    assert r.headers["access-control-allow-origin"] == ALLOWED_ORIGIN


# S8 -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "headers", "code", "expected"),
    [
        ("/unknown.v1.Svc/M", {}, UNIMPLEMENTED, "unknown service unknown.v1.Svc"),
        ("/accept.v1.Probe/Unary", {"grpc-timeout": "123456789S"}, INVALID_ARGUMENT, "grpc-timeout"),
        ("/accept.v1.Probe/Unary", {"grpc-timeout": "5x"}, INVALID_ARGUMENT, "grpc-timeout"),
        ("/accept.v1.Probe/Unary", {"grpc-encoding": "br"}, UNIMPLEMENTED, "grpc-encoding 'br'"),
        ("/accept.v1.Probe/Unary", {"x-data-bin": "****"}, INVALID_ARGUMENT, "x-data-bin"),
    ],
    ids=["unknown-service", "timeout-too-long", "timeout-bad-unit", "unknown-encoding", "bad-bin-header"],
)
def test_s8_gateway_errors_are_grpc_status_with_cors_headers(
    gateway: Gateway, pb: Any, path: str, headers: dict[str, str], code: int, expected: str
) -> None:
    body = frame(pb.CallRequest().SerializeToString())
    r = post(gateway, path, body, {"origin": ALLOWED_ORIGIN, **headers})
    assert expected in assert_trailers_only(r, code)
    assert r.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
    assert r.headers["access-control-allow-credentials"] == "true"
    assert "Origin" in r.headers.get_list("vary")
    exposed = set(r.headers["access-control-expose-headers"].split(", "))
    assert {"grpc-status", "grpc-message"} <= exposed
    # Recovery hints the error carries are readable too.
    assert {key for key in r.headers if key.startswith("grpc-accept")} <= exposed


def test_s8_oversized_request_is_resource_exhausted_with_cors_headers(gateway: Gateway, pb: Any) -> None:
    body = b"\x00\x7f\xff\xff\xff"  # a prefix claiming 2 GiB, and nothing else
    r = post(gateway, "/accept.v1.Probe/Unary", body, {"origin": ALLOWED_ORIGIN})
    assert "larger than the gateway's limit" in assert_trailers_only(r, RESOURCE_EXHAUSTED)
    assert r.headers["access-control-allow-origin"] == ALLOWED_ORIGIN


# S9 -----------------------------------------------------------------------------------------------

DUP_INITIAL = (("x-dup", "1"), ("x-other", "between"), ("x-dup", "2"), ("x-dup", "3"))
DUP_TRAILING = (("x-dup-t", "a"), ("x-dup-t", "b"), ("x-dup-bin", b"\x00"), ("x-dup-bin", b"\xff"), ("x-dup-t", "c"))


def _dup_reply(request: bytes, context: grpc.ServicerContext) -> bytes:
    context.send_initial_metadata(DUP_INITIAL)
    context.set_trailing_metadata(DUP_TRAILING)
    return b""


def _dup_fail(request: bytes, context: grpc.ServicerContext) -> bytes:
    context.set_trailing_metadata(DUP_TRAILING)
    context.abort(grpc.StatusCode.ABORTED, "dup")


@pytest.fixture(scope="module")
def dup_gateway(work_dir: Path) -> Iterator[Gateway]:
    """A gateway in front of dup.v1.Dup: a grpcio server (in this process) that repeats metadata keys."""
    handler = grpc.method_handlers_generic_handler(
        "dup.v1.Dup",
        {
            "Reply": grpc.unary_unary_rpc_method_handler(_dup_reply),
            "Fail": grpc.unary_unary_rpc_method_handler(_dup_fail),
        },
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port(f"127.0.0.1:{free_port()}")
    server.start()
    try:
        config = {"upstreams": {"dup.v1.Dup": [f"127.0.0.1:{port}"]}, "cors": {"allowOrigins": [ALLOWED_ORIGIN]}}
        with run_gateway(config, work_dir) as running:
            yield running
    finally:
        server.stop(grace=None).wait()


def test_s9_duplicate_metadata_are_separate_lines_in_order(dup_gateway: Gateway) -> None:
    r = post(dup_gateway, "/dup.v1.Dup/Reply", frame(b""), {"origin": ALLOWED_ORIGIN})
    messages, trailers, _ = frames_and_trailers(r)
    assert messages == [b""]
    assert r.headers.get_list("x-dup") == ["1", "2", "3"]
    assert r.headers.get_list("x-other") == ["between"]
    assert trailers[0] == ("grpc-status", "0")
    assert [v for k, v in trailers if k == "x-dup-t"] == ["a", "b", "c"]
    assert [v for k, v in trailers if k == "x-dup-bin"] == ["AA==", "/w=="]
    assert len(trailers) == 6
    # Each name is exposed once.
    exposed = r.headers["access-control-expose-headers"].split(", ")
    assert exposed.count("x-dup") == 1
    assert "x-other" in exposed


def test_s9_duplicate_trailers_of_a_trailers_only_answer_are_separate_headers(dup_gateway: Gateway) -> None:
    r = post(dup_gateway, "/dup.v1.Dup/Fail", frame(b""))
    assert assert_trailers_only(r, ABORTED) == "dup"
    assert r.headers.get_list("x-dup-t") == ["a", "b", "c"]
    assert r.headers.get_list("x-dup-bin") == ["AA==", "/w=="]


# S10 ----------------------------------------------------------------------------------------------


async def _boom(scope: Scope, receive: Receive, send: Send) -> None:
    raise RuntimeError("secret detail /srv/app/keys.py line 12")


async def _boom_after_start(scope: Scope, receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", RESPONSE_TYPE.encode())]})
    raise RuntimeError("too late")


def _app(inner: Any) -> ErrorMiddleware:
    # The same layering as gateway/app.py: errors outermost, then CORS.
    return ErrorMiddleware(CorsMiddleware(inner, CorsSettings(allow_origins=[ALLOWED_ORIGIN])))


@pytest.mark.parametrize(("content_type", "response_type"), [(BINARY, RESPONSE_TYPE), (TEXT, TEXT_RESPONSE_TYPE)])
async def test_s10_unexpected_exception_is_internal_never_an_html_500(content_type: str, response_type: str) -> None:
    transport = httpx.ASGITransport(app=_app(_boom))
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
        r = await client.post(
            "/accept.v1.Probe/Unary",
            content=frame(b""),
            headers={"content-type": content_type, "origin": ALLOWED_ORIGIN},
        )
    assert r.status_code == 200
    assert r.headers.get_list("content-type") == [response_type]
    assert r.headers["grpc-status"] == str(INTERNAL)
    assert r.headers["grpc-message"] == "the gateway failed while handling this request"
    assert r.headers["content-length"] == "0"
    assert r.content == b""
    assert r.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
    assert {"grpc-status", "grpc-message"} <= set(r.headers["access-control-expose-headers"].split(", "))


async def test_s10_unexpected_exception_on_a_non_grpc_request_is_json(caplog: pytest.LogCaptureFixture) -> None:
    transport = httpx.ASGITransport(app=_app(_boom))
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
        r = await client.get("/api/anything")
    assert r.status_code == 500
    assert r.headers["content-type"] == "application/json"
    assert r.json() == {"code": "INTERNAL", "message": "the gateway failed while handling this request"}
    # The detail goes to the log, not to the client.
    assert "secret detail" in caplog.text


async def test_s10_exception_after_the_response_started_is_not_answered_twice() -> None:
    transport = httpx.ASGITransport(app=_app(_boom_after_start))
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
        # Nothing well-formed can follow a started response: the error reaches the server, which drops
        # the connection (ASGITransport re-raises it).
        with pytest.raises(RuntimeError, match="too late"):
            await client.post("/accept.v1.Probe/Unary", content=frame(b""), headers={"content-type": BINARY})


# S11 ----------------------------------------------------------------------------------------------


def test_s11_content_length_matches_the_body_or_the_body_is_chunked(gateway: Gateway, pb: Any) -> None:
    streamed = probe_call(gateway, pb, "ServerStream", count=3)
    frames_and_trailers(streamed)  # chunked, no content-length
    trailers_only = probe_call(gateway, pb, fail_code=ABORTED)
    assert_trailers_only(trailers_only, ABORTED)  # content-length: 0 and nothing else
    for r in (
        httpx.get(f"{gateway.url}/accept.v1.Probe/Unary", timeout=10.0),
        post(gateway, "/accept.v1.Probe/Unary", b"", {"content-type": "image/jpeg"}),
    ):
        assert r.status_code in (405, 415)
        assert r.headers["content-length"] == str(len(r.content))
        assert r.headers["content-type"] == "text/plain; charset=utf-8"


# S7 -----------------------------------------------------------------------------------------------


async def test_s7_non_grpc_upstream_answer_maps_its_http_status(work_dir: Path) -> None:
    async def bad_gateway(conn: ServerConnection, request: Request) -> None:
        conn.respond(request.stream_id, [(b":status", b"502"), (b"content-type", b"text/html")])
        await conn.send_data(request.stream_id, b"<h1>502 Bad Gateway</h1>" + b"x" * 20_000, end=True)

    async with H2Server(bad_gateway).running() as upstream:
        with run_gateway({"upstreams": {"lb.v1.Behind": [upstream.address]}}, work_dir) as gateway:
            async with httpx.AsyncClient() as client:
                r = await client.post(
                    f"{gateway.url}/lb.v1.Behind/Call", content=frame(b""), headers={"content-type": BINARY}
                )
    message = assert_trailers_only(r, UNAVAILABLE)
    assert message.startswith("lb.v1.Behind is unavailable: upstream answered HTTP 502 instead of gRPC: <h1>502 Bad")
    assert len(message) < 17 * 1024
