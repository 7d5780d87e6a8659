"""Metadata and deadlines through the gRPC-Web endpoint (research section 4, cases M1-M7).

Choices pinned here:

- M1 request headers become upstream metadata, lower-case, except the ones that are not the caller's
  to give a backend (gateway/wire/metadata.py): hop-by-hop headers (connection, keep-alive,
  proxy-connection, te, trailer, transfer-encoding, upgrade, and any header named in Connection),
  host, content-*, accept*, origin, referer, user-agent, x-grpc-web, cache-control, pragma, priority,
  dnt, proxy-authorization, cookie (unless `forwardCookies`), and every `sec-*`, `access-control-*`
  and `grpc-*` name. `authorization` is forwarded for now (it is dropped once auth lands);
  `x-user-agent` is forwarded. A header name gRPC cannot carry is INVALID_ARGUMENT.
- M2 `-bin` values are accepted padded and unpadded and go upstream as bytes; invalid base64 is
  INVALID_ARGUMENT and the backend is not called. A non-ASCII value in a non-`-bin` header is
  INVALID_ARGUMENT too (binary metadata needs a `-bin` name).
- M3/M4 response metadata becomes HTTP headers (`-bin` base64), trailing metadata goes into the
  trailer frame, or into the headers of a trailers-only answer; custom names are CORS-exposed.
- M5 `grpc-timeout` is read in every unit (H M S m u n); more than 8 digits or a bad unit is
  INVALID_ARGUMENT (connect-go's rule), backend not called. Values beyond ~3 years (99999999 s)
  are capped there: grpcio's deadline arithmetic overflows on "9999999H". `maxTimeout` (60 s for the session
  gateway) clamps larger values and is the deadline of a call that sends none; without
  `maxTimeout` a call without grpc-timeout has no deadline.
- M6 an expired deadline is DEADLINE_EXCEEDED: trailers-only before any message, a trailer frame
  after one; the backend's call is cancelled.
- M7 grpc.aio always decompresses what the upstream sends (grpc core negotiates
  grpc-accept-encoding with the backend itself, advertising the codecs it can decode), so no
  compressed frame can reach a browser: a gzip-compressing backend still gives frames with flag 0
  and no `grpc-encoding` header, whatever the client's grpc-accept-encoding says.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ALLOWED_ORIGIN
from tests.support.grpcweb import BINARY, GrpcWebResponse, frame, new_key, parse_response
from tests.support.processes import Gateway, run_gateway, wait_until

INVALID_ARGUMENT = 3
DEADLINE_EXCEEDED = 4


@pytest.fixture(scope="module")
def open_gateway(probe_address: str, work_dir: Path) -> Iterator[Gateway]:
    """No maxTimeout, and cookies forwarded."""
    config = {"upstreams": {"accept.v1.Probe": [probe_address]}, "forwardCookies": True}
    with run_gateway(config, work_dir) as running:
        yield running


def call(
    gateway: Gateway,
    method: str,
    request: Any,
    headers: dict[str, str] | list[tuple[bytes, bytes]] | None = None,
) -> GrpcWebResponse:
    body = frame(request.SerializeToString())
    all_headers: list[tuple[bytes, bytes]] = [(b"content-type", BINARY.encode())]
    if isinstance(headers, dict):
        all_headers += [(key.encode(), value.encode()) for key, value in headers.items()]
    elif headers is not None:
        all_headers += headers
    r = httpx.post(f"{gateway.url}/accept.v1.Probe/{method}", content=body, headers=all_headers, timeout=10.0)
    return parse_response(r.status_code, dict(r.headers), r.content)


def received(pb: Any, response: GrpcWebResponse) -> dict[str, str]:
    """The request metadata the probe saw (-bin values base64, padded)."""
    assert response.status == 0, response.message
    return dict(pb.CallReply.FromString(response.messages[0]).metadata)


def deadline_remaining(pb: Any, response: GrpcWebResponse) -> float:
    assert response.status == 0, response.message
    remaining: float = pb.CallReply.FromString(response.messages[0]).deadline_remaining
    return remaining


def assert_not_called(pb: Any, probe_stub: Any, key: str) -> None:
    observation = probe_stub.Observe(pb.Key(key=key), timeout=5)
    assert observation.started == 0, "the backend was called"


# M1 -----------------------------------------------------------------------------------------------

BROWSER_AND_HOP_HEADERS = [
    (b"connection", b"keep-alive, x-named-in-connection"),
    (b"x-named-in-connection", b"marker"),
    (b"keep-alive", b"timeout=5"),
    (b"proxy-connection", b"keep-alive"),
    (b"te", b"trailers"),
    (b"trailer", b"x-later"),
    (b"upgrade", b"example/1"),
    (b"content-encoding", b"identity"),
    (b"accept", b"application/grpc-web+proto, */*"),
    (b"accept-encoding", b"gzip"),
    (b"accept-language", b"en"),
    (b"origin", ALLOWED_ORIGIN.encode()),
    (b"referer", f"{ALLOWED_ORIGIN}/page".encode()),
    (b"user-agent", b"Mozilla/5.0 marker"),
    (b"x-grpc-web", b"1"),
    (b"cookie", b"session=marker"),
    (b"cache-control", b"no-cache"),
    (b"pragma", b"no-cache"),
    (b"priority", b"u=1"),
    (b"dnt", b"1"),
    (b"proxy-authorization", b"Basic bWFya2VyOm1hcmtlcg=="),
    (b"sec-fetch-mode", b"cors"),
    (b"sec-ch-ua", b'"marker"'),
    (b"access-control-request-method", b"POST"),
    (b"grpc-accept-encoding", b"gzip"),
    (b"grpc-custom", b"marker"),
]
CALLER_HEADERS = [
    (b"x-custom", b"value"),
    (b"X-Mixed-Case", b"Keeps Its Value"),
    (b"x-user-agent", b"grpc-web-javascript/0.1"),
    (b"authorization", b"Bearer token"),
]


@pytest.mark.parametrize("body_kind", ["content-length", "chunked"])
def test_m1_only_the_callers_own_headers_become_metadata(gateway: Gateway, pb: Any, body_kind: str) -> None:
    body = frame(pb.CallRequest().SerializeToString())
    # An iterator body goes out with transfer-encoding: chunked instead of content-length.
    content: bytes | Iterator[bytes] = body if body_kind == "content-length" else iter([body[:3], body[3:]])
    r = httpx.post(
        f"{gateway.url}/accept.v1.Probe/Unary",
        content=content,
        headers=[(b"content-type", BINARY.encode()), *BROWSER_AND_HOP_HEADERS, *CALLER_HEADERS],
        timeout=10.0,
    )
    metadata = received(pb, parse_response(r.status_code, dict(r.headers), r.content))
    # user-agent is the gateway's own, not the browser's.
    assert metadata.pop("user-agent") == "upf-gateway"
    assert metadata == {
        "x-custom": "value",
        "x-mixed-case": "Keeps Its Value",
        "x-user-agent": "grpc-web-javascript/0.1",
        "authorization": "Bearer token",
    }


def test_m1_cookie_is_forwarded_only_when_configured(gateway: Gateway, open_gateway: Gateway, pb: Any) -> None:
    headers = {"cookie": "session=abc"}
    assert "cookie" not in received(pb, call(gateway, "Unary", pb.CallRequest(), headers))
    assert received(pb, call(open_gateway, "Unary", pb.CallRequest(), headers))["cookie"] == "session=abc"


def test_m1_header_name_grpc_cannot_carry_is_invalid_argument(gateway: Gateway, pb: Any, probe_stub: Any) -> None:
    key = new_key()
    response = call(gateway, "Unary", pb.CallRequest(key=key), {"x-bang!": "1"})
    assert response.trailers_only
    assert response.status == INVALID_ARGUMENT
    assert "x-bang!" in response.message
    assert_not_called(pb, probe_stub, key)


# M2 -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["AAEC/w==", "AAEC/w", "AP8=", "AP8", ""])
def test_m2_bin_header_padded_or_unpadded_reaches_upstream_as_bytes(gateway: Gateway, pb: Any, value: str) -> None:
    metadata = received(pb, call(gateway, "Unary", pb.CallRequest(), {"x-data-bin": value}))
    expected = base64.b64decode(value + "=" * (-len(value) % 4))
    # The probe reports bytes it received base64-encoded again.
    assert base64.b64decode(metadata["x-data-bin"]) == expected


@pytest.mark.parametrize("value", ["****", "A", "AA=A", "YWJj$", "YW Jj"])
def test_m2_invalid_base64_in_bin_header_is_invalid_argument_without_calling_the_backend(
    gateway: Gateway, pb: Any, probe_stub: Any, value: str
) -> None:
    key = new_key()
    response = call(gateway, "Unary", pb.CallRequest(key=key), {"x-data-bin": value})
    assert response.http_status == 200
    assert response.trailers_only
    assert response.status == INVALID_ARGUMENT
    assert "x-data-bin" in response.message
    assert_not_called(pb, probe_stub, key)


def test_m2_non_ascii_value_in_text_header_is_invalid_argument(gateway: Gateway, pb: Any, probe_stub: Any) -> None:
    key = new_key()
    response = call(gateway, "Unary", pb.CallRequest(key=key), [(b"x-name", "café".encode())])
    assert response.trailers_only
    assert response.status == INVALID_ARGUMENT
    assert "-bin" in response.message  # tells the caller how to send bytes
    assert_not_called(pb, probe_stub, key)


# M3 / M4 ------------------------------------------------------------------------------------------


def test_m3_response_metadata_becomes_exposed_headers(gateway: Gateway, pb: Any) -> None:
    request = pb.CallRequest(payload=b"p", headers={"x-resp": "hello", "x-resp-bin": "AP8="})
    response = call(gateway, "Unary", request, {"origin": ALLOWED_ORIGIN})
    assert response.status == 0
    assert not response.trailers_only
    assert response.headers["x-resp"] == "hello"
    assert response.headers["x-resp-bin"] == "AP8="  # base64 again, padded
    exposed = {name.strip() for name in response.headers["access-control-expose-headers"].split(",")}
    assert {"x-resp", "x-resp-bin"} <= exposed


BACKEND_HTTP_METADATA = {
    "transfer-encoding": "gzip",
    "connection": "close",
    "keep-alive": "timeout=1",
    "upgrade": "example/1",
    "trailer": "x-later",
    "content-encoding": "gzip",
    "access-control-allow-origin": "*",
    "access-control-allow-credentials": "false",
}


@pytest.mark.parametrize("where", ["headers", "trailers"])
def test_m3_backend_metadata_cannot_take_over_the_http_response(gateway: Gateway, pb: Any, where: str) -> None:
    metadata = {**BACKEND_HTTP_METADATA, "x-fine": "kept"}
    # Initial metadata on a response with a message; trailing metadata on a trailers-only error.
    request = pb.CallRequest(headers=metadata) if where == "headers" else pb.CallRequest(fail_code=5, trailers=metadata)
    body = frame(request.SerializeToString())
    headers = {"content-type": BINARY, "origin": ALLOWED_ORIGIN}
    with httpx.Client(timeout=10.0) as client:
        r = client.post(f"{gateway.url}/accept.v1.Probe/Unary", content=body, headers=headers)
        response = parse_response(r.status_code, dict(r.headers), r.content)
        assert response.trailers_only == (where == "trailers")
        assert response.headers["x-fine"] == "kept"
        for name in BACKEND_HTTP_METADATA:
            if name == "transfer-encoding":
                assert r.headers.get_list(name) in ([], ["chunked"])
            elif name == "access-control-allow-origin":
                assert r.headers.get_list(name) == [ALLOWED_ORIGIN]
            elif name == "access-control-allow-credentials":
                assert r.headers.get_list(name) == ["true"]
            else:
                assert name not in r.headers
        # The connection is still good for the next call.
        again = client.post(f"{gateway.url}/accept.v1.Probe/Unary", content=frame(b""), headers=headers)
        assert parse_response(again.status_code, dict(again.headers), again.content).status == 0


def test_m4_trailing_metadata_goes_into_the_trailer_frame(gateway: Gateway, pb: Any) -> None:
    request = pb.CallRequest(payload=b"p", trailers={"x-trail": "t", "x-trail-bin": "AAEC"})
    response = call(gateway, "Unary", request)
    assert len(response.messages) == 1
    assert response.trailers[0] == ("grpc-status", "0")
    assert sorted(response.trailers[1:]) == [("x-trail", "t"), ("x-trail-bin", "AAEC")]
    assert "x-trail" not in response.headers


def test_m4_trailers_only_answer_carries_trailing_metadata_in_headers(gateway: Gateway, pb: Any) -> None:
    request = pb.CallRequest(
        fail_code=5, fail_message="no such thing", trailers={"x-trail": "t", "x-trail-bin": "AP8="}
    )
    response = call(gateway, "Unary", request, {"origin": ALLOWED_ORIGIN})
    assert response.trailers_only
    assert response.status == 5
    assert response.message == "no such thing"
    assert response.headers["x-trail"] == "t"
    assert response.headers["x-trail-bin"] == "AP8="
    exposed = {name.strip() for name in response.headers["access-control-expose-headers"].split(",")}
    assert {"x-trail", "x-trail-bin"} <= exposed


# M5 -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("grpc_timeout", "seconds"),
    [("1H", 3600.0), ("2M", 120.0), ("3S", 3.0), ("500m", 0.5), ("5000000u", 5.0), ("99999999n", 0.099999999)],
)
def test_m5_grpc_timeout_units_become_the_upstream_deadline(
    open_gateway: Gateway, pb: Any, grpc_timeout: str, seconds: float
) -> None:
    started = time.monotonic()
    response = call(open_gateway, "Unary", pb.CallRequest(), {"grpc-timeout": grpc_timeout})
    if response.status == DEADLINE_EXCEEDED and seconds < 1.0:
        # A loaded machine can spend 100 ms before the probe runs; the deadline still lasted that long.
        assert time.monotonic() - started >= seconds * 0.9
        return
    remaining = deadline_remaining(pb, response)
    # grpc core rounds a deadline up a little when it encodes it for the backend (60 s arrives as 60.1 s).
    assert max(0.0, seconds - 0.25) < remaining <= seconds * 1.01 + 0.001


@pytest.mark.parametrize("grpc_timeout", ["99999999H", "9999999H", "99999999M"])
def test_m5_longest_grpc_timeouts_are_long_deadlines_not_immediate_failures(
    open_gateway: Gateway, pb: Any, grpc_timeout: str
) -> None:
    # Thousands of years do not fit grpcio's deadline arithmetic; the gateway caps them at ~3 years.
    remaining = deadline_remaining(pb, call(open_gateway, "Unary", pb.CallRequest(), {"grpc-timeout": grpc_timeout}))
    assert remaining > 365 * 86400.0


def test_m5_without_max_timeout_a_call_without_grpc_timeout_has_no_deadline(open_gateway: Gateway, pb: Any) -> None:
    assert deadline_remaining(pb, call(open_gateway, "Unary", pb.CallRequest())) == -1.0


@pytest.mark.parametrize("grpc_timeout", ["120S", "1H", "99999999S"])
def test_m5_grpc_timeout_above_max_timeout_is_clamped(gateway: Gateway, pb: Any, grpc_timeout: str) -> None:
    remaining = deadline_remaining(pb, call(gateway, "Unary", pb.CallRequest(), {"grpc-timeout": grpc_timeout}))
    assert 59.0 < remaining <= 60.0 * 1.01


def test_m5_call_without_grpc_timeout_gets_the_max_timeout_deadline(gateway: Gateway, pb: Any) -> None:
    assert 59.0 < deadline_remaining(pb, call(gateway, "Unary", pb.CallRequest())) <= 60.0 * 1.01


@pytest.mark.parametrize("grpc_timeout", ["123456789S", "5x", "5", "S", "1.5S", "-5S", "5 S", "\uff15S"])
def test_m5_malformed_grpc_timeout_is_invalid_argument_without_calling_the_backend(
    gateway: Gateway, pb: Any, probe_stub: Any, grpc_timeout: str
) -> None:
    key = new_key()
    response = call(gateway, "Unary", pb.CallRequest(key=key), [(b"grpc-timeout", grpc_timeout.encode())])
    assert response.trailers_only
    assert response.status == INVALID_ARGUMENT
    assert "grpc-timeout" in response.message
    assert_not_called(pb, probe_stub, key)


# M6 -----------------------------------------------------------------------------------------------


def test_m6_deadline_before_any_message_is_trailers_only_deadline_exceeded(
    gateway: Gateway, pb: Any, probe_stub: Any
) -> None:
    key = new_key()
    started = time.monotonic()
    response = call(gateway, "Unary", pb.CallRequest(key=key, sleep_ms=30_000), {"grpc-timeout": "200m"})
    assert time.monotonic() - started < 10.0
    assert response.http_status == 200
    assert response.trailers_only
    assert response.status == DEADLINE_EXCEEDED
    wait_until(
        lambda: probe_stub.Observe(pb.Key(key=key), timeout=5).cancelled == 1,
        timeout=5.0,
        what="the backend to see its call cancelled",
    )


def test_m6_deadline_mid_stream_ends_with_a_deadline_exceeded_trailer_frame(
    gateway: Gateway, pb: Any, probe_stub: Any
) -> None:
    key = new_key()
    # The probe sends one reply, then waits for a Release that never comes.
    request = pb.CallRequest(key=key, count=3, wait_release=True)
    response = call(gateway, "ServerStream", request, {"grpc-timeout": "300m"})
    assert not response.trailers_only
    assert [pb.CallReply.FromString(message).index for message in response.messages] == [0]
    assert response.status == DEADLINE_EXCEEDED
    # Never released, the probe's stream can only end by being torn down.
    wait_until(
        lambda: probe_stub.Observe(pb.Key(key=key), timeout=5).finished == 1,
        timeout=5.0,
        what="the backend's stream to be torn down",
    )


# M7 -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("client_accepts", [None, "gzip", "identity"])
@pytest.mark.parametrize(("method", "count"), [("Unary", 1), ("ServerStream", 3)])
def test_m7_compressing_backend_still_gives_uncompressed_frames(
    compressing_gateway: Gateway, pb: Any, method: str, count: int, client_accepts: str | None
) -> None:
    payload = b"compressible " * 200
    headers = {"accept-encoding": "gzip"}
    if client_accepts is not None:
        headers["grpc-accept-encoding"] = client_accepts
    response = call(compressing_gateway, method, pb.CallRequest(payload=payload, count=count), headers)
    # parse_response fails on any frame flag but 0x00 before the trailer frame.
    assert response.status == 0
    assert [pb.CallReply.FromString(message).payload for message in response.messages] == [payload] * count
    assert "grpc-encoding" not in response.headers
    assert "content-encoding" not in response.headers
    assert "grpc-encoding" not in dict(response.trailers)
