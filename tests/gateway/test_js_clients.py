"""Third-party JavaScript gRPC-Web clients against a real gateway process and the accept.v1.Probe service.

Each test runs tests/js/call.mjs in Node with one client and reads back, as JSON, what that client's
user sees: status code and message, replies, response headers and trailers. The clients:

- connect: @connectrpc/connect-node createGrpcWebTransport (binary, HTTP/1.1) + createClient;
- grpc-web: the official grpc-web runtime, format "text", over xhr2 (no generated stubs);
- protobuf-ts: @protobuf-ts/grpcweb-transport GrpcWebFetchTransport, format "text".

All of them take the schema from the descriptor set that `probe_gen` writes; no JS codegen.
`make test` installs them (npm ci in tests/js).
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests.support.node import node_call, require_node
from tests.support.processes import Gateway, wait_until

CLIENTS = ["connect", "connect-json", "connect-proto", "grpc-web", "protobuf-ts"]

# '%' must survive percent-decoding, non-ASCII and the newline must be percent-encoded by the gateway.
AWKWARD_MESSAGE = "50% off: café ✓\nsecond line"
# The grpc-message header value on the wire, which @protobuf-ts shows without decoding it.
AWKWARD_MESSAGE_ON_THE_WIRE = "50%25 off: caf%C3%A9 %E2%9C%93%0Asecond line"

Call = Callable[..., dict[str, Any]]


@pytest.fixture(scope="module")
def node() -> str:
    return require_node(("@connectrpc/connect-node", "grpc-web", "xhr2", "@protobuf-ts/grpcweb-transport"))


@pytest.fixture
def call(node: str, gateway: Gateway, probe_gen: Path) -> Call:
    """`call(client, method=..., request={...}, ...)`: one call through that client (see call.mjs for the spec)."""

    def run(client: str, **spec: Any) -> dict[str, Any]:
        return node_call(node, "call.mjs", client, gateway.url, str(probe_gen / "probe.binpb"), spec)

    return run


@pytest.fixture
def observe(probe_address: str, pb: Any, pb_grpc: Any) -> Callable[[str], Any]:
    """What the probe service saw of the calls made with a key, asked over direct gRPC."""

    def ask(key: str) -> Any:
        with grpc.insecure_channel(probe_address) as channel:
            return pb_grpc.ProbeStub(channel).Observe(pb.Key(key=key), timeout=5)

    return ask


def b64(value: str) -> bytes:
    return base64.b64decode(value + "=" * (-len(value) % 4))


def payloads(result: dict[str, Any]) -> list[bytes]:
    return [base64.b64decode(message["payload"]) for message in result["messages"]]


def indexes(result: dict[str, Any]) -> list[int]:
    return [message["index"] for message in result["messages"]]


def key() -> str:
    return f"js-{uuid.uuid4().hex}"


@pytest.mark.parametrize("client", CLIENTS)
def test_unary_call_echoes_the_payload(call: Call, client: str) -> None:
    payload = b"hello \x00\xff gateway"
    result = call(client, method="Unary", request={"payload": base64.b64encode(payload).decode()})

    assert result["code"] == 0, result
    assert payloads(result) == [payload]
    assert result["events"] == ["message 0", "end 0"]


@pytest.mark.parametrize("client", CLIENTS)
def test_server_stream_replies_arrive_in_order(call: Call, client: str) -> None:
    result = call(client, method="ServerStream", request={"count": 3, "payload": base64.b64encode(b"tick").decode()})

    assert result["code"] == 0, result
    assert indexes(result) == [0, 1, 2]
    assert payloads(result) == [b"tick"] * 3
    assert result["events"] == ["message 0", "message 1", "message 2", "end 0"]


@pytest.mark.parametrize("client", CLIENTS)
def test_server_stream_hands_over_each_reply_before_the_stream_ends(
    call: Call, observe: Callable[[str], Any], client: str
) -> None:
    # The service sends reply n+1 only after Release(key), and the script calls Release only once
    # reply n has reached its code: the stream can only finish if each reply was delivered while
    # the response was still open. The timeout turns a client that buffers the stream into a failure.
    name = key()
    result = call(
        client,
        method="ServerStream",
        request={"count": 3, "key": name, "waitRelease": True},
        releaseKey=name,
        timeoutMs=10_000,
    )

    assert result["code"] == 0, result
    assert indexes(result) == [0, 1, 2]
    events = result["events"]
    for n in range(3):
        assert f"released {n}" in events, events
    assert events.index("message 0") < events.index("message 1") < events.index("message 2") < events.index("end 0")
    seen = observe(name)
    assert (seen.started, seen.finished, seen.cancelled) == (1, 1, 0)


# grpc-web reports metadata only at the end of a call, and connect reports a unary call's headers
# with its reply: those two cannot show when the headers came.
@pytest.mark.parametrize(
    ("client", "method"), [("connect", "ServerStream"), ("protobuf-ts", "ServerStream"), ("protobuf-ts", "Unary")]
)
def test_response_headers_reach_the_client_before_the_first_reply(
    call: Call, observe: Callable[[str], Any], client: str, method: str
) -> None:
    # The service sends its headers, then waits for Release(key) before any reply; the script calls
    # Release when its client reports the headers. The call can only finish if they came first.
    name = key()
    result = call(
        client,
        method=method,
        request={"count": 1, "key": name, "headers": {"x-early": "yes"}, "waitReleaseFirst": True},
        releaseOnHeaders=name,
        timeoutMs=10_000,
    )

    assert result["code"] == 0, result
    assert result["headers"]["x-early"] == "yes"
    events = result["events"]
    assert events[0] == "headers", events
    assert sorted(events[1:]) == ["end 0", "message 0", "released after headers"], events
    assert observe(name).finished == 1


@pytest.mark.parametrize("client", CLIENTS)
def test_error_status_and_message_reach_the_client(call: Call, client: str) -> None:
    result = call(client, method="Unary", request={"failCode": 5, "failMessage": AWKWARD_MESSAGE})

    assert result["code"] == 5, result
    assert result["messages"] == []
    if client == "protobuf-ts":
        # It shows grpc-message as it arrives: the gateway's percent-encoding, not decoded.
        assert result["message"] == AWKWARD_MESSAGE_ON_THE_WIRE
    else:
        assert result["message"] == AWKWARD_MESSAGE


@pytest.mark.parametrize("client", CLIENTS)
def test_error_after_streamed_replies(call: Call, client: str) -> None:
    request = {"count": 3, "failCode": 9, "failAfter": 2, "failMessage": AWKWARD_MESSAGE}
    result = call(client, method="ServerStream", request=request)

    assert indexes(result) == [0, 1]
    assert result["code"] == 9, result
    expected = AWKWARD_MESSAGE_ON_THE_WIRE if client == "protobuf-ts" else AWKWARD_MESSAGE
    assert result["message"] == expected
    assert result["events"] == ["message 0", "message 1", "end 9"]


@pytest.mark.parametrize("client", CLIENTS)
def test_metadata_travels_both_ways(call: Call, client: str) -> None:
    trace = b"\x00\xff\x10\x80 raw"
    header_bytes = b"\x00\x01\x02\xff"
    trailer_bytes = b"\xff\x00"
    result = call(
        client,
        method="Unary",
        request={
            "headers": {"x-resp": "h1", "x-resp-bin": base64.b64encode(header_bytes).decode()},
            "trailers": {"x-trail": "t1", "x-trail-bin": base64.b64encode(trailer_bytes).decode()},
        },
        headers={"x-custom": "abc"},
        binaryHeaders={"x-trace-bin": base64.b64encode(trace).decode()},
    )

    assert result["code"] == 0, result
    received = result["messages"][0]["metadata"]  # what the service saw; -bin values base64
    assert received["x-custom"] == "abc"
    assert b64(received["x-trace-bin"]) == trace
    assert result["headers"]["x-resp"] == "h1"
    assert b64(result["headers"]["x-resp-bin"]) == header_bytes
    assert result["trailers"]["x-trail"] == "t1"
    assert b64(result["trailers"]["x-trail-bin"]) == trailer_bytes


@pytest.mark.parametrize("client", CLIENTS)
def test_deadline_exceeded(call: Call, observe: Callable[[str], Any], client: str) -> None:
    name = key()
    result = call(client, method="Unary", request={"sleepMs": 10_000, "key": name}, timeoutMs=200)

    assert result["code"] == 4, result
    # About 0.2 s; the bound leaves room for a loaded machine and is far below the service's 10 s.
    assert result["elapsedMs"] < 3000, result
    assert result["messages"] == []
    if client == "grpc-web":
        # Its own timer only fires at max(1 s, 1.1 x deadline): this status is the gateway's.
        # (protobuf-ts has no timer of its own; connect-es aborts by itself at the deadline.)
        assert result["errorMetadata"]["grpc-status"] == "4"
    # The service did not go on sleeping: its handler was cancelled at the deadline.
    wait_until(lambda: observe(name).cancelled == 1, timeout=5, what="the probe to see the call cancelled")


@pytest.mark.parametrize("client", CLIENTS)
def test_the_service_sees_the_client_deadline(call: Call, client: str) -> None:
    result = call(client, method="Unary", request={}, timeoutMs=5000)

    assert result["code"] == 0, result
    # Not the gateway's 60 s ceiling: the client's 5 s (gRPC rounds grpc-timeout up a little).
    assert 3.0 < result["messages"][0]["deadlineRemaining"] < 5.5


@pytest.mark.parametrize("client", CLIENTS)
def test_unknown_method_is_unimplemented(call: Call, client: str) -> None:
    result = call(client, method="Nope", kind="unary", request={})

    assert result["code"] == 12, result
    assert result["messages"] == []


@pytest.mark.parametrize("client", CLIENTS)
def test_backend_down_is_unavailable(call: Call, client: str) -> None:
    result = call(client, service="gone.v1.Nothing", method="Unary", kind="unary", request={})

    assert result["code"] == 14, result
    assert "gone.v1.Nothing" in result["message"]
    assert result["messages"] == []
