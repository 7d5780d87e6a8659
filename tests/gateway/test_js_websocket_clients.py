"""Real JavaScript grpc-websockets clients, in Node, through a gateway process to accept.v1.Probe.

Each test runs tests/js/ws-call.mjs with one client and reads back, as JSON, what its user sees:
status code and message, replies, response headers and trailers, and the order of events. The
clients, both with their WebsocketTransport:

- nice-grpc-web: isomorphic-ws resolves to the `ws` package in Node; the service definition is
  nice-grpc's generic one, built at run time from the descriptor set (no ts-proto codegen);
- improbable: @improbable-eng/grpc-web's own client, with `ws` as the global WebSocket and a
  hand-made MethodDefinition whose (de)serialisers are @bufbuild/protobuf's.

`make test` installs them (npm ci in tests/js).
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support.node import node_call, require_node
from tests.support.processes import Gateway

CLIENTS = ["nice-grpc-web", "improbable"]
AWKWARD_MESSAGE = "50% off: café ✓\nsecond line"

Call = Callable[..., dict[str, Any]]


@pytest.fixture(scope="module")
def node() -> str:
    return require_node(("nice-grpc-web", "ws", "@improbable-eng/grpc-web", "@bufbuild/protobuf"))


@pytest.fixture
def call(node: str, gateway: Gateway, probe_gen: Path) -> Call:
    """`call(client, method=..., requests=[...], ...)`: one call through that client (see ws-call.mjs)."""

    def run(client: str, **spec: Any) -> dict[str, Any]:
        return node_call(node, "ws-call.mjs", client, gateway.url, str(probe_gen / "probe.binpb"), spec)

    return run


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def payloads(result: dict[str, Any]) -> list[bytes]:
    return [base64.b64decode(message["payload"]) for message in result["messages"]]


@pytest.mark.parametrize("client", CLIENTS)
def test_client_streaming_call(call: Call, client: str) -> None:
    result = call(client, method="ClientStream", requests=[{"payload": b64(part)} for part in (b"a\x00", b"b", b"c")])

    assert result["code"] == 0, result
    assert payloads(result) == [b"a\x00bc"]
    assert result["messages"][0]["requests"] == 3
    assert result["events"] == ["send 0", "send 1", "send 2", "message 0", "end 0"]


@pytest.mark.parametrize("client", CLIENTS)
def test_bidi_call(call: Call, client: str) -> None:
    result = call(client, method="Bidi", requests=[{"payload": b64(f"m{n}".encode())} for n in range(3)])

    assert result["code"] == 0, result
    assert payloads(result) == [b"m0", b"m1", b"m2"]
    assert [message["requests"] for message in result["messages"]] == [1, 2, 3]


@pytest.mark.parametrize("client", CLIENTS)
def test_bidi_ping_pong_reply_n_arrives_before_request_n_plus_1_is_sent(call: Call, client: str) -> None:
    # ws-call.mjs hands request n+1 to the client only once reply n has arrived: a bridge that held
    # replies back (until the request stream ended, say) would leave the call hanging until the timeout.
    count = 5
    result = call(
        client,
        method="Bidi",
        requests=[{"payload": b64(f"ping {n}".encode())} for n in range(count)],
        pingPong=True,
        timeoutMs=10_000,
    )

    assert result["code"] == 0, result
    expected = [event for n in range(count) for event in (f"send {n}", f"message {n}")]
    assert result["events"] == [*expected, "end 0"]
    assert payloads(result) == [f"ping {n}".encode() for n in range(count)]


@pytest.mark.parametrize("client", CLIENTS)
def test_a_bidi_servers_headers_reach_the_client_before_its_first_request(call: Call, client: str) -> None:
    # The probe sends its headers at once and answers only requests; ws-call.mjs hands the client its
    # first request only once they have arrived: a bridge that sent them with the first reply would
    # leave the call hanging until the timeout.
    result = call(
        client,
        method="Bidi",
        requests=[{"payload": b64(b"ping")}],
        headers={"x-headers-first": "now"},
        afterHeaders=True,
        timeoutMs=5_000,
    )

    assert result["code"] == 0, result
    assert result["headers"]["x-headers-first"] == "now"
    assert result["events"] == ["headers", "send 0", "message 0", "end 0"]
    assert payloads(result) == [b"ping"]


@pytest.mark.parametrize("client", CLIENTS)
def test_unary_and_server_streaming_over_websocket(call: Call, client: str) -> None:
    unary = call(client, method="Unary", requests=[{"payload": b64(b"\x00\xffhi")}])
    stream = call(client, method="ServerStream", requests=[{"count": 3, "payload": b64(b"tick")}])

    assert unary["code"] == 0, unary
    assert payloads(unary) == [b"\x00\xffhi"]
    assert stream["code"] == 0, stream
    assert [message["index"] for message in stream["messages"]] == [0, 1, 2]
    assert stream["events"] == ["send 0", "message 0", "message 1", "message 2", "end 0"]


@pytest.mark.parametrize("client", CLIENTS)
def test_an_error_reaches_the_client_with_its_code_and_message(call: Call, client: str) -> None:
    result = call(client, method="Unary", requests=[{"failCode": 5, "failMessage": AWKWARD_MESSAGE}])

    assert result["code"] == 5, result
    assert result["message"] == AWKWARD_MESSAGE
    assert result["messages"] == []


@pytest.mark.parametrize("client", CLIENTS)
def test_a_bidi_error_after_replies(call: Call, client: str) -> None:
    result = call(client, method="Bidi", requests=[{"payload": b64(b"ok")}, {"failCode": 10, "failMessage": "stop"}])

    assert (result["code"], result["message"]) == (10, "stop"), result
    assert payloads(result) == [b"ok"]
    assert result["events"][-1] == "end 10"


@pytest.mark.parametrize("client", CLIENTS)
def test_metadata_travels_both_ways(call: Call, client: str) -> None:
    result = call(
        client,
        method="Unary",
        requests=[{"headers": {"x-resp": "h1"}, "trailers": {"x-trail": "t1"}}],
        headers={"x-custom": "abc", "authorization": "Bearer t"},
    )

    assert result["code"] == 0, result
    received = result["messages"][0]["metadata"]  # what the service saw
    assert (received["x-custom"], received["authorization"]) == ("abc", "Bearer t")
    assert result["headers"]["x-resp"] == "h1"
    assert result["trailers"]["x-trail"] == "t1"


@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.parametrize(
    ("service", "method", "code"),
    [("accept.v1.Probe", "Nope", 12), ("gone.v1.Nothing", "Unary", 14)],
    ids=["unknown-method", "backend-down"],
)
def test_calls_the_gateway_cannot_place(call: Call, client: str, service: str, method: str, code: int) -> None:
    result = call(client, service=service, method=method, kind="unary", requests=[{}])

    assert result["code"] == code, result
    assert result["messages"] == []
