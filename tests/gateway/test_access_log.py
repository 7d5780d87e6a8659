"""Access lines (JSON, one per HTTP request or call) and the call metrics on /metrics, from a real gateway."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import connect
from websockets.typing import Subprotocol

from tests.gateway.test_grpc_websockets import BINARY_HEADERS, opened
from tests.support.grpcweb import BINARY, frame, parse_response
from tests.support.processes import Gateway, run_gateway, wait_until

TOKEN = "sekrit-token-" + secrets.token_hex(8)


@pytest.fixture(scope="module")
def logged_gateway(probe_address: str, work_dir: Path) -> Iterator[Gateway]:
    config = {"upstreams": {"accept.v1.Probe": [probe_address]}, "accessLog": True}
    with run_gateway(config, work_dir) as gateway:
        yield gateway


def access_lines(gateway: Gateway) -> list[dict[str, Any]]:
    lines = []
    for line in gateway.process.output().splitlines():
        if line.startswith("{"):
            lines.append(json.loads(line))
    return lines


def line_with(gateway: Gateway, **fields: Any) -> dict[str, Any]:
    def found() -> dict[str, Any] | None:
        return next((ln for ln in access_lines(gateway) if fields.items() <= ln.items()), None)

    line: dict[str, Any] = wait_until(found, timeout=10, what=f"an access line with {fields}")
    return line


def test_a_grpc_web_call_is_one_json_line_with_its_call_and_no_token(logged_gateway: Gateway, pb: Any) -> None:
    trace_id = secrets.token_hex(16)
    response = httpx.post(
        f"{logged_gateway.url}/api/accept.v1.Probe/Unary",
        content=frame(pb.CallRequest(fail_code=5, fail_message="nothing here").SerializeToString()),
        headers={
            "content-type": BINARY,
            "authorization": f"Bearer {TOKEN}",
            "cookie": f"session={TOKEN}",
            "x-request-id": "req-access-1",
            "traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01",
        },
        timeout=10.0,
    )
    assert parse_response(response.status_code, dict(response.headers), response.content).status == 5
    line = line_with(logged_gateway, requestId="req-access-1")
    assert line["protocol"] == "grpc-web"
    assert line["traceId"] == trace_id  # the client's trace, passed through (tracing is off)
    assert (line["service"], line["method"], line["grpcStatus"]) == ("accept.v1.Probe", "Unary", "NOT_FOUND")
    assert (line["httpMethod"], line["path"], line["httpStatus"]) == ("POST", "/api/accept.v1.Probe/Unary", 200)
    assert line["client"] == "127.0.0.1"
    assert line["durationMs"] >= 0
    assert line["time"].endswith("Z")
    assert len([ln for ln in access_lines(logged_gateway) if ln.get("requestId") == "req-access-1"]) == 1
    assert TOKEN not in logged_gateway.process.output()
    assert 'HTTP/1.1" 200' not in logged_gateway.process.output()  # uvicorn's own access log is off


def test_a_connect_call_has_its_http_status_and_its_grpc_status(logged_gateway: Gateway, pb: Any) -> None:
    response = httpx.post(
        f"{logged_gateway.url}/accept.v1.Probe/Unary",
        content=pb.CallRequest(fail_code=5).SerializeToString(),
        headers={"content-type": "application/proto", "connect-protocol-version": "1", "x-request-id": "connect-1"},
        timeout=10.0,
    )
    assert response.status_code == 404
    line = line_with(logged_gateway, requestId="connect-1")
    assert (line["protocol"], line["httpStatus"], line["grpcStatus"]) == ("connect", 404, "NOT_FOUND")


def test_rest_requests_and_native_grpc_calls_get_lines_too(logged_gateway: Gateway, pb: Any, pb_grpc: Any) -> None:
    assert httpx.get(f"{logged_gateway.url}/healthz?token={TOKEN}", timeout=5).status_code == 200
    line = line_with(logged_gateway, path="/healthz")
    assert (line["protocol"], line["httpStatus"]) == ("http", 200)
    assert len(line["requestId"]) == 16  # made by the gateway: the client sent none
    assert "service" not in line
    with grpc.insecure_channel(logged_gateway.grpc_target) as channel:
        pb_grpc.ProbeStub(channel).Unary(pb.CallRequest(key="native"), metadata=[("authorization", TOKEN)], timeout=10)
    line = line_with(logged_gateway, protocol="grpc")
    assert (line["service"], line["method"], line["grpcStatus"], line["client"]) == (
        "accept.v1.Probe",
        "Unary",
        "OK",
        "127.0.0.1",
    )
    assert TOKEN not in logged_gateway.process.output()


def metric(gateway: Gateway, name: str, **labels: str) -> float | None:
    """The value of the sample `name` with exactly these labels on /metrics, or None."""
    text = httpx.get(f"{gateway.url}/metrics", timeout=5).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    return None


def test_call_latency_histograms_per_service_method_and_code(logged_gateway: Gateway, pb: Any) -> None:
    for fail_code in (0, 0, 9):
        httpx.post(
            f"{logged_gateway.url}/accept.v1.Probe/Unary",
            content=frame(pb.CallRequest(fail_code=fail_code).SerializeToString()),
            headers={"content-type": BINARY},
            timeout=10.0,
        )
    call = {"service": "accept.v1.Probe", "method": "Unary"}
    ok = metric(logged_gateway, "upf_call_duration_seconds_count", **call, code="OK")
    assert (ok or 0) >= 2
    assert metric(logged_gateway, "upf_call_duration_seconds_bucket", **call, code="OK", le="+Inf") == ok
    assert metric(logged_gateway, "upf_call_duration_seconds_bucket", **call, code="OK", le="0.0005") is not None
    assert (metric(logged_gateway, "upf_call_duration_seconds_sum", **call, code="OK") or 0) > 0
    failed = metric(logged_gateway, "upf_call_duration_seconds_count", **call, code="FAILED_PRECONDITION")
    assert (failed or 0) >= 1


async def test_open_websockets_are_a_gauge_per_kind(logged_gateway: Gateway) -> None:
    url = f"ws://127.0.0.1:{logged_gateway.http_port}/accept.v1.Probe/Bidi"
    async with connect(url, subprotocols=[Subprotocol("grpc-websockets")], proxy=None, open_timeout=5):
        wait_until(
            lambda: metric(logged_gateway, "upf_websockets_open", kind="grpc-websockets") == 1,
            what="the open socket on /metrics",
        )
    wait_until(
        lambda: metric(logged_gateway, "upf_websockets_open", kind="grpc-websockets") == 0,
        what="the closed socket to leave the gauge",
    )


async def test_a_call_on_a_websocket_gets_its_own_line(logged_gateway: Gateway, pb: Any) -> None:
    header_block = BINARY_HEADERS + b"x-request-id: ws-line-1\r\nauthorization: Bearer " + TOKEN.encode() + b"\r\n"
    async with opened(logged_gateway, "Unary", origin=None, header_block=header_block) as call:
        await call.request(pb, fail_code=5)
        await call.half_close()
        await call.finish()
    line = line_with(logged_gateway, requestId="ws-line-1")
    assert (line["protocol"], line["grpcStatus"]) == ("grpc-websockets", "NOT_FOUND")
    assert (line["service"], line["method"], line["client"]) == ("accept.v1.Probe", "Unary", "127.0.0.1")
    assert TOKEN not in logged_gateway.process.output()
