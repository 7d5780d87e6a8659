"""The Connect protocol on the gateway's call paths, as curl and any HTTP client use it: JSON in, JSON
out, errors in Connect's shape with their HTTP statuses, GET only for side-effect-free methods, server
streams in envelopes, Connect-Timeout-Ms as the deadline. (connect-es's own Connect transport runs the
common scenarios in test_js_clients.py.)"""

from __future__ import annotations

import base64
import json
import struct
import uuid
from typing import Any

import httpx
import pytest

from tests.support.processes import Gateway, wait_until

JSON = {"content-type": "application/json"}


def _post(gateway: Gateway, method: str, body: Any, headers: dict[str, str] | None = None) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(
        f"{gateway.url}/api/accept.v1.Probe/{method}", content=content, headers={**JSON, **(headers or {})}, timeout=10
    )


def _envelopes(body: bytes) -> list[tuple[int, Any]]:
    out, offset = [], 0
    while offset < len(body):
        flags, length = struct.unpack_from(">BI", body, offset)
        out.append((flags, json.loads(body[offset + 5 : offset + 5 + length])))
        offset += 5 + length
    return out


def test_a_plain_json_call_answers_json(gateway: Gateway) -> None:
    payload = base64.b64encode(b"hello").decode()
    reply = _post(gateway, "Unary", {"payload": payload, "headers": {"x-seen": "yes"}, "trailers": {"x-done": "1"}})
    assert reply.status_code == 200, reply.text
    assert reply.headers["content-type"] == "application/json"
    assert reply.json()["payload"] == payload
    assert reply.headers["x-seen"] == "yes"  # response metadata in headers
    assert reply.headers["trailer-x-done"] == "1"  # trailing metadata with Connect's prefix


@pytest.mark.parametrize(
    ("body", "names"),
    [
        (b'{"payload": 5}', "payload"),
        (b'{"count": "many"}', "count"),
        (b"{not json", "CallRequest"),
    ],
)
def test_json_that_does_not_fit_is_invalid_argument_naming_the_field(gateway: Gateway, body: bytes, names: str) -> None:
    reply = _post(gateway, "Unary", body)
    assert reply.status_code == 400
    assert reply.json()["code"] == "invalid_argument"
    assert names in reply.json()["message"]


def test_oversized_bodies_are_refused_before_the_plugin(gateway: Gateway) -> None:
    big = {"payload": base64.b64encode(b"x" * (2 * 1024 * 1024)).decode()}  # the limit is 1 MiB
    reply = _post(gateway, "Unary", big)
    assert reply.status_code == 400
    assert reply.json()["code"] == "invalid_argument"
    assert "limit" in reply.json()["message"]


def test_plugin_errors_keep_their_code_message_and_metadata(gateway: Gateway) -> None:
    reply = _post(
        gateway,
        "Unary",
        {"failCode": 5, "failMessage": "no such order", "details": True, "trailers": {"x-why": "gone"}},
    )
    assert reply.status_code == 404
    assert reply.json() == {"code": "not_found", "message": "no such order"}  # the Status has no details to show
    assert reply.headers["trailer-x-why"] == "gone"
    assert "trailer-grpc-status-details-bin" not in reply.headers  # read into the body, not passed on


def test_unknown_methods_and_services(gateway: Gateway) -> None:
    unknown_method = _post(gateway, "Nope", {})
    assert (unknown_method.status_code, unknown_method.json()["code"]) == (501, "unimplemented")
    assert "Nope" in unknown_method.json()["message"]
    gone = httpx.post(f"{gateway.url}/api/nope.v1.Nothing/Call", content=b"{}", headers=JSON, timeout=10)
    assert (gone.status_code, gone.json()["code"]) == (501, "unimplemented")


def test_get_is_only_for_side_effect_free_methods(gateway: Gateway) -> None:
    reply = httpx.get(
        f"{gateway.url}/api/accept.v1.Probe/Unary", params={"encoding": "json", "message": "{}"}, timeout=10
    )
    assert reply.status_code == 405  # as connect-go answers: Unary is not marked NO_SIDE_EFFECTS
    assert reply.headers["allow"] == "POST, OPTIONS"
    assert "side-effect free" in reply.text


def test_connect_timeout_ms_is_the_calls_deadline(gateway: Gateway) -> None:
    seen = _post(gateway, "Unary", {}, {"connect-timeout-ms": "5000"})
    assert 0 < seen.json()["deadlineRemaining"] <= 5
    slow = _post(gateway, "Unary", {"sleepMs": 2000}, {"connect-timeout-ms": "200"})
    assert (slow.status_code, slow.json()["code"]) == (504, "deadline_exceeded")
    bad = _post(gateway, "Unary", {}, {"connect-timeout-ms": "soon"})
    assert (bad.status_code, bad.json()["code"]) == (400, "invalid_argument")


def test_a_server_stream_comes_in_envelopes_and_ends_with_its_status(gateway: Gateway) -> None:
    request = json.dumps({"count": 3, "responseBytes": 1, "trailers": {"x-end": "yes"}}).encode()
    reply = httpx.post(
        f"{gateway.url}/api/accept.v1.Probe/ServerStream",
        content=struct.pack(">BI", 0, len(request)) + request,
        headers={"content-type": "application/connect+json"},
        timeout=10,
    )
    assert reply.status_code == 200
    assert reply.headers["content-type"] == "application/connect+json"
    frames = _envelopes(reply.content)
    assert [flags for flags, _ in frames] == [0, 0, 0, 2]
    assert [body.get("index", 0) for _, body in frames[:3]] == [0, 1, 2]
    assert frames[-1][1] == {"metadata": {"x-end": ["yes"]}}

    failing = json.dumps({"count": 3, "failAfter": 1, "failCode": 9, "failMessage": "stop"}).encode()
    reply = httpx.post(
        f"{gateway.url}/api/accept.v1.Probe/ServerStream",
        content=struct.pack(">BI", 0, len(failing)) + failing,
        headers={"content-type": "application/connect+json"},
        timeout=10,
    )
    frames = _envelopes(reply.content)
    assert reply.status_code == 200  # a stream's error travels in its last envelope
    assert frames[-1] == (2, {"error": {"code": "failed_precondition", "message": "stop"}})


def test_unary_and_stream_forms_must_match_the_method(gateway: Gateway) -> None:
    as_unary = _post(gateway, "ServerStream", {})
    assert as_unary.status_code == 400
    assert "application/connect+json" in as_unary.json()["message"]
    client_stream = _post(gateway, "ClientStream", {})
    assert (client_stream.status_code, client_stream.json()["code"]) == (501, "unimplemented")


def test_the_binary_form_needs_no_schema_and_answers_bytes(gateway: Gateway) -> None:
    reply = httpx.post(
        f"{gateway.url}/api/accept.v1.Probe/Unary",
        content=b"\x0a\x02hi",  # CallRequest{payload: "hi"}
        headers={"content-type": "application/proto"},
        timeout=10,
    )
    assert reply.status_code == 200
    assert reply.headers["content-type"] == "application/proto"
    assert reply.content.startswith(b"\x0a\x02hi")


def test_a_client_leaving_a_stream_cancels_the_upstream_call(gateway: Gateway, pb: Any, probe_stub: Any) -> None:
    key = f"connect-{uuid.uuid4().hex}"
    request = json.dumps({"key": key, "count": 3, "waitRelease": True}).encode()
    with (
        httpx.Client(timeout=httpx.Timeout(5.0)) as client,
        client.stream(
            "POST",
            f"{gateway.url}/api/accept.v1.Probe/ServerStream",
            content=struct.pack(">BI", 0, len(request)) + request,
            headers={"content-type": "application/connect+json"},
        ) as response,
    ):
        assert next(response.iter_raw())[:1] == b"\x00"  # the first message arrived
    # httpx closed the connection mid-stream; without a Release the probe's stream ends only by being
    # torn down, which the gateway must do when its client leaves (a watch stream would run forever).
    observation = wait_until(
        lambda: (o := probe_stub.Observe(pb.Key(key=key), timeout=5)).finished and o,
        timeout=5.0,
        what="the probe's stream to be torn down",
    )
    assert (observation.started, observation.finished) == (1, 1)
