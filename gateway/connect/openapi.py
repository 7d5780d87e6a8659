"""An OpenAPI 3.1 document for the Connect and REST routes of the exposed services, from their descriptors.

Connect: `POST /api/<pkg.Service>/<Method>` for every method that is not a client stream, and `GET` for
side-effect-free ones. REST: each google.api.http binding of a unary method (gateway/transcode/), at
its path below /api/, with its path variables and query parameters as parameters and the request body
its `body` names; REST errors are the gateway's `{"code": "NOT_FOUND", "message": ...}`.

Schemas follow protobuf's JSON mapping, which is what the Connect JSON codec reads and writes: integers
as numbers or decimal strings (64-bit ones are written as strings), bytes as base64, enums as value
names or numbers, maps as objects, well-known types in their special forms (Timestamp an RFC 3339
string, Struct any object ...). Unknown fields are ignored, as Connect's JSON codec does, so message
schemas do not forbid other properties. Each message is one named schema
(`#/components/schemas/<full name>`), so recursive messages are fine.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor, ServiceDescriptor
from starlette.requests import Request
from starlette.responses import Response

from gateway.descriptors import DescriptorsUnavailable
from gateway.transcode.http_rule import HttpBinding, InvalidHttpRule, http_bindings
from gateway.transcode.routes import PREFIX

__all__ = ["OpenApiEndpoint", "openapi_document"]

Describe = Callable[[str], Awaitable[ServiceDescriptor]]

_ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "A Connect error: `code` is the gRPC status name in lower case.",
    "properties": {
        "code": {"type": "string", "examples": ["invalid_argument", "unauthenticated", "unavailable"]},
        "message": {"type": "string"},
        "details": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"type": {"type": "string"}, "value": {"type": "string", "contentEncoding": "base64"}},
            },
        },
    },
    "required": ["code"],
}

_REST_ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "A gateway error: `code` is the gRPC status name; the HTTP status is its mapping.",
    "properties": {
        "code": {"type": "string", "examples": ["INVALID_ARGUMENT", "NOT_FOUND", "UNAUTHENTICATED"]},
        "message": {"type": "string"},
    },
    "required": ["code", "message"],
}
_REST_VERBS = ("get", "put", "post", "delete", "patch")

_INT64 = {"type": ["string", "integer"], "format": "int64", "pattern": "^-?[0-9]+$"}
_UINT64 = {"type": ["string", "integer"], "format": "uint64", "pattern": "^[0-9]+$", "minimum": 0}
_INT32 = {
    "type": ["integer", "string"],
    "format": "int32",
    "pattern": "^-?[0-9]+$",
    "minimum": -(2**31),
    "maximum": 2**31 - 1,
}
_UINT32 = {"type": ["integer", "string"], "format": "int64", "pattern": "^[0-9]+$", "minimum": 0, "maximum": 2**32 - 1}
_SCALARS: dict[int, dict[str, Any]] = {
    FieldDescriptor.TYPE_DOUBLE: {"type": ["number", "string"], "format": "double"},
    FieldDescriptor.TYPE_FLOAT: {"type": ["number", "string"], "format": "float"},
    FieldDescriptor.TYPE_INT64: _INT64,
    FieldDescriptor.TYPE_SINT64: _INT64,
    FieldDescriptor.TYPE_SFIXED64: _INT64,
    FieldDescriptor.TYPE_UINT64: _UINT64,
    FieldDescriptor.TYPE_FIXED64: _UINT64,
    FieldDescriptor.TYPE_INT32: _INT32,
    FieldDescriptor.TYPE_SINT32: _INT32,
    FieldDescriptor.TYPE_SFIXED32: _INT32,
    FieldDescriptor.TYPE_UINT32: _UINT32,
    FieldDescriptor.TYPE_FIXED32: _UINT32,
    FieldDescriptor.TYPE_BOOL: {"type": "boolean"},
    FieldDescriptor.TYPE_STRING: {"type": "string"},
    FieldDescriptor.TYPE_BYTES: {"type": "string", "format": "byte", "contentEncoding": "base64"},
}
_WELL_KNOWN: dict[str, dict[str, Any]] = {
    "google.protobuf.Timestamp": {"type": "string", "format": "date-time"},
    "google.protobuf.Duration": {"type": "string", "pattern": r"^-?[0-9]+(\.[0-9]{1,9})?s$"},
    "google.protobuf.FieldMask": {"type": "string"},
    "google.protobuf.Struct": {"type": "object", "additionalProperties": True},
    "google.protobuf.Value": {},
    "google.protobuf.ListValue": {"type": "array", "items": {}},
    "google.protobuf.Empty": {"type": "object", "additionalProperties": False},
    "google.protobuf.Any": {"type": "object", "properties": {"@type": {"type": "string"}}, "required": ["@type"]},
    "google.protobuf.DoubleValue": {"type": ["number", "string", "null"]},
    "google.protobuf.FloatValue": {"type": ["number", "string", "null"]},
    "google.protobuf.Int64Value": {"type": ["string", "integer", "null"]},
    "google.protobuf.UInt64Value": {"type": ["string", "integer", "null"]},
    "google.protobuf.Int32Value": {"type": ["integer", "null"]},
    "google.protobuf.UInt32Value": {"type": ["integer", "null"]},
    "google.protobuf.BoolValue": {"type": ["boolean", "null"]},
    "google.protobuf.StringValue": {"type": ["string", "null"]},
    "google.protobuf.BytesValue": {"type": ["string", "null"], "contentEncoding": "base64"},
}

# Well-known messages whose JSON form is a scalar: a query parameter can give them, as
# gateway/transcode/request.py reads them.
_TEXT_MESSAGES = frozenset(
    {"google.protobuf.Timestamp", "google.protobuf.Duration", "google.protobuf.FieldMask"}
    | {f"google.protobuf.{kind}Value" for kind in ("Double", "Float", "Int64", "UInt64", "Int32", "UInt32", "Bool")}
    | {"google.protobuf.StringValue", "google.protobuf.BytesValue"}
)


class _Schemas:
    def __init__(self) -> None:
        self.components: dict[str, Any] = {"connect.Error": _ERROR_SCHEMA, "gateway.Error": _REST_ERROR_SCHEMA}

    def ref(self, message: Descriptor) -> dict[str, Any]:
        name = message.full_name
        if name in _WELL_KNOWN:
            return dict(_WELL_KNOWN[name])
        if name not in self.components:
            self.components[name] = {}  # placed first: a message that holds itself refers to it
            self.components[name] = self._message(message)
        return {"$ref": f"#/components/schemas/{name}"}

    def _message(self, message: Descriptor) -> dict[str, Any]:
        properties = {field.json_name: self.field(field) for field in message.fields}
        return {"type": "object", "title": message.name, "properties": properties}

    def field(self, field: FieldDescriptor) -> dict[str, Any]:
        entry = field.message_type
        if entry is not None and entry.GetOptions().map_entry:
            value = entry.fields_by_name["value"]
            return {"type": "object", "additionalProperties": self.single(value)}
        if field.is_repeated:
            return {"type": "array", "items": self.single(field)}
        return self.single(field)

    def single(self, field: FieldDescriptor) -> dict[str, Any]:
        if field.message_type is not None:
            return self.ref(field.message_type)
        if field.enum_type is not None:
            return _enum(field.enum_type)
        return dict(_SCALARS[field.type])


def _enum(enum: EnumDescriptor) -> dict[str, Any]:
    if enum.full_name == "google.protobuf.NullValue":
        return {"type": "null"}
    return {
        "type": ["string", "integer"],
        "enum": [value.name for value in enum.values] + [v.number for v in enum.values],
    }


def openapi_document(services: Iterable[ServiceDescriptor], *, title: str, version: str) -> dict[str, Any]:
    """OpenAPI 3.1 for `POST /api/<service>/<method>` (JSON unary), `GET` for side-effect-free methods,
    the Connect streaming form of server-streaming methods, and the REST routes of unary and
    server-streaming methods (a stream's as newline-delimited JSON)."""
    schemas = _Schemas()
    paths: dict[str, Any] = {}
    for service in sorted(services, key=lambda s: s.full_name):
        for method in service.methods:
            if method.client_streaming:
                continue  # client and bidi streams need a Connect streaming client over HTTP/2
            paths[f"/api/{service.full_name}/{method.name}"] = _operations(service, method, schemas)
    for service in sorted(services, key=lambda s: s.full_name):
        for method in service.methods:
            if not method.client_streaming:
                _add_rest(paths, service, method, schemas)
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version},
        "paths": paths,
        "components": {
            "schemas": schemas.components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
        },
        "security": [{"bearer": []}],
    }


def _operations(service: ServiceDescriptor, method: Any, schemas: _Schemas) -> dict[str, Any]:
    request = schemas.ref(method.input_type)
    response = schemas.ref(method.output_type)
    errors = {
        "415": {
            "description": "Not a Connect (or gRPC-Web) content type",
            "content": {"text/plain": {"schema": {"type": "string"}}},
        },
        "default": {"description": "A Connect error", "content": _json({"$ref": "#/components/schemas/connect.Error"})},
    }
    operation_id = f"{service.full_name}.{method.name}"
    if method.server_streaming:
        stream = {"type": "string", "contentMediaType": "application/connect+json", "description": "Connect envelopes"}
        return {
            "post": {
                "operationId": operation_id,
                "tags": [service.full_name],
                "summary": f"{method.name} (server stream, Connect streaming protocol)",
                "requestBody": {"required": True, "content": {"application/connect+json": {"schema": stream}}},
                "responses": {
                    "200": {
                        "description": "A stream of " + method.output_type.full_name,
                        "content": {"application/connect+json": {"schema": stream}},
                    },
                    **errors,
                },
            }
        }
    operations: dict[str, Any] = {
        "post": {
            "operationId": operation_id,
            "tags": [service.full_name],
            "requestBody": {"required": True, "content": _json(request)},
            "responses": {"200": {"description": method.output_type.full_name, "content": _json(response)}, **errors},
        }
    }
    options = method.GetOptions()
    if options.idempotency_level == options.NO_SIDE_EFFECTS:
        operations["get"] = {
            "operationId": operation_id + ".get",
            "tags": [service.full_name],
            "parameters": [
                {"name": "encoding", "in": "query", "required": True, "schema": {"const": "json"}},
                {"name": "message", "in": "query", "required": True, "content": _json(request)},
            ],
            "responses": operations["post"]["responses"],
        }
    return operations


def _add_rest(paths: dict[str, Any], service: ServiceDescriptor, method: Any, schemas: _Schemas) -> None:
    try:
        bindings = http_bindings(method)
    except InvalidHttpRule:
        return  # not served either (gateway/transcode/routes.py logs it)
    for index, binding in enumerate(bindings):
        verb = binding.verb.lower()
        path = _openapi_path(binding)
        if verb not in _REST_VERBS or path is None or verb in paths.get(path, {}):
            continue  # a custom verb, an unnamed wildcard, or a route another binding documents already
        operation: dict[str, Any] = {
            "operationId": f"{service.full_name}.{method.name}.rest" + (str(index + 1) if index else ""),
            "tags": [service.full_name],
            "summary": f"{method.name} over REST",
            "parameters": _rest_parameters(binding, method.input_type, schemas),
            "responses": {
                "200": _rest_answer(binding, method, schemas),
                "default": {
                    "description": "An error, with the HTTP status of its gRPC code",
                    "content": _json({"$ref": "#/components/schemas/gateway.Error"}),
                },
            },
        }
        if binding.body:
            body = (
                schemas.ref(method.input_type)
                if binding.body == "*"
                else _field_schema(method.input_type, binding.body, schemas)
            )
            operation["requestBody"] = {"required": True, "content": _json(body)}
        paths.setdefault(path, {})[verb] = operation


def _openapi_path(binding: HttpBinding) -> str | None:
    """`/api/v1/orders/{id}` for `/v1/orders/{id}`; a variable over several segments is one parameter.
    None when the template has a wildcard that binds no field (OpenAPI cannot name it)."""
    parts: list[str] = []
    for segment in binding.template.segments:
        if segment.variable is None:
            if segment.kind != "literal":
                return None
            parts.append(segment.text)
        elif segment.first:
            parts.append("{" + segment.variable + "}")
    verb = binding.template.verb
    return PREFIX + "/" + "/".join(parts) + (":" + verb if verb else "")


def _rest_parameters(binding: HttpBinding, message: Descriptor, schemas: _Schemas) -> list[dict[str, Any]]:
    variables = binding.template.variables
    parameters = [
        {"name": name, "in": "path", "required": True, "schema": _field_schema(message, name, schemas)}
        for name in variables
    ]
    if binding.body == "*":
        return parameters
    taken = {name.split(".")[0] for name in variables} | ({binding.body.split(".")[0]} if binding.body else set())
    for field in message.fields:
        if field.name in taken or (
            field.message_type is not None and field.message_type.full_name not in _TEXT_MESSAGES
        ):
            continue  # bound already, or a message: not a query parameter here (its fields could be, as a.b=)
        schema = schemas.field(field)
        if field.is_repeated:
            parameters.append({"name": field.json_name, "in": "query", "schema": schema, "explode": True})
        else:
            parameters.append({"name": field.json_name, "in": "query", "schema": schema})
    return parameters


def _field_schema(message: Any, path: str, schemas: _Schemas) -> dict[str, Any]:
    *parents, leaf = path.split(".")
    for name in parents:
        message = message.fields_by_name[name].message_type
    return schemas.field(message.fields_by_name[leaf])


def _response(binding: HttpBinding, method: Any, schemas: _Schemas) -> dict[str, Any]:
    if not binding.response_body:
        return schemas.ref(method.output_type)
    return _field_schema(method.output_type, binding.response_body, schemas)


def _rest_answer(binding: HttpBinding, method: Any, schemas: _Schemas) -> dict[str, Any]:
    response = _response(binding, method, schemas)
    if not method.server_streaming:
        return {"description": method.output_type.full_name, "content": _json(response)}
    line = {
        "type": "object",
        "description": "One line: a message, or (the last line of a stream that failed after it began) the error",
        "properties": {"result": response, "error": {"$ref": "#/components/schemas/gateway.Error"}},
    }
    return {
        "description": f"A stream of {method.output_type.full_name}, one JSON object per line",
        "content": {"application/x-ndjson": {"schema": line}},
    }


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


class OpenApiEndpoint:
    """`GET /api/openapi.json`: the document for the services routed now, from their descriptors.

    Services whose plugin cannot describe itself (no reflection, or unreachable) are left out and named
    in `x-undescribed`; internal services never appear. The document is rebuilt only when the set of
    services or one of their schemas changed.
    """

    def __init__(self, services: Callable[[], Iterable[str]], describe: Describe, *, version: str) -> None:
        self._services = services
        self._describe = describe
        self._version = version
        self._cached: tuple[tuple[Any, ...], bytes] | None = None

    async def respond(self, request: Request) -> Response:
        described: list[ServiceDescriptor] = []
        missing: list[str] = []
        for name in sorted(self._services()):
            try:
                described.append(await self._describe(name))
            except DescriptorsUnavailable as exc:
                missing.append(f"{name}: {exc}")
        key = (*(id(service) for service in described), *missing)
        if self._cached is None or self._cached[0] != key:
            document = openapi_document(described, title="UPF gateway", version=self._version)
            if missing:
                document["x-undescribed"] = missing
            self._cached = (key, json.dumps(document, separators=(",", ":")).encode())
        return Response(self._cached[1], media_type="application/json", headers={"cache-control": "no-cache"})
