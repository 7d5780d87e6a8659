"""The shell's TypeScript client for upf-mux.v1 (shell-web/sdk), compiled and run in Node with `ws`,
through a gateway process to accept.v1.Probe (tests/js/mux-scenario.mjs drives it).

`make test` builds it (npm ci and npm run build in shell-web/sdk) and installs tests/js.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support.node import node_call, require_node
from tests.support.processes import ROOT, Gateway, wait_until

SDK_BUILD = ROOT / "shell-web" / "sdk" / "dist" / "mux.js"
OK, CANCELLED, DEADLINE_EXCEEDED, NOT_FOUND = 0, 1, 4, 5

Scenario = Callable[..., dict[str, Any]]


@pytest.fixture(scope="module")
def node() -> str:
    path = require_node(("ws", "@bufbuild/protobuf"))
    if not SDK_BUILD.is_file():
        pytest.fail(f"{SDK_BUILD} is missing: run `make test` (it runs npm ci and npm run build in shell-web/sdk)")
    return path


@pytest.fixture
def scenario(node: str, gateway: Gateway, probe_gen: Path) -> Scenario:
    def run(name: str, **spec: Any) -> dict[str, Any]:
        return node_call(node, "mux-scenario.mjs", name, gateway.url, str(probe_gen / "probe.binpb"), spec)

    return run


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def payloads(call: dict[str, Any]) -> list[bytes]:
    return [base64.b64decode(reply["payload"]) for reply in call["replies"]]


def test_ten_concurrent_calls_of_every_kind_share_one_socket(scenario: Scenario) -> None:
    calls: list[dict[str, Any]] = [
        *({"kind": "unary", "method": "Unary", "request": {"payload": b64(f"u{n}".encode())}} for n in range(4)),
        *(
            {"kind": "serverStream", "method": "ServerStream", "request": {"count": 3, "payload": b64(tick)}}
            for tick in (b"s0", b"s1")
        ),
        *(
            {"kind": "clientStream", "method": "ClientStream", "requests": [{"payload": b64(p)} for p in (b"a", b"b")]}
            for _ in range(2)
        ),
        *(
            {"kind": "bidi", "method": "Bidi", "requests": [{"payload": b64(f"b{n}-{i}".encode())} for i in range(3)]}
            for n in range(2)
        ),
    ]
    calls[0]["metadata"] = {"x-custom": "abc"}
    calls[1]["request"] = {"failCode": NOT_FOUND, "failMessage": "café ✓", "trailers": {"x-trail": "t1"}}

    result = scenario("concurrent", calls=calls)

    assert result["sockets"] == 1
    got = result["calls"]
    assert [call["code"] for call in got] == [OK, NOT_FOUND, *[OK] * 8]
    assert payloads(got[0]) == [b"u0"]
    assert got[0]["replies"][0]["metadata"]["x-custom"] == "abc"
    assert (got[1]["message"], got[1]["trailers"]["x-trail"]) == ("café ✓", ["t1"])
    assert [payloads(got[n]) for n in (2, 3)] == [[b"u2"], [b"u3"]]
    assert [payloads(got[n]) for n in (4, 5)] == [[b"s0"] * 3, [b"s1"] * 3]
    assert [(payloads(got[n]), got[n]["replies"][0]["requests"]) for n in (6, 7)] == [([b"ab"], 2)] * 2
    assert [payloads(got[n]) for n in (8, 9)] == [[f"b{n}-{i}".encode() for i in range(3)] for n in range(2)]


def test_bidi_ping_pong_reply_n_arrives_before_request_n_plus_1(scenario: Scenario) -> None:
    count = 10
    result = scenario("pingpong", count=count)

    assert result["code"] == OK, result
    assert result["events"] == [event for n in range(count) for event in (f"send {n}", f"message {n}")]
    assert payloads(result) == [f"ping {n}".encode() for n in range(count)]


def test_headers_reach_the_client_before_the_first_reply(scenario: Scenario) -> None:
    # The probe sends its headers and holds its replies until the scenario, having seen the headers,
    # releases them: a bridge that sent the headers with the first reply would hang the call.
    name = f"ts-{uuid.uuid4().hex}"
    request = {"count": 1, "key": name, "headers": {"x-early": "yes"}, "waitReleaseFirst": True}
    result = scenario("headersFirst", request=request, timeoutMs=5_000)

    assert result["code"] == OK, result
    assert result["headers"]["x-early"] == ["yes"]
    # The release's own answer and the reply it lets go may arrive in either order.
    assert result["events"][0] == "headers"
    assert sorted(result["events"][1:]) == ["message 0", "released"]
    assert [reply["index"] for reply in result["replies"]] == [0]


def test_a_bidi_call_opens_before_its_first_request_and_sees_headers_sent_first(scenario: Scenario) -> None:
    # The probe's Bidi sends its headers before reading anything (x-headers-first); the request
    # iterable yields only once they have arrived: a client that opened the call with its first
    # message would wait for its deadline.
    result = scenario("bidiHeadersFirst", timeoutMs=5_000)

    assert result["code"] == OK, result
    assert result["headers"]["x-headers-first"] == ["yes"]
    assert result["events"] == ["headers", "send 0", "message 0"]
    assert payloads(result) == [b"after the headers"]


def test_an_abort_cancels_the_call_upstream_and_the_socket_carries_on(
    scenario: Scenario, pb: Any, probe_stub: Any
) -> None:
    name = f"ts-{uuid.uuid4().hex}"
    result = scenario("cancel", request={"count": 3, "key": name, "waitRelease": True})

    assert (result["cancelled"]["code"], result["cancelled"]["message"]) == (CANCELLED, "the call was aborted")
    assert [reply["index"] for reply in result["cancelled"]["replies"]] == [0]
    assert (result["after"]["code"], payloads(result["after"])) == (OK, [b"after"])
    assert result["sockets"] == 1
    wait_until(
        lambda: probe_stub.Observe(pb.Key(key=name), timeout=5).cancelled == 1,
        timeout=5,
        what="the probe to see the call cancelled",
    )


def test_a_deadline_ends_the_call_with_deadline_exceeded(scenario: Scenario) -> None:
    result = scenario("deadline", request={"sleepMs": 10_000}, timeoutMs=300)

    assert result["code"] == DEADLINE_EXCEEDED, result
    assert result["elapsedMs"] < 3000
