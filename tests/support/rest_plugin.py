"""A plugin whose proto carries google.api.http annotations, built at run time, for REST tests.

python -m tests.support.rest_plugin --port 0 [--v2]     prints "PORT <n>" once it listens

rest.v1.Things, with server reflection (so the gateway learns its routes) and grpc.health.v1:

    Get     GET    /v1/things/{id}          id is an int64: a path that is not a number is a bad request
    Delete  DELETE /v1/things/{id}          id 404: NOT_FOUND
    Rename  PUT    /v1/things/{id}          body: "name" (the JSON body is that one field)
    Size    GET    /v1/things/{id}/size     response_body: "size" (the answer is a number)
    Count   GET    /v1/things/{id}/count    a server stream of Things 1..id; id 404: NOT_FOUND before
                                            any; id 13: DATA_LOSS after two

--v2 is the same plugin's next version: Get gains `additional_bindings {get: "/v2/things/{id}"}`.
Get's `caller` is the x-upf-user-id metadata the plugin got (the identity the gateway verified).
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
from google.api import annotations_pb2, http_pb2  # type: ignore[import-untyped]
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

SERVICE = "rest.v1.Things"


def things_pool(*, v2: bool) -> descriptor_pool.DescriptorPool:
    file = descriptor_pb2.FileDescriptorProto(name="rest/v1/things.proto", package="rest.v1", syntax="proto3")
    thing = file.message_type.add(name="Thing")
    thing.field.add(name="id", number=1, type=3, label=1, json_name="id")
    thing.field.add(name="name", number=2, type=9, label=1, json_name="name")
    thing.field.add(name="size", number=4, type=5, label=1, json_name="size")
    thing.field.add(name="caller", number=5, type=9, label=1, json_name="caller")
    service = file.service.add(name="Things")
    get = http_pb2.HttpRule(get="/v1/things/{id}")
    if v2:
        get.additional_bindings.add(get="/v2/things/{id}")
    rules = {
        "Get": get,
        "Delete": http_pb2.HttpRule(delete="/v1/things/{id}"),
        "Rename": http_pb2.HttpRule(put="/v1/things/{id}", body="name"),
        "Size": http_pb2.HttpRule(get="/v1/things/{id}/size", response_body="size"),
        "Count": http_pb2.HttpRule(get="/v1/things/{id}/count"),
    }
    for name, rule in rules.items():
        method = service.method.add(name=name, input_type=".rest.v1.Thing", output_type=".rest.v1.Thing")
        method.server_streaming = name == "Count"
        options = descriptor_pb2.MethodOptions()
        options.Extensions[annotations_pb2.http].CopyFrom(rule)
        method.options.ParseFromString(options.SerializeToString())
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return pool


def _handlers(pool: descriptor_pool.DescriptorPool) -> grpc.GenericRpcHandler[Any, Any]:
    thing: Any = message_factory.GetMessageClass(pool.FindMessageTypeByName("rest.v1.Thing"))

    async def get(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        caller = next((str(v) for k, v in context.invocation_metadata() or () if k == "x-upf-user-id"), "")
        return thing(id=request.id, name=f"thing {request.id}", caller=caller)

    async def delete(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        if request.id == 404:
            await context.abort(grpc.StatusCode.NOT_FOUND, "no thing 404")
        return thing(id=request.id, name="deleted")

    async def rename(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        return thing(id=request.id, name=request.name)

    async def size(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        return thing(id=request.id, size=request.id * 10)

    async def count(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
        if request.id == 404:
            await context.abort(grpc.StatusCode.NOT_FOUND, "no thing 404")
        for n in range(1, request.id + 1):
            if request.id == 13 and n == 3:
                await context.abort(grpc.StatusCode.DATA_LOSS, "broken after 2")
            yield thing(id=n, name=f"thing {n}")

    def unary(behaviour: Any) -> grpc.RpcMethodHandler[Any, Any]:
        return grpc.unary_unary_rpc_method_handler(
            behaviour, request_deserializer=thing.FromString, response_serializer=thing.SerializeToString
        )

    methods = {"Get": get, "Delete": delete, "Rename": rename, "Size": size}
    handlers = {name: unary(b) for name, b in methods.items()}
    handlers["Count"] = grpc.unary_stream_rpc_method_handler(
        count, request_deserializer=thing.FromString, response_serializer=thing.SerializeToString
    )
    return grpc.method_handlers_generic_handler(SERVICE, handlers)


async def main(port: int, v2: bool) -> None:
    pool = things_pool(v2=v2)
    server = grpc.aio.server()
    server.add_generic_rpc_handlers([_handlers(pool)])
    reflection.enable_server_reflection([SERVICE, reflection.SERVICE_NAME], server, pool=pool)
    health = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await health.set("", health_pb2.HealthCheckResponse.SERVING)
    print(f"PORT {bound}", flush=True)
    await server.wait_for_termination()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--v2", action="store_true")
    arguments = parser.parse_args()
    asyncio.run(main(arguments.port, arguments.v2))
