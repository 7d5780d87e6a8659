"""The OpenAPI document for the Connect routes is valid OpenAPI 3.1, and its schemas accept exactly the
JSON that the Connect codec writes for real messages (maps, enums, repeated, recursive, well-known)."""

from __future__ import annotations

from typing import Any

import jsonschema
from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory, timestamp_pb2
from openapi_spec_validator import validate
from upf.demo.v1 import demo_pb2
from upf.orders.v1 import orders_pb2

from gateway.connect.openapi import openapi_document
from tests.support.rest_plugin import things_pool


def _tree_pool() -> descriptor_pool.DescriptorPool:
    """test.v1.Trees/Get(Node) returns (Node): Node holds itself, a map, an enum, int64, bytes, a Timestamp."""
    pool = descriptor_pool.DescriptorPool()
    stamp = descriptor_pb2.FileDescriptorProto()
    timestamp_pb2.DESCRIPTOR.CopyToProto(stamp)
    pool.Add(stamp)
    file = descriptor_pb2.FileDescriptorProto(
        name="test/v1/trees.proto", package="test.v1", syntax="proto3", dependency=[stamp.name]
    )
    kind = file.enum_type.add(name="Kind")
    kind.value.add(name="KIND_UNSPECIFIED", number=0)
    kind.value.add(name="KIND_LEAF", number=1)
    node = file.message_type.add(name="Node")
    entry = node.nested_type.add(name="LabelsEntry")
    entry.options.map_entry = True
    entry.field.add(name="key", number=1, type=9, label=1, json_name="key")
    entry.field.add(name="value", number=2, type=3, label=1, json_name="value")
    node.field.add(name="children", number=1, type=11, label=3, type_name=".test.v1.Node", json_name="children")
    node.field.add(name="labels", number=2, type=11, label=3, type_name=".test.v1.Node.LabelsEntry", json_name="labels")
    node.field.add(name="kind", number=3, type=14, label=1, type_name=".test.v1.Kind", json_name="kind")
    node.field.add(name="weight_grams", number=4, type=3, label=1, json_name="weightGrams")
    node.field.add(name="blob", number=5, type=12, label=1, json_name="blob")
    node.field.add(name="seen", number=6, type=11, label=1, type_name=".google.protobuf.Timestamp", json_name="seen")
    trees = file.service.add(name="Trees")
    get = trees.method.add(name="Get", input_type=".test.v1.Node", output_type=".test.v1.Node")
    get.options.idempotency_level = descriptor_pb2.MethodOptions.NO_SIDE_EFFECTS
    trees.method.add(name="Plant", input_type=".test.v1.Node", output_type=".test.v1.Node", client_streaming=True)
    pool.Add(file)
    return pool


def _schema_validator(document: dict[str, Any], name: str) -> jsonschema.Draft202012Validator:
    schema = {"$ref": f"#/components/schemas/{name}", "components": document["components"]}
    return jsonschema.Draft202012Validator(schema)


def test_the_document_is_valid_openapi_and_its_schemas_accept_the_codecs_json() -> None:
    pool = _tree_pool()
    echo = demo_pb2.DESCRIPTOR.services_by_name["Echo"]
    document = openapi_document(
        [pool.FindServiceByName("test.v1.Trees"), echo, orders_pb2.DESCRIPTOR.services_by_name["Orders"]],
        title="UPF",
        version="1",
    )
    validate(document)  # OpenAPI 3.1, with its JSON Schema dialect

    paths = document["paths"]
    assert set(paths["/api/test.v1.Trees/Get"]) == {"post", "get"}  # side-effect free: GET too
    assert set(paths["/api/upf.demo.v1.Echo/Say"]) == {"post"}
    assert "application/connect+json" in paths["/api/upf.demo.v1.Echo/Count"]["post"]["requestBody"]["content"]
    assert "/api/test.v1.Trees/Plant" not in paths  # a client stream has no plain HTTP form

    node_class = message_factory.GetMessageClass(pool.FindMessageTypeByName("test.v1.Node"))
    node = json_format.Parse(
        '{"children": [{"kind": "KIND_LEAF", "blob": "AAE="}], "labels": {"a": "9007199254740993"},'
        ' "weightGrams": "12", "seen": "2026-12-07T10:00:00Z"}',
        node_class(),
    )
    written = json_format.MessageToDict(node)
    validator = _schema_validator(document, "test.v1.Node")
    validator.validate(written)
    assert not validator.is_valid({"kind": "KIND_TREE"})  # not a value of the enum
    assert validator.is_valid({"colour": "red"})  # unknown fields are ignored, as Connect's JSON codec does
    assert not validator.is_valid({"weightGrams": "twelve"})

    order = orders_pb2.CreateOrderRequest(customer_id="c1")
    _schema_validator(document, "upf.orders.v1.CreateOrderRequest").validate(json_format.MessageToDict(order))


def test_rest_routes_are_documented_with_their_parameters_and_bodies() -> None:
    orders = orders_pb2.DESCRIPTOR.services_by_name["Orders"]
    document = openapi_document([orders], title="UPF", version="1")
    validate(document)
    paths = document["paths"]
    assert set(paths["/api/v1/orders"]) == {"get", "post"}
    assert set(paths["/api/v1/orders/{id}"]) == {"get", "patch"}

    listing = paths["/api/v1/orders"]["get"]
    assert [(p["name"], p["in"]) for p in listing["parameters"]] == [
        ("status", "query"),
        ("customerId", "query"),
        ("pageSize", "query"),
        ("pageToken", "query"),
    ]
    assert "requestBody" not in listing
    create = paths["/api/v1/orders"]["post"]  # body: "*": the whole request message
    assert create["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/upf.orders.v1.CreateOrderRequest"
    }
    get = paths["/api/v1/orders/{id}"]["get"]  # response_body: "order"
    assert get["parameters"] == [{"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}]
    assert get["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/upf.orders.v1.Order"
    }
    assert get["responses"]["default"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/gateway.Error"
    }
    # The additional binding: the status from the path, the rest of the message from the query.
    by_path = paths["/api/v1/orders/{id}/status/{status}"]["post"]
    assert [(p["name"], p["in"]) for p in by_path["parameters"]] == [
        ("id", "path"),
        ("status", "path"),
        ("expectedVersion", "query"),
    ]
    assert len({op["operationId"] for ops in paths.values() for op in ops.values()}) == sum(
        len(ops) for ops in paths.values()
    )


def test_a_server_stream_s_rest_route_is_documented_as_json_lines() -> None:
    things = things_pool(v2=False).FindServiceByName("rest.v1.Things")
    document = openapi_document([things], title="UPF", version="1")
    validate(document)
    answer = document["paths"]["/api/v1/things/{id}/count"]["get"]["responses"]["200"]
    line = answer["content"]["application/x-ndjson"]["schema"]
    assert line["properties"]["result"] == {"$ref": "#/components/schemas/rest.v1.Thing"}
    validator = jsonschema.Draft202012Validator({**line, "components": document["components"]})
    validator.validate({"result": {"id": "1", "name": "thing 1"}})
    validator.validate({"error": {"code": "DATA_LOSS", "message": "broken after 2"}})
    assert not validator.is_valid({"result": {"id": "one"}})
