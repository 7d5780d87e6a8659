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

The cases (grpc-web's and a few of our checklist's), their calls and what a client's user must see
of each live in tests/support/interop_cases.py, which bench/conformance.py shares to run them
against Traefik too. Each client makes all the calls in one Node process (one per module), and each
test reads what that client's user saw of its call.
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
from tests.support.interop_cases import CALLS, CASE_BY_NAME, CASES, CLIENTS, Seen, gateway_config, problem
from tests.support.node import node_batch, require_node
from tests.support.processes import Gateway, interop_backend, run_gateway

NATIVE = "grpcio-native"
ENTRIES = [*CLIENTS, NATIVE]
# grpcio's own default (4 MiB) is below large_response_5mib.
NATIVE_OPTIONS = [("grpc.max_receive_message_length", -1)]


@pytest.fixture(scope="module")
def interop_gen(work_dir: Path) -> Path:
    """The interop protos' Python code and descriptor set (interop.binpb), generated for this module."""
    return interop_server.generate(work_dir / "interop-gen")


@pytest.fixture(scope="module")
def interop_gateway(interop_gen: Path, work_dir: Path) -> Iterator[Gateway]:
    """A gateway in front of the interop server, for both of its services."""
    with (
        interop_backend(interop_gen, work_dir) as (address, _process),
        run_gateway(gateway_config(address), work_dir) as running,
    ):
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
    with grpc.insecure_channel(target, options=NATIVE_OPTIONS) as channel:
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
    headers_ms = None
    call: Any
    # A failed call raises; its status is read below, as for a successful one.
    if method.server_streaming:
        call = channel.unary_stream(path, serialize, deserialize)(request, metadata=metadata, timeout=timeout)
        call.initial_metadata()  # waits for the response headers (or the end)
        headers_ms = (time.monotonic() - started) * 1000
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
        "headersMs": headers_ms,
    }


def metadata_dict(metadata: Any) -> dict[str, str]:
    """As the JavaScript clients show metadata: -bin values in base64."""
    return {
        key: base64.b64encode(value).decode() if isinstance(value, bytes) else value for key, value in metadata or ()
    }


@pytest.mark.parametrize("entry", ENTRIES)
@pytest.mark.parametrize("case", [case.name for case in CASES])
def test_interop_case(seen: Callable[[str, str], Seen], entry: str, case: str) -> None:
    """What the case expects (tests/support/interop_cases.py), as the user of this client sees it."""
    result = seen(entry, case)
    assert problem(CASE_BY_NAME[case], entry, result) is None, result
