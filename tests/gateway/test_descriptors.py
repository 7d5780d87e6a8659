"""The gateway learns a plugin's schema from its server reflection: once per plugin version, one fetch
for concurrent callers, a clear error (remembered briefly) for a plugin without reflection."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, json_format
from grpc_reflection.v1alpha import reflection
from upf.demo.v1 import demo_pb2, demo_pb2_grpc

from gateway.descriptors import DescriptorCatalog, DescriptorsUnavailable
from plugins.demo.service import EchoService


class _CountReflection(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    def __init__(self) -> None:
        self.calls = 0

    async def intercept_service(self, continuation: Callable[..., Any], details: grpc.HandlerCallDetails) -> Any:
        if "ServerReflection" in details.method:
            self.calls += 1
        return await continuation(details)


async def _server(
    *, reflect: bool = True, pool: descriptor_pool.DescriptorPool | None = None, services: tuple[str, ...] = ()
) -> tuple[grpc.aio.Server, str, _CountReflection]:
    counter = _CountReflection()
    server = grpc.aio.server(interceptors=[counter])
    demo_pb2_grpc.add_EchoServicer_to_server(EchoService(), server)
    if reflect:
        names = services or (demo_pb2.DESCRIPTOR.services_by_name["Echo"].full_name,)
        reflection.enable_server_reflection([*names, reflection.SERVICE_NAME], server, pool=pool)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}", counter


@pytest.fixture
async def echo() -> AsyncIterator[tuple[str, _CountReflection]]:
    server, address, counter = await _server()
    yield address, counter
    await server.stop(None)


def _thing_pool(*fields: str) -> descriptor_pool.DescriptorPool:
    """A pool with `test.v1.Things/Get(GetThing) returns (GetThing)`, GetThing having these string fields."""
    file = descriptor_pb2.FileDescriptorProto(name="test/v1/things.proto", package="test.v1", syntax="proto3")
    message = file.message_type.add(name="GetThing")
    for number, name in enumerate(fields, start=1):
        message.field.add(name=name, number=number, type=9, label=1, json_name=name)
    service = file.service.add(name="Things")
    get = service.method.add(name="Get", input_type=".test.v1.GetThing", output_type=".test.v1.GetThing")
    get.options.idempotency_level = descriptor_pb2.MethodOptions.NO_SIDE_EFFECTS
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return pool


async def test_a_method_is_described_with_message_classes_that_read_json(echo: tuple[str, _CountReflection]) -> None:
    address, _ = echo
    catalog = DescriptorCatalog(lambda service: (address, "1.0.0"))
    try:
        say = await catalog.method("upf.demo.v1.Echo", "Say")
        count = await catalog.method("upf.demo.v1.Echo", "Count")
        assert say is not None
        assert count is not None
        request = json_format.Parse('{"text": "hello"}', say.input())
        # The bytes are what the plugin's own class reads: the gateway can forward them.
        assert demo_pb2.SayRequest.FromString(request.SerializeToString()).text == "hello"
        assert (say.client_streaming, say.server_streaming, say.side_effect_free) == (False, False, False)
        assert (count.client_streaming, count.server_streaming) == (False, True)
        assert await catalog.method("upf.demo.v1.Echo", "Shout") is None
    finally:
        await catalog.close()


async def test_concurrent_callers_share_one_fetch_and_later_calls_none(echo: tuple[str, _CountReflection]) -> None:
    address, counter = echo
    catalog = DescriptorCatalog(lambda service: (address, "1.0.0"))
    try:
        found = await asyncio.gather(*(catalog.method("upf.demo.v1.Echo", "Say") for _ in range(20)))
        assert all(schema is not None for schema in found)
        await catalog.method("upf.demo.v1.Echo", "Count")
        assert counter.calls == 2  # one fetch: v1 (this server has none), then v1alpha
    finally:
        await catalog.close()


async def test_a_new_plugin_version_is_described_by_what_it_serves_now() -> None:
    old, old_address, _ = await _server(pool=_thing_pool("id"), services=("test.v1.Things",))
    new, new_address, _ = await _server(pool=_thing_pool("id", "colour"), services=("test.v1.Things",))
    located = {"test.v1.Things": (old_address, "1.0.0")}
    catalog = DescriptorCatalog(located.get)
    try:
        before = await catalog.method("test.v1.Things", "Get")
        assert before is not None
        assert before.side_effect_free
        assert [f.name for f in before.input.DESCRIPTOR.fields] == ["id"]

        located["test.v1.Things"] = (new_address, "1.1.0")  # re-registered with a changed proto
        after = await catalog.method("test.v1.Things", "Get")
        assert after is not None
        assert [f.name for f in after.input.DESCRIPTOR.fields] == ["id", "colour"]
    finally:
        await catalog.close()
        await old.stop(None)
        await new.stop(None)


async def test_a_plugin_without_reflection_is_a_clear_error_asked_again_only_after_a_while() -> None:
    server, address, counter = await _server(reflect=False)
    now = [100.0]
    catalog = DescriptorCatalog(lambda service: (address, "1.0.0"), retry_after=5.0, clock=lambda: now[0])
    try:
        with pytest.raises(DescriptorsUnavailable, match=r"does not serve grpc.reflection \(v1 or v1alpha\)"):
            await catalog.method("upf.demo.v1.Echo", "Say")
        asked = counter.calls
        assert asked == 2  # v1, then v1alpha
        with pytest.raises(DescriptorsUnavailable):
            await catalog.method("upf.demo.v1.Echo", "Say")
        assert counter.calls == asked  # remembered, not asked again
        now[0] += 5.0
        with pytest.raises(DescriptorsUnavailable):
            await catalog.method("upf.demo.v1.Echo", "Say")
        assert counter.calls == asked + 2
    finally:
        await catalog.close()
        await server.stop(None)


async def test_no_replica_and_a_service_the_plugin_does_not_define_are_errors(
    echo: tuple[str, _CountReflection],
) -> None:
    address, _ = echo
    catalog = DescriptorCatalog(lambda service: None if service == "upf.gone.v1.Gone" else (address, "1"))
    try:
        with pytest.raises(DescriptorsUnavailable, match=r"no replica of upf\.gone\.v1\.Gone"):
            await catalog.method("upf.gone.v1.Gone", "Get")
        with pytest.raises(DescriptorsUnavailable, match=r"upf\.other\.v1\.Other"):
            await catalog.method("upf.other.v1.Other", "Get")
    finally:
        await catalog.close()


class _FailFirstReflection(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """The first reflection call ends INTERNAL, as a channel that broke would; later ones are served."""

    def __init__(self) -> None:
        self.failed = 0

    async def intercept_service(self, continuation: Callable[..., Any], details: grpc.HandlerCallDetails) -> Any:
        if "ServerReflection" not in details.method or self.failed:
            return await continuation(details)
        self.failed += 1

        async def fail(requests: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            await context.abort(grpc.StatusCode.INTERNAL, "stream broke")
            yield  # a generator, as a bidi handler is

        return grpc.stream_stream_rpc_method_handler(fail)


async def test_a_reflection_call_that_breaks_is_tried_again_at_once_not_remembered() -> None:
    failing = _FailFirstReflection()
    server = grpc.aio.server(interceptors=[failing])
    demo_pb2_grpc.add_EchoServicer_to_server(EchoService(), server)
    reflection.enable_server_reflection([demo_pb2.DESCRIPTOR.services_by_name["Echo"].full_name], server)
    address = f"127.0.0.1:{server.add_insecure_port('127.0.0.1:0')}"
    await server.start()
    catalog = DescriptorCatalog(lambda service: (address, "1.0.0"))
    try:
        schema = await catalog.method("upf.demo.v1.Echo", "Say")
        assert schema is not None
        assert schema.input.DESCRIPTOR.full_name == "upf.demo.v1.SayRequest"
        assert failing.failed == 1
    finally:
        await catalog.close()
        await server.stop(None)
