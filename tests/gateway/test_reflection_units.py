"""ServerReflection's answers, in process, over real descriptor pools: a file that defines a visible and a
hidden service goes out without the hidden one, which is NOT_FOUND like a symbol nobody defines; a
plugin whose descriptors cannot be had is named in the NOT_FOUND message."""

from __future__ import annotations

import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, empty_pb2
from google.protobuf.descriptor import ServiceDescriptor
from grpc_reflection.v1alpha import reflection_pb2 as rpb

from gateway.descriptors import DescriptorsUnavailable
from gateway.errors import BadRequest
from gateway.reflection import ServerReflection

NOT_FOUND = 5


def _pool() -> descriptor_pool.DescriptorPool:
    shop = descriptor_pb2.FileDescriptorProto(name="shop/v1/shop.proto", package="shop.v1", syntax="proto3")
    shop.dependency.append("google/protobuf/empty.proto")
    shop.message_type.add(name="Item").field.add(
        name="id", number=1, type=descriptor_pb2.FieldDescriptorProto.TYPE_STRING, label=1
    )
    for name in ("Shop", "Stock"):  # Stock: internal to the platform
        service = shop.service.add(name=name)
        service.method.add(name="Get", input_type=".shop.v1.Item", output_type=".google.protobuf.Empty")
    shop.source_code_info.location.add(path=[6, 1], span=[1, 1, 1])
    pool = descriptor_pool.DescriptorPool()
    empty = descriptor_pb2.FileDescriptorProto()
    empty_pb2.DESCRIPTOR.CopyToProto(empty)
    pool.Add(empty)
    pool.Add(shop)
    return pool


async def _describe(name: str) -> ServiceDescriptor:
    if name == "broken.v1.Broken":
        raise DescriptorsUnavailable("broken.v1.Broken: the plugin does not serve grpc.reflection (v1 or v1alpha)")
    return _pool().FindServiceByName(name)


def _stream() -> ServerReflection:
    return ServerReflection(lambda: ["shop.v1.Shop", "broken.v1.Broken"], _describe)


async def _ask(answer: object, **request: object) -> rpb.ServerReflectionResponse:
    raw = await answer(rpb.ServerReflectionRequest(**request).SerializeToString())  # type: ignore[operator]
    return rpb.ServerReflectionResponse.FromString(raw)


def _files(response: rpb.ServerReflectionResponse) -> list[descriptor_pb2.FileDescriptorProto]:
    return [
        descriptor_pb2.FileDescriptorProto.FromString(raw)
        for raw in response.file_descriptor_response.file_descriptor_proto
    ]


async def test_a_shared_file_goes_out_without_the_hidden_service() -> None:
    answer = _stream().open()
    response = await _ask(answer, file_containing_symbol="shop.v1.Shop.Get")
    shop, empty = _files(response)
    assert (shop.name, empty.name) == ("shop/v1/shop.proto", "google/protobuf/empty.proto")
    assert [service.name for service in shop.service] == ["Shop"]
    assert not shop.HasField("source_code_info")  # its paths counted the services by position
    # The import went out once on this stream; the file itself whenever asked.
    again = await _ask(answer, file_by_filename="shop/v1/shop.proto")
    assert [file.name for file in _files(again)] == ["shop/v1/shop.proto"]
    message = await _ask(answer, file_containing_symbol="shop.v1.Item")
    assert [file.name for file in _files(message)] == ["shop/v1/shop.proto"]


@pytest.mark.parametrize("symbol", ["shop.v1.Stock", "shop.v1.Stock.Get", "shop.v1.Nothing"])
async def test_a_hidden_service_is_not_found_like_an_unknown_symbol(symbol: str) -> None:
    response = await _ask(_stream().open(), file_containing_symbol=symbol)
    assert response.error_response.error_code == NOT_FOUND
    assert response.error_response.error_message == f"symbol not found: {symbol}"


async def test_listing_names_the_visible_services_and_reflection() -> None:
    response = await _ask(_stream().open(), list_services="")
    assert [service.name for service in response.list_services_response.service] == [
        "broken.v1.Broken",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
        "shop.v1.Shop",
    ]


async def test_a_service_without_descriptors_says_why() -> None:
    response = await _ask(_stream().open(), file_containing_symbol="broken.v1.Broken")
    assert response.error_response.error_code == NOT_FOUND
    assert "does not serve grpc.reflection" in response.error_response.error_message


@pytest.mark.parametrize("version", ["v1", "v1alpha"])
async def test_the_reflection_services_describe_themselves(version: str) -> None:
    response = await _ask(_stream().open(), file_containing_symbol=f"grpc.reflection.{version}.ServerReflection")
    (file,) = _files(response)
    assert file.name == f"grpc/reflection/{version}/reflection.proto"
    assert file.service[0].method[0].input_type == f".grpc.reflection.{version}.ServerReflectionRequest"


async def test_bytes_that_are_no_request_are_a_bad_request() -> None:
    with pytest.raises(BadRequest):
        await _stream().open()(b"\xff\xff")
