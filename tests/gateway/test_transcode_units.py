"""REST transcoding from google.api.http: templates match as Envoy and grpc-gateway match them, rules are
read from descriptors learned at run time, and requests and answers map to messages field by field."""

from __future__ import annotations

import json
from typing import Any

import pytest
from google.api import annotations_pb2, http_pb2  # type: ignore[import-untyped]
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from gateway.descriptors import DescriptorsUnavailable
from gateway.errors import BadRequest
from gateway.transcode.http_rule import InvalidHttpRule, http_bindings
from gateway.transcode.request import request_message, response_json
from gateway.transcode.routes import RestRoutes
from gateway.transcode.template import PathTemplate, TemplateError


@pytest.mark.parametrize(
    ("template", "path", "expected"),
    [
        ("/v1/orders/{id}", "/v1/orders/o-1", {"id": "o-1"}),
        ("/v1/orders/{id}", "/v1/orders/a%2Fb", {"id": "a/b"}),
        ("/v1/orders/{id}", "/v1/orders/o-1/items", None),
        ("/v1/orders/{id}", "/v1/orders/", None),
        ("/v1/{name=shelves/*/books/*}", "/v1/shelves/s1/books/b2", {"name": "shelves/s1/books/b2"}),
        ("/v1/files/{path=**}", "/v1/files/a/b/c.txt", {"path": "a/b/c.txt"}),
        ("/v1/files/{path=**}", "/v1/files", {"path": ""}),
        ("/v1/orders/{id}:cancel", "/v1/orders/o-1:cancel", {"id": "o-1"}),
        ("/v1/orders/{id}:cancel", "/v1/orders/o-1", None),
        ("/v1/{page.token}/x", "/v1/t/x", {"page.token": "t"}),
    ],
)
def test_templates_match_paths_and_bind_variables(template: str, path: str, expected: dict[str, str] | None) -> None:
    assert PathTemplate.parse(template).match(path) == expected


@pytest.mark.parametrize(
    ("template", "says"),
    [
        ("v1/orders", "starts with '/'"),
        ("/v1/**/x", "last segment"),
        ("/v1/{id", "without"),
        ("/v1/{a.}", "field path"),
        ("/v1/{a={b}}", "nest"),
        ("/v1//x", "empty segment"),
        ("/v1/{id}/{id}", "bound twice"),
    ],
)
def test_bad_templates_say_what_is_wrong(template: str, says: str) -> None:
    with pytest.raises(TemplateError, match=says):
        PathTemplate.parse(template)


def _service(rules: dict[str, Any], streams: dict[str, str] | None = None) -> Any:
    """test.v1.Orders with Get/Create/List and the given google.api.http rules, in a pool of its own
    (as the gateway builds from reflection), options written by googleapis' own classes. `streams`:
    method -> "client" or "server", the side that streams."""
    pool = descriptor_pool.DescriptorPool()
    file = descriptor_pb2.FileDescriptorProto(name="test/v1/orders.proto", package="test.v1", syntax="proto3")
    page = file.message_type.add(name="Page")
    page.field.add(name="size", number=1, type=5, label=1, json_name="size")
    page.field.add(name="token", number=2, type=9, label=1, json_name="token")
    order = file.message_type.add(name="Order")
    order.field.add(name="id", number=1, type=9, label=1, json_name="id")
    order.field.add(name="customer_id", number=2, type=9, label=1, json_name="customerId")
    order.field.add(name="total_cents", number=3, type=3, label=1, json_name="totalCents")
    order.field.add(name="gift", number=4, type=8, label=1, json_name="gift")
    order.field.add(name="tags", number=5, type=9, label=3, json_name="tags")
    order.field.add(name="page", number=6, type=11, label=1, type_name=".test.v1.Page", json_name="page")
    reply = file.message_type.add(name="Reply")
    reply.field.add(name="order", number=1, type=11, label=1, type_name=".test.v1.Order", json_name="order")
    reply.field.add(name="note", number=2, type=9, label=1, json_name="note")
    service = file.service.add(name="Orders")
    for name, rule in rules.items():
        method = service.method.add(name=name, input_type=".test.v1.Order", output_type=".test.v1.Reply")
        method.client_streaming = (streams or {}).get(name) == "client"
        method.server_streaming = (streams or {}).get(name) == "server"
        options = descriptor_pb2.MethodOptions()
        options.Extensions[annotations_pb2.http].CopyFrom(http_pb2.HttpRule(**rule))
        method.options.ParseFromString(options.SerializeToString())
    pool.Add(file)
    return pool.FindServiceByName("test.v1.Orders")


def _classes(service: Any) -> tuple[Any, Any]:
    method = service.methods[0]
    return message_factory.GetMessageClass(method.input_type), message_factory.GetMessageClass(method.output_type)


def test_rules_are_read_from_descriptors_with_their_additional_bindings() -> None:
    service = _service(
        {
            "Get": {
                "get": "/v1/orders/{id}",
                "response_body": "order",
                "additional_bindings": [http_pb2.HttpRule(get="/v1/customers/{customer_id}/orders/{id}")],
            },
            "Create": {"post": "/v1/orders", "body": "*"},
            "Tag": {"custom": http_pb2.CustomHttpPattern(kind="LINK", path="/v1/orders/{id}/tags")},
        }
    )
    get = http_bindings(service.methods_by_name["Get"])
    assert [(b.verb, b.template.source, b.response_body) for b in get] == [
        ("GET", "/v1/orders/{id}", "order"),
        ("GET", "/v1/customers/{customer_id}/orders/{id}", "order"),  # inherits the rule's response_body
    ]
    assert [(b.verb, b.body) for b in http_bindings(service.methods_by_name["Create"])] == [("POST", "*")]
    assert http_bindings(service.methods_by_name["Tag"])[0].verb == "LINK"


@pytest.mark.parametrize(
    ("rule", "says"),
    [
        ({"get": "/v1/orders/{nope}"}, "path variable 'nope'"),
        ({"post": "/v1/orders", "body": "nope"}, "body 'nope'"),
        ({"get": "/v1/orders", "response_body": "nope"}, "response_body 'nope' is not a field of test.v1.Reply"),
        ({"get": "v1/orders"}, "starts with"),
    ],
)
def test_rules_that_cannot_be_served_are_refused_naming_the_method(rule: dict[str, Any], says: str) -> None:
    with pytest.raises(InvalidHttpRule, match=says):
        http_bindings(_service({"Get": rule}).methods_by_name["Get"])


def test_requests_take_fields_from_path_query_and_body() -> None:
    service = _service(
        {
            "Get": {"get": "/v1/orders/{id}"},
            "Create": {"post": "/v1/customers/{customer_id}/orders", "body": "*"},
            "Page": {"put": "/v1/orders/{id}/page", "body": "page"},
        }
    )
    order, _reply = _classes(service)
    get = http_bindings(service.methods_by_name["Get"])[0]
    wire = request_message(
        get,
        order,
        {"id": "o-1"},
        [("gift", "true"), ("totalCents", "9007199254740993"), ("tags", "a"), ("tags", "b"), ("page.size", "10")],
        b"",
    )
    parsed = order.FromString(wire)
    assert (parsed.id, parsed.gift, parsed.total_cents, list(parsed.tags), parsed.page.size) == (
        "o-1",
        True,
        9007199254740993,
        ["a", "b"],
        10,
    )
    create = http_bindings(service.methods_by_name["Create"])[0]
    parsed = order.FromString(
        request_message(create, order, {"customer_id": "c1"}, [], b'{"id": "o-2", "customerId": "x"}')
    )
    assert (parsed.id, parsed.customer_id) == ("o-2", "c1")  # the path wins over the body
    page = http_bindings(service.methods_by_name["Page"])[0]
    parsed = order.FromString(request_message(page, order, {"id": "o-3"}, [("gift", "false")], b'{"size": 5}'))
    assert (parsed.id, parsed.page.size, parsed.gift) == ("o-3", 5, False)


@pytest.mark.parametrize(
    ("query", "body", "says"),
    [
        ([("colour", "red")], b"", "'colour' is not a field"),
        ([("gift", "yes")], b"", "true or false"),
        ([("totalCents", "lots")], b"", "totalCents|total_cents"),
        ([("id", "o-9")], b"", "already given"),
        ([("gift", "true"), ("gift", "false")], b"", "give it once"),
        ([("page", "x")], b"", "is a message"),
    ],
)
def test_bad_rest_requests_are_invalid_argument_naming_the_field(
    query: list[tuple[str, str]], body: bytes, says: str
) -> None:
    service = _service({"Get": {"get": "/v1/orders/{id}"}})
    order, _ = _classes(service)
    with pytest.raises(BadRequest, match=says):
        request_message(http_bindings(service.methods_by_name["Get"])[0], order, {"id": "o-1"}, query, body)


def test_answers_are_the_whole_message_or_its_response_body() -> None:
    service = _service({"Get": {"get": "/v1/orders/{id}", "response_body": "order"}, "List": {"get": "/v1/orders"}})
    _, reply = _classes(service)
    data = reply(order={"id": "o-1", "total_cents": 5}, note="n").SerializeToString()
    get = http_bindings(service.methods_by_name["Get"])[0]
    assert json.loads(response_json(get, reply, data)) == {"id": "o-1", "totalCents": "5"}
    listed = http_bindings(service.methods_by_name["List"])[0]
    assert json.loads(response_json(listed, reply, data)) == {"order": {"id": "o-1", "totalCents": "5"}, "note": "n"}


async def test_the_route_table_picks_the_most_specific_route_and_follows_new_descriptors() -> None:
    described = {
        "test.v1.Orders": _service(
            {
                "Get": {"get": "/v1/orders/{id}"},
                "Special": {"get": "/v1/orders/special"},
                "Files": {"get": "/v1/{id=**}"},
                "Broken": {"get": "/v1/orders/{nope}"},  # left out, the others still served
            }
        )
    }

    async def describe(name: str) -> Any:
        return described[name]

    routes = RestRoutes(lambda: list(described), describe)

    async def method(verb: str, path: str) -> tuple[str, dict[str, str]] | None:
        found = await routes.match(verb, path)
        return None if found is None else (found.route.method.name, found.variables)

    assert await method("GET", "/api/v1/orders/special") == ("Special", {})  # a literal beats a variable
    assert await method("GET", "/api/v1/orders/o-1") == ("Get", {"id": "o-1"})
    assert await method("GET", "/api/v1/orders/o-1/x") == ("Files", {"id": "orders/o-1/x"})  # ** comes last
    assert await method("POST", "/api/v1/orders/o-1") is None
    assert await method("GET", "/v1/orders/o-1") is None  # REST routes live under /api/ only
    assert [route.path for route in await routes.routes()] == [
        "/api/v1/orders/special",
        "/api/v1/orders/{id}",
        "/api/v1/{id=**}",
    ]

    described["test.v1.Orders"] = _service({"Get": {"delete": "/v1/orders/{id}"}})  # a new plugin version
    assert await method("GET", "/api/v1/orders/o-1") is None
    assert await method("DELETE", "/api/v1/orders/o-1") == ("Get", {"id": "o-1"})


async def test_routes_stay_while_their_plugin_cannot_be_asked_and_go_when_it_has_no_schema() -> None:
    service = _service({"Get": {"get": "/v1/orders/{id}"}})
    answers: list[Any] = [service]

    async def describe(name: str) -> Any:
        answer = answers[-1]
        if isinstance(answer, Exception):
            raise answer
        return answer

    routes = RestRoutes(lambda: ["test.v1.Orders"], describe)
    assert await routes.match("GET", "/api/v1/orders/o-1") is not None
    answers.append(DescriptorsUnavailable("unreachable", retryable=True))
    assert await routes.match("GET", "/api/v1/orders/o-1") is not None  # the call answers 503, not 404
    answers.append(DescriptorsUnavailable("the plugin does not serve grpc.reflection"))
    assert await routes.match("GET", "/api/v1/orders/o-1") is None


async def test_server_streams_get_routes_client_streams_do_not_and_a_path_knows_its_verbs() -> None:
    service = _service(
        {
            "Get": {"get": "/v1/orders/{id}"},
            "Rename": {"put": "/v1/orders/{id}", "body": "*"},
            "Watch": {"get": "/v1/orders/{id}/watch"},
            "Upload": {"post": "/v1/orders/{id}/upload", "body": "*"},
        },
        {"Watch": "server", "Upload": "client"},
    )

    async def describe(name: str) -> Any:
        return service

    routes = RestRoutes(lambda: ["test.v1.Orders"], describe)
    watch = await routes.match("GET", "/api/v1/orders/o-1/watch")
    assert watch is not None
    assert watch.route.method.name == "Watch"
    assert await routes.match("POST", "/api/v1/orders/o-1/upload") is None  # a client stream: no REST form
    assert await routes.verbs_at("/api/v1/orders/o-1") == ["GET", "PUT"]
    assert await routes.verbs_at("/api/v1/orders/o-1/upload") == []
    assert await routes.verbs_at("/v1/orders/o-1") == []
