"""CORS for browser callers on other origins (research section 4, C1-C4).

Choices pinned here (gateway/middleware/cors.py):

- C1/C2 any OPTIONS carrying `Access-Control-Request-Method` from an allowed origin is a preflight
  and is answered 204 by the middleware before routing, whatever path it names and whether or not
  it announces `x-grpc-web`: ACAO echoes the origin, Allow-Methods `GET, POST, OPTIONS`, every
  requested header is allowed (the gateway filters what it forwards itself), Max-Age from
  `cors.maxAge` (600 s by default), `Vary: Origin`, and Allow-Credentials when configured.
- C3 a disallowed origin gets a 403 preflight without any CORS header; its actual calls are still
  answered (the browser hides the answer from the page), without ACAO.
- C4 actual responses name what a page may read in Access-Control-Expose-Headers: grpc-status,
  grpc-message, grpc-status-details-bin and every non-safelisted header of that response (custom
  initial metadata, and trailers in a trailers-only answer) — never `*`, which browsers ignore on
  credentialed requests (grpc/grpc-web#415). Allow-Credentials only goes with an echoed origin:
  with `allowOrigins: ["*"]` the answer is ACAO `*` and never Allow-Credentials.
- Requests without an Origin (same-origin, non-browser) get no CORS header at all.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ALLOWED_ORIGIN
from tests.support.grpcweb import BINARY, frame, parse_response
from tests.support.processes import Gateway, run_gateway

OTHER_ORIGIN = "http://evil.example"
PATH = "/accept.v1.Probe/Unary"
BROWSER_REQUEST_HEADERS = "content-type,x-grpc-web,x-user-agent,grpc-timeout,authorization"


@pytest.fixture(scope="module")
def any_origin_gateway(probe_address: str, work_dir: Path) -> Iterator[Gateway]:
    config = {"upstreams": {"accept.v1.Probe": [probe_address]}, "cors": {"allowOrigins": ["*"]}}
    with run_gateway(config, work_dir) as running:
        yield running


def names(value: str | None) -> set[str]:
    """A comma-separated header value as a set of lower-case tokens."""
    return {token.strip().lower() for token in (value or "").split(",") if token.strip()}


def header_tokens(response: httpx.Response, name: str) -> set[str]:
    return set().union(*(names(value) for value in response.headers.get_list(name)))


def preflight(gateway: Gateway, origin: str, request_headers: str | None = None, path: str = PATH) -> httpx.Response:
    headers = {"origin": origin, "access-control-request-method": "POST"}
    if request_headers is not None:
        headers["access-control-request-headers"] = request_headers
    return httpx.options(f"{gateway.url}{path}", headers=headers)


def actual_call(gateway: Gateway, origin: str | None, request: Any) -> httpx.Response:
    headers = {"content-type": BINARY, "x-grpc-web": "1"}
    if origin is not None:
        headers["origin"] = origin
    return httpx.post(f"{gateway.url}{PATH}", content=frame(request.SerializeToString()), headers=headers)


# C1 / C2 ------------------------------------------------------------------------------------------


def test_c1_preflight_from_allowed_origin_allows_the_browsers_headers(gateway: Gateway) -> None:
    r = preflight(gateway, ALLOWED_ORIGIN, BROWSER_REQUEST_HEADERS)
    assert r.status_code == 204
    assert r.content == b""
    assert r.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
    assert {"post", "options"} <= header_tokens(r, "access-control-allow-methods")
    assert names(BROWSER_REQUEST_HEADERS) <= header_tokens(r, "access-control-allow-headers")
    assert r.headers["access-control-max-age"] == "600"
    assert "origin" in header_tokens(r, "vary")
    assert r.headers["access-control-allow-credentials"] == "true"


@pytest.mark.parametrize("request_headers", ["content-type", "content-type,x-custom-thing", None])
def test_c2_preflight_without_x_grpc_web_is_still_answered(gateway: Gateway, request_headers: str | None) -> None:
    r = preflight(gateway, ALLOWED_ORIGIN, request_headers)
    assert r.status_code == 204
    assert r.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
    assert "post" in header_tokens(r, "access-control-allow-methods")
    assert names(request_headers) <= header_tokens(r, "access-control-allow-headers")


def test_c2_preflight_is_answered_before_routing(gateway: Gateway) -> None:
    r = preflight(gateway, ALLOWED_ORIGIN, "content-type", path="/unknown.v1.Service/Method")
    assert r.status_code == 204
    assert r.headers["access-control-allow-origin"] == ALLOWED_ORIGIN


# C3 -----------------------------------------------------------------------------------------------


def test_c3_preflight_from_disallowed_origin_is_refused_without_cors_headers(gateway: Gateway) -> None:
    r = preflight(gateway, OTHER_ORIGIN, BROWSER_REQUEST_HEADERS)
    assert r.status_code == 403
    assert not [name for name in r.headers if name.lower().startswith("access-control-")]


def test_c3_call_from_disallowed_origin_is_answered_without_acao(gateway: Gateway, pb: Any) -> None:
    r = actual_call(gateway, OTHER_ORIGIN, pb.CallRequest(payload=b"p", headers={"x-custom": "c"}))
    response = parse_response(r.status_code, dict(r.headers), r.content)
    assert response.status == 0
    assert pb.CallReply.FromString(response.messages[0]).payload == b"p"
    assert not [name for name in r.headers if name.lower().startswith("access-control-")]


def test_c3_call_without_origin_gets_no_cors_headers(gateway: Gateway, pb: Any) -> None:
    r = actual_call(gateway, None, pb.CallRequest())
    assert parse_response(r.status_code, dict(r.headers), r.content).status == 0
    assert not [name for name in r.headers if name.lower().startswith("access-control-")]


# C4 -----------------------------------------------------------------------------------------------

ALWAYS_EXPOSED = {"grpc-status", "grpc-message", "grpc-status-details-bin"}


def test_c4_response_exposes_status_and_custom_headers_by_name(gateway: Gateway, pb: Any) -> None:
    r = actual_call(gateway, ALLOWED_ORIGIN, pb.CallRequest(headers={"x-custom": "c", "x-custom-bin": "AAE="}))
    assert parse_response(r.status_code, dict(r.headers), r.content).status == 0
    assert r.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
    assert r.headers["access-control-allow-credentials"] == "true"
    assert "origin" in header_tokens(r, "vary")
    exposed = header_tokens(r, "access-control-expose-headers")
    assert ALWAYS_EXPOSED | {"x-custom", "x-custom-bin"} <= exposed
    assert "*" not in exposed


def test_c4_trailers_only_error_exposes_its_trailers(gateway: Gateway, pb: Any) -> None:
    request = pb.CallRequest(fail_code=7, fail_message="denied", details=True, trailers={"x-reason": "r"})
    r = actual_call(gateway, ALLOWED_ORIGIN, request)
    response = parse_response(r.status_code, dict(r.headers), r.content)
    assert response.trailers_only
    assert response.status == 7
    assert "grpc-status-details-bin" in r.headers
    assert r.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
    exposed = header_tokens(r, "access-control-expose-headers")
    assert ALWAYS_EXPOSED | {"x-reason"} <= exposed
    assert "*" not in exposed


def test_c4_gateway_error_is_readable_by_the_page(gateway: Gateway, pb: Any) -> None:
    headers = {"content-type": BINARY, "origin": ALLOWED_ORIGIN, "grpc-encoding": "br"}
    r = httpx.post(f"{gateway.url}{PATH}", content=frame(pb.CallRequest().SerializeToString()), headers=headers)
    response = parse_response(r.status_code, dict(r.headers), r.content)
    assert response.status == 12  # UNIMPLEMENTED
    assert r.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
    exposed = header_tokens(r, "access-control-expose-headers")
    assert ALWAYS_EXPOSED | {"grpc-accept-encoding"} <= exposed


def test_c4_any_origin_gateway_answers_star_without_credentials(any_origin_gateway: Gateway, pb: Any) -> None:
    r = preflight(any_origin_gateway, OTHER_ORIGIN, BROWSER_REQUEST_HEADERS)
    assert r.status_code == 204
    assert r.headers["access-control-allow-origin"] == "*"
    assert "access-control-allow-credentials" not in r.headers

    r = actual_call(any_origin_gateway, OTHER_ORIGIN, pb.CallRequest(headers={"x-custom": "c"}))
    assert parse_response(r.status_code, dict(r.headers), r.content).status == 0
    assert r.headers["access-control-allow-origin"] == "*"
    assert "access-control-allow-credentials" not in r.headers
    exposed = header_tokens(r, "access-control-expose-headers")
    assert ALWAYS_EXPOSED | {"x-custom"} <= exposed
    assert "*" not in exposed
