"""Server reflection on the gateway's native gRPC port (gateway/reflection/), read by tools written elsewhere:
`buf curl` (reflection v1), grpcurl (v1alpha) and grpcio-reflection's ProtoReflectionDescriptorDatabase list
and describe every routed plugin's services through it, and call them with no schema of their own.

Against `upf run` (auth on: reflection needs a token, as every call on the port does), and against a
registry whose plugin is internal (neither listed nor described), then exposed, then gone.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from grpc_reflection.v1alpha import reflection_pb2 as rpb
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from upf.registry.v1 import registry_pb2 as pb

from tests.gateway.test_connect_upf_run import BUF
from tests.gateway.test_internal_services import manifest, native_say
from tests.gateway.test_registry_routing import Plugin, gateway_config, register
from tests.support.processes import Gateway, free_port, run_gateway, wait_until
from tests.support.registry_process import run_registry

GRPCURL = str(Path(sys.executable).parent / "grpcurl")
V1 = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"
V1ALPHA = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
REFLECTION = ["grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection"]
NOT_FOUND = grpc.StatusCode.NOT_FOUND.value[0]


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, str]]:
    work = tmp_path_factory.mktemp("reflection-upf-run")
    with run_gateway({"registryUrl": f"127.0.0.1:{free_port()}"}, work, command="run") as gateway:
        login = httpx.post(
            f"{gateway.url}/api/auth/login", json={"username": "demo", "password": "demo-password"}, timeout=10
        )
        token = login.json()["accessToken"]

        def routed() -> bool:
            # Reflection lists what is routed now: wait for both business plugins.
            services = _reflect(gateway.grpc_target, [rpb.ServerReflectionRequest(list_services="")], token)
            names = {service.name for service in services[0].list_services_response.service}
            return {"upf.demo.v1.Echo", "upf.orders.v1.Orders"} <= names

        wait_until(routed, timeout=30, what="the demo and orders plugins to be routed")
        yield gateway, token


def _reflect(
    target: str, requests: list[rpb.ServerReflectionRequest], token: str | None, path: str = V1
) -> list[rpb.ServerReflectionResponse]:
    """One ServerReflectionInfo stream on `path`: the answers to `requests`, in order."""
    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    with grpc.insecure_channel(target) as channel:
        call = channel.stream_stream(
            path,
            request_serializer=rpb.ServerReflectionRequest.SerializeToString,
            response_deserializer=rpb.ServerReflectionResponse.FromString,
        )
        return list(call(iter(requests), metadata=metadata, timeout=10))


def _run(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)


def _buf(gateway: Gateway, token: str | None, *args: str) -> subprocess.CompletedProcess[str]:
    # --reflect-header '*': the token goes with the reflection calls too.
    auth = ["-H", f"authorization: Bearer {token}", "--reflect-header", "*"] if token else []
    return _run([BUF, "curl", "--protocol", "grpc", "--http2-prior-knowledge", *auth, *args])


def _grpcurl(gateway: Gateway, token: str | None, *args: str, data: str = "") -> subprocess.CompletedProcess[str]:
    flags = ["-H", f"authorization: Bearer {token}"] if token else []
    flags += ["-d", data] if data else []
    return _run([GRPCURL, "-plaintext", *flags, gateway.grpc_target, *args])


def _json_messages(text: str) -> list[Any]:
    """Tools print each message as indented JSON, one after another."""
    decoder, text, messages = json.JSONDecoder(), text.strip(), []
    while text:
        message, end = decoder.raw_decode(text)
        messages.append(message)
        text = text[end:].strip()
    return messages


# --- `upf run`: the tools --------------------------------------------------------------------------


def test_buf_curl_lists_describes_and_calls_through_reflection(platform: tuple[Gateway, str]) -> None:
    gateway, token = platform
    base = f"http://{gateway.grpc_target}"
    listed = _buf(gateway, token, "--list-services", base)
    assert listed.returncode == 0, listed.stderr
    services = listed.stdout.split()
    assert {"upf.demo.v1.Echo", "upf.orders.v1.Orders", *REFLECTION} <= set(services)
    assert not [name for name in services if name.startswith(("upf.storage", "upf.cache"))]  # internal

    methods = _buf(gateway, token, "--list-methods", base)
    assert methods.returncode == 0, methods.stderr
    assert {"upf.demo.v1.Echo/Say", "upf.demo.v1.Echo/Count", "upf.orders.v1.Orders/GetOrder"} <= set(
        methods.stdout.split()
    )

    # No --schema: buf learns the request and response types from the gateway's reflection alone.
    said = _buf(gateway, token, "--data", '{"text": "hi"}', f"{base}/upf.demo.v1.Echo/Say")
    assert said.returncode == 0, said.stderr
    assert _json_messages(said.stdout) == [{"text": "echo: hi"}]
    counted = _buf(gateway, token, "--data", '{"count": 2}', f"{base}/upf.demo.v1.Echo/Count")
    assert _json_messages(counted.stdout) == [{"n": 1}, {"n": 2}]


def test_buf_curl_without_a_token_is_refused_clearly(platform: tuple[Gateway, str]) -> None:
    gateway, _ = platform
    refused = _buf(gateway, None, "-v", "--list-services", f"http://{gateway.grpc_target}")
    assert refused.returncode != 0
    # buf words UNAUTHENTICATED as a missing login of its own; -v shows what the gateway said.
    assert "Grpc-Status: 16" in refused.stderr
    assert "Grpc-Message: this call needs a bearer token" in refused.stderr
    assert 'Www-Authenticate: Bearer realm="upf"' in refused.stderr


def test_grpcurl_lists_describes_and_calls_through_reflection_v1alpha(platform: tuple[Gateway, str]) -> None:
    gateway, token = platform
    listed = _grpcurl(gateway, token, "list")
    assert listed.returncode == 0, listed.stderr
    assert {"upf.demo.v1.Echo", "upf.orders.v1.Orders", *REFLECTION} <= set(listed.stdout.split())

    described = _grpcurl(gateway, token, "describe", "upf.demo.v1.Echo")
    assert described.returncode == 0, described.stderr
    assert "rpc Say ( .upf.demo.v1.SayRequest ) returns ( .upf.demo.v1.SayResponse );" in described.stdout
    message = _grpcurl(gateway, token, "describe", "upf.demo.v1.SayRequest")
    assert "string text = 1;" in message.stdout

    said = _grpcurl(gateway, token, "upf.demo.v1.Echo/Say", data='{"text": "hi"}')
    assert said.returncode == 0, said.stderr
    assert _json_messages(said.stdout) == [{"text": "echo: hi"}]

    internal = _grpcurl(gateway, token, "describe", "upf.storage.v1.Storage")
    assert internal.returncode != 0
    assert "Symbol not found: upf.storage.v1.Storage" in internal.stderr

    refused = _grpcurl(gateway, None, "list")
    assert refused.returncode != 0
    assert "code = Unauthenticated desc = this call needs a bearer token" in refused.stderr


class _Token(grpc.StreamStreamClientInterceptor):  # type: ignore[type-arg]
    """The token on the reflection client's calls, which take no metadata of their own."""

    def __init__(self, token: str) -> None:
        self.token = token

    def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        metadata = [*(details.metadata or []), ("authorization", f"Bearer {self.token}")]
        return continuation(details._replace(metadata=metadata), requests)


def test_grpcio_reflection_client_builds_the_messages_and_calls(platform: tuple[Gateway, str]) -> None:
    gateway, token = platform
    with grpc.intercept_channel(grpc.insecure_channel(gateway.grpc_target), _Token(token)) as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        assert {"upf.demo.v1.Echo", "upf.orders.v1.Orders", *REFLECTION} <= set(database.get_services())
        pool = descriptor_pool.DescriptorPool(database)
        say = pool.FindMethodByName("upf.demo.v1.Echo.Say")
        request = message_factory.GetMessageClass(say.input_type)(text="hi")
        response_class = message_factory.GetMessageClass(say.output_type)
        call = channel.unary_unary(
            "/upf.demo.v1.Echo/Say",
            request_serializer=lambda message: message.SerializeToString(),
            response_deserializer=response_class.FromString,
        )
        assert call(request, metadata=(("authorization", f"Bearer {token}"),), timeout=10).text == "echo: hi"
        orders = pool.FindServiceByName("upf.orders.v1.Orders")
        assert "GetOrder" in orders.methods_by_name
        with pytest.raises(KeyError):
            pool.FindServiceByName("upf.storage.v1.Storage")  # internal: not described


# --- the protocol: both versions, errors in ErrorResponse, the stream goes on -----------------------


@pytest.mark.parametrize("path", [V1, V1ALPHA])
def test_errors_are_error_responses_and_the_stream_goes_on(platform: tuple[Gateway, str], path: str) -> None:
    gateway, token = platform
    unknown, listing = (
        rpb.ServerReflectionRequest(file_containing_symbol="no.such.Thing"),
        rpb.ServerReflectionRequest(list_services=""),
    )
    answers = _reflect(
        gateway.grpc_target,
        [
            unknown,
            rpb.ServerReflectionRequest(file_by_filename="no/such.proto"),
            rpb.ServerReflectionRequest(all_extension_numbers_of_type="no.such.Message"),
            rpb.ServerReflectionRequest(
                file_containing_extension=rpb.ExtensionRequest(
                    containing_type="upf.demo.v1.SayRequest", extension_number=99
                )
            ),
            rpb.ServerReflectionRequest(file_containing_symbol="upf.cache.v1.Cache"),  # internal
            listing,
        ],
        token,
        path,
    )
    errors = [answer.error_response for answer in answers[:5]]
    assert [error.error_code for error in errors] == [NOT_FOUND] * 5
    assert errors[0].error_message == "symbol not found: no.such.Thing"
    assert answers[0].original_request == unknown
    assert {service.name for service in answers[5].list_services_response.service} >= {"upf.demo.v1.Echo"}


def test_files_come_with_their_imports_once_per_stream(platform: tuple[Gateway, str]) -> None:
    gateway, token = platform
    answers = _reflect(
        gateway.grpc_target,
        [
            rpb.ServerReflectionRequest(file_containing_symbol="upf.orders.v1.Orders.GetOrder"),
            rpb.ServerReflectionRequest(file_containing_symbol="upf.orders.v1.Orders"),
            rpb.ServerReflectionRequest(all_extension_numbers_of_type="upf.orders.v1.Order"),
        ],
        token,
    )
    first, again = (
        [
            descriptor_pb2.FileDescriptorProto.FromString(raw).name
            for raw in answer.file_descriptor_response.file_descriptor_proto
        ]
        for answer in answers[:2]
    )
    orders_file = first[0]
    assert orders_file.endswith("orders.proto")
    assert again == [orders_file]  # the imports went out with the first answer
    assert answers[2].all_extension_numbers_response.base_type_name == "upf.orders.v1.Order"
    assert list(answers[2].all_extension_numbers_response.extension_number) == []


def test_a_request_that_does_not_parse_ends_the_call_with_invalid_argument(platform: tuple[Gateway, str]) -> None:
    gateway, token = platform
    with grpc.insecure_channel(gateway.grpc_target) as channel:
        call = channel.stream_stream(V1, request_serializer=lambda raw: raw, response_deserializer=lambda raw: raw)
        with pytest.raises(grpc.RpcError) as raised:
            list(call(iter([b"\xff\xff\xff"]), metadata=(("authorization", f"Bearer {token}"),), timeout=10))
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "ServerReflectionRequest" in (raised.value.details() or "")


# --- a registry's plugin: internal, exposed, gone -------------------------------------------------------


def _listed(target: str) -> set[str]:
    answer = _reflect(target, [rpb.ServerReflectionRequest(list_services="")], None)[0]
    return {service.name for service in answer.list_services_response.service}


def _describes_echo(target: str) -> bool:
    answer = _reflect(target, [rpb.ServerReflectionRequest(file_containing_symbol="upf.demo.v1.Echo.Say")], None)[0]
    return bool(answer.HasField("file_descriptor_response"))


def test_reflection_follows_the_registry_and_never_shows_internal_services(work_dir: Path) -> None:
    plugin = Plugin(work_dir, "--reflect")
    with ExitStack() as stack:
        # The test registers on the plugin's behalf and renews nothing: a lease that outlives a slow start.
        registry = stack.enter_context(run_registry({"leaseTtl": 300}, work_dir))
        plugin.start()
        stack.callback(plugin.stop)
        lease = register(registry, plugin, "refl-store-1", manifest("refl-store", "infrastructure"))
        gateway = stack.enter_context(run_gateway(gateway_config(registry), work_dir))  # auth off: no token
        target = gateway.grpc_target

        # Routed for the platform's own calls, but internal: not listed, not described.
        wait_until(lambda: native_say(target)[0] == grpc.StatusCode.PERMISSION_DENIED, what="the gateway to know it")
        assert _listed(target) == set(REFLECTION)
        assert not _describes_echo(target)

        # Re-registered with `exposed: true`: listed and described, from the plugin's own reflection.
        registry.stub.Unregister(pb.UnregisterRequest(lease_id=lease))
        lease = register(registry, plugin, "refl-store-2", manifest("refl-store", "infrastructure", exposed=True))
        wait_until(lambda: "upf.demo.v1.Echo" in _listed(target), what="the exposed service listed")
        assert _describes_echo(target)

        # Gone from the registry: gone from the list and no longer described.
        registry.stub.Unregister(pb.UnregisterRequest(lease_id=lease))
        wait_until(lambda: _listed(target) == set(REFLECTION), what="the service to leave the list")
        assert not _describes_echo(target)
