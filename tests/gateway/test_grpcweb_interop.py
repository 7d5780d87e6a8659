"""grpc/grpc-web's interop cases (doc/interop-test-descriptions.md) against the gateway.

Upstream they run mocha + grpc-web + xhr2 against Envoy and a Node interop server; here the proxy is
our gateway, the service is tests/support/interop_server.py (grpc.testing.TestService on grpc.aio,
built from the standard interop protos), and the clients are the real JavaScript ones of
test_js_clients.py, driven by tests/js/interop.mjs:

- connect: @connectrpc/connect-node createGrpcWebTransport (binary, HTTP/1.1);
- grpc-web: the official grpc-web runtime, format "text", over xhr2;
- protobuf-ts: @protobuf-ts/grpcweb-transport GrpcWebFetchTransport, format "text".

Every case also runs with a grpcio client over the gateway's native gRPC ingress (grpcPort), with the
same assertions: both entry points give a client's user the same answers.

Each client makes all the calls in one Node process (one per module), and each test reads what that
client's user saw of its call.
"""

from __future__ import annotations

import base64
import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import json_format, message_factory

from tests.support import interop_server
from tests.support.node import node_batch, require_node
from tests.support.processes import Gateway, interop_backend, run_gateway

CLIENTS = ["connect", "grpc-web", "protobuf-ts"]
NATIVE = "grpcio-native"
ENTRIES = [*CLIENTS, NATIVE]

TEST_SERVICE = "grpc.testing.TestService"
UNIMPLEMENTED_SERVICE = "grpc.testing.UnimplementedService"

ECHO_INITIAL_KEY, ECHO_INITIAL_VALUE = "x-grpc-test-echo-initial", "test_initial_metadata_value"
ECHO_TRAILING_KEY, ECHO_TRAILING_VALUE = "x-grpc-test-echo-trailing-bin", b"\xab\xab\xab"
TEST_STATUS_MESSAGE = "test status message"
SPECIAL_STATUS_MESSAGE = "\t\ntest with whitespace\r\nand Unicode BMP ☺ and non-BMP 😈\t\n"
# Its grpc-message value on the wire (percent-encoded UTF-8), which @protobuf-ts shows undecoded.
SPECIAL_STATUS_MESSAGE_ON_THE_WIRE = (
    "%09%0Atest with whitespace%0D%0Aand Unicode BMP %E2%98%BA and non-BMP %F0%9F%98%88%09%0A"
)
LARGE_REQUEST, LARGE_RESPONSE = 271828, 314159
STREAM_SIZES = [31415, 9, 2653, 58979]

Seen = dict[str, Any]


def zeros(size: int) -> str:
    return base64.b64encode(bytes(size)).decode()


def large_unary_request() -> dict[str, Any]:
    return {"responseSize": LARGE_RESPONSE, "payload": {"body": zeros(LARGE_REQUEST)}}


def status(message: str) -> dict[str, Any]:
    return {"code": 2, "message": message}


ECHO_METADATA: dict[str, Any] = {
    "headers": {ECHO_INITIAL_KEY: ECHO_INITIAL_VALUE},
    "binaryHeaders": {ECHO_TRAILING_KEY: base64.b64encode(ECHO_TRAILING_VALUE).decode()},
}


def interop_call(name: str, method: str, *, service: str = TEST_SERVICE, **spec: Any) -> dict[str, Any]:
    """One call as interop.mjs takes it (the request in protobuf JSON; see interop.mjs)."""
    return {"name": name, "service": service, "method": method, **spec}


# The calls of every case. The interop descriptions' custom_metadata, status_code_and_message and
# special_status_message make their streaming half with FullDuplexCall, which gRPC-Web cannot make:
# StreamingOutputCall stands in for it.
CALLS: list[dict[str, Any]] = [
    interop_call("empty_unary", "EmptyCall"),
    interop_call("empty_unary_with_deadline", "EmptyCall", timeoutMs=5000),
    interop_call("large_unary", "UnaryCall", request=large_unary_request()),
    interop_call(
        "server_streaming",
        "StreamingOutputCall",
        request={"responseParameters": [{"size": s, "intervalUs": i * 10} for i, s in enumerate(STREAM_SIZES)]},
    ),
    interop_call("custom_metadata_unary", "UnaryCall", request=large_unary_request(), **ECHO_METADATA),
    interop_call(
        "custom_metadata_streaming",
        "StreamingOutputCall",
        request={"responseParameters": [{"size": LARGE_RESPONSE}], "payload": {"body": zeros(LARGE_REQUEST)}},
        **ECHO_METADATA,
    ),
    interop_call("status_code_and_message_unary", "UnaryCall", request={"responseStatus": status(TEST_STATUS_MESSAGE)}),
    interop_call(
        "status_code_and_message_streaming",
        "StreamingOutputCall",
        request={"responseStatus": status(TEST_STATUS_MESSAGE)},
    ),
    interop_call(
        "special_status_message_unary", "UnaryCall", request={"responseStatus": status(SPECIAL_STATUS_MESSAGE)}
    ),
    # After one reply: the status comes in trailers after a message (the gRPC-Web trailer frame), not
    # in a trailers-only response as in the unary case.
    interop_call(
        "special_status_message_streaming",
        "StreamingOutputCall",
        request={"responseParameters": [{"size": 1}], "responseStatus": status(SPECIAL_STATUS_MESSAGE)},
    ),
    interop_call("unimplemented_method", "UnimplementedCall"),
    interop_call("unimplemented_service", "UnimplementedCall", service=UNIMPLEMENTED_SERVICE),
]


@pytest.fixture(scope="module")
def interop_gen(work_dir: Path) -> Path:
    """The interop protos' Python code and descriptor set (interop.binpb), generated for this module."""
    return interop_server.generate(work_dir / "interop-gen")


@pytest.fixture(scope="module")
def interop_gateway(interop_gen: Path, work_dir: Path) -> Iterator[Gateway]:
    """A gateway in front of the interop server, for both of its services (as Envoy is configured
    in grpc-web's interop set-up)."""
    with interop_backend(interop_gen, work_dir) as (address, _process):
        config = {"upstreams": {TEST_SERVICE: [address], UNIMPLEMENTED_SERVICE: [address]}}
        with run_gateway(config, work_dir) as running:
            yield running


@pytest.fixture(scope="module")
def node() -> str:
    return require_node(("@connectrpc/connect-node", "grpc-web", "xhr2", "@protobuf-ts/grpcweb-transport"))


@pytest.fixture(scope="module")
def seen(interop_gateway: Gateway, interop_gen: Path, node: str) -> Callable[[str, str], Seen]:
    """`seen(entry, case)`: what the user of that client saw of that call. Each entry makes all of
    CALLS once, on first use: one Node process per JavaScript client."""
    answers: dict[str, dict[str, Seen]] = {}

    def get(entry: str, case: str) -> Seen:
        if entry not in answers:
            if entry == NATIVE:
                results = native_calls(interop_gateway.grpc_target, interop_gen)
            else:
                schema = str(interop_gen / interop_server.DESCRIPTOR_SET)
                results = node_batch(node, "interop.mjs", [entry, interop_gateway.url, schema], CALLS)
            answers[entry] = {result["name"]: result for result in results}
        return answers[entry][case]

    return get


def native_calls(target: str, gen_dir: Path) -> list[Seen]:
    """CALLS with grpcio over native gRPC, reported in interop.mjs's shape."""
    pool = interop_server.load(gen_dir).test_pb2.DESCRIPTOR.pool
    with grpc.insecure_channel(target) as channel:
        return [native_call(channel, pool, spec) for spec in CALLS]


def native_call(channel: grpc.Channel, pool: Any, spec: dict[str, Any]) -> Seen:
    method = pool.FindMethodByName(f"{spec['service']}.{spec['method']}")
    request_class = message_factory.GetMessageClass(method.input_type)
    response_class = message_factory.GetMessageClass(method.output_type)
    request = json_format.ParseDict(spec.get("request", {}), request_class())
    metadata: tuple[tuple[str, str | bytes], ...] = (
        *spec.get("headers", {}).items(),
        *((key, base64.b64decode(value)) for key, value in spec.get("binaryHeaders", {}).items()),
    )
    timeout = spec["timeoutMs"] / 1000 if "timeoutMs" in spec else None
    path = f"/{spec['service']}/{spec['method']}"
    serialize, deserialize = request_class.SerializeToString, response_class.FromString
    messages: list[Any] = []
    started = time.monotonic()
    call: Any
    # A failed call raises; its status is read below, as for a successful one.
    if method.server_streaming:
        call = channel.unary_stream(path, serialize, deserialize)(request, metadata=metadata, timeout=timeout)
        with contextlib.suppress(grpc.RpcError):
            messages.extend(call)
    else:
        call = channel.unary_unary(path, serialize, deserialize).future(request, metadata=metadata, timeout=timeout)
        with contextlib.suppress(grpc.RpcError):
            messages.append(call.result())
    return {
        "name": spec["name"],
        "client": "grpcio over native gRPC",
        "code": call.code().value[0],
        "message": call.details() or "",
        "headers": metadata_dict(call.initial_metadata()),
        "trailers": metadata_dict(call.trailing_metadata()),
        "messages": [json_format.MessageToDict(m, always_print_fields_with_no_presence=True) for m in messages],
        "elapsedMs": (time.monotonic() - started) * 1000,
    }


def metadata_dict(metadata: Any) -> dict[str, str]:
    """As the JavaScript clients show metadata: -bin values in base64."""
    return {
        key: base64.b64encode(value).decode() if isinstance(value, bytes) else value for key, value in metadata or ()
    }


def b64(value: str) -> bytes:
    return base64.b64decode(value + "=" * (-len(value) % 4))


def bodies(result: Seen) -> list[bytes]:
    return [base64.b64decode(message["payload"]["body"]) for message in result["messages"]]


def ok(result: Seen) -> Seen:
    assert result["code"] == 0, result
    return result


@pytest.mark.parametrize("entry", ENTRIES)
def test_empty_unary(seen: Callable[[str, str], Seen], entry: str) -> None:
    assert ok(seen(entry, "empty_unary"))["messages"] == [{}]


@pytest.mark.parametrize("entry", ENTRIES)
def test_empty_unary_with_deadline(seen: Callable[[str, str], Seen], entry: str) -> None:
    # A deadline of 5 s (grpc-timeout on the wire): the call ends well within it.
    assert ok(seen(entry, "empty_unary_with_deadline"))["messages"] == [{}]


@pytest.mark.parametrize("entry", ENTRIES)
def test_large_unary(seen: Callable[[str, str], Seen], entry: str) -> None:
    result = ok(seen(entry, "large_unary"))
    assert bodies(result) == [bytes(LARGE_RESPONSE)]
    assert result["messages"][0]["payload"]["type"] == "COMPRESSABLE"


@pytest.mark.parametrize("entry", ENTRIES)
def test_server_streaming(seen: Callable[[str, str], Seen], entry: str) -> None:
    result = ok(seen(entry, "server_streaming"))
    assert bodies(result) == [bytes(size) for size in STREAM_SIZES]


@pytest.mark.parametrize("kind", ["unary", "streaming"])
@pytest.mark.parametrize("entry", ENTRIES)
def test_custom_metadata(seen: Callable[[str, str], Seen], entry: str, kind: str) -> None:
    # grpc-web reports the response headers only at the end of the call ('metadata'), which is
    # enough here: the case is about their values.
    result = ok(seen(entry, f"custom_metadata_{kind}"))
    assert bodies(result) == [bytes(LARGE_RESPONSE)]
    assert result["headers"][ECHO_INITIAL_KEY] == ECHO_INITIAL_VALUE, result["headers"]
    assert b64(result["trailers"][ECHO_TRAILING_KEY]) == ECHO_TRAILING_VALUE, result["trailers"]


@pytest.mark.parametrize("kind", ["unary", "streaming"])
@pytest.mark.parametrize("entry", ENTRIES)
def test_status_code_and_message(seen: Callable[[str, str], Seen], entry: str, kind: str) -> None:
    result = seen(entry, f"status_code_and_message_{kind}")
    assert (result["code"], result["message"]) == (2, TEST_STATUS_MESSAGE), result
    assert result["messages"] == []


@pytest.mark.parametrize("kind", ["unary", "streaming"])
@pytest.mark.parametrize("entry", ENTRIES)
def test_special_status_message(seen: Callable[[str, str], Seen], entry: str, kind: str) -> None:
    result = seen(entry, f"special_status_message_{kind}")
    if entry == "protobuf-ts":
        # It shows grpc-message as it arrives, without percent-decoding it (as in test_js_clients.py):
        # a limitation of that client, whichever proxy it talks to.
        assert (result["code"], result["message"]) == (2, SPECIAL_STATUS_MESSAGE_ON_THE_WIRE), result
    else:
        assert (result["code"], result["message"]) == (2, SPECIAL_STATUS_MESSAGE), result
    assert bodies(result) == ([] if kind == "unary" else [bytes(1)])


@pytest.mark.parametrize("entry", ENTRIES)
def test_unimplemented_method(seen: Callable[[str, str], Seen], entry: str) -> None:
    result = seen(entry, "unimplemented_method")
    assert result["code"] == 12, result
    assert result["messages"] == []


@pytest.mark.parametrize("entry", ENTRIES)
def test_unimplemented_service(seen: Callable[[str, str], Seen], entry: str) -> None:
    result = seen(entry, "unimplemented_service")
    assert result["code"] == 12, result
    assert result["messages"] == []
