"""A REST request to the method's request message, as google.api.http says (Envoy and grpc-gateway
read it the same way):

    body: "*"        the JSON body is the request message; path variables are set on top of it
    body: "field"    the JSON body is that field; path variables and query parameters fill the rest
    no body          path variables and query parameters fill the message

A query parameter names a field path (`page.size=10`); a repeated field takes the parameter several
times. Values are text, turned into the JSON each field's type takes, then parsed with the message
class, so every wrong value is INVALID_ARGUMENT with a message naming the field.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from gateway.errors import BadRequest
from gateway.transcode.http_rule import HttpBinding

__all__ = ["request_message", "response_json"]


def request_message(
    binding: HttpBinding,
    message: type[Message],
    variables: Mapping[str, str],
    query: Iterable[tuple[str, str]],
    body: bytes,
) -> bytes:
    """The wire bytes of the request message this REST request stands for."""
    document: dict[str, Any] = {}
    descriptor = message.DESCRIPTOR
    if binding.body == "*":
        document = _json_object(body, "the body")
    elif binding.body:
        _assign(document, descriptor, binding.body, _json_value(body), raw=True)
    if binding.body != "*":
        bound = set(variables) | ({binding.body} if binding.body else set())
        for name, value in query:
            if any(_same_or_below(descriptor, name, taken) for taken in bound):
                raise BadRequest(f"query parameter {name!r} is already given by the path or the body")
            _assign(document, descriptor, name, value, repeat=True)
    for name, value in variables.items():
        _assign(document, descriptor, name, value)
    try:
        return json_format.ParseDict(document, message()).SerializeToString()
    except json_format.ParseError as exc:
        raise BadRequest(f"invalid {descriptor.full_name}: {exc}") from None


def response_json(binding: HttpBinding, message: type[Message], data: bytes) -> bytes:
    """The JSON answer: the whole response message, or its `response_body` field."""
    holder: Any = message.FromString(data)
    if not binding.response_body:
        return _dump(json_format.MessageToDict(holder))
    *parents, leaf = binding.response_body.split(".")
    for name in parents:
        holder = getattr(holder, name)
    field = holder.DESCRIPTOR.fields_by_name[leaf]
    if field.message_type is not None and not field.is_repeated:
        return _dump(json_format.MessageToDict(getattr(holder, leaf)))
    # A scalar or a list: its value even when it is the default ("" or []), not null.
    document = json_format.MessageToDict(holder, always_print_fields_with_no_presence=True)
    return _dump(document.get(field.json_name))


def _dump(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def _same_or_below(descriptor: Any, name: str, taken: str) -> bool:
    """Whether query parameter `name` (proto or JSON names) is field path `taken` or inside it."""
    message, proto_names = descriptor, []
    for part in name.split("."):
        field = _field(message, part)
        if field is None:
            return False
        proto_names.append(field.name)
        message = field.message_type
    path = ".".join(proto_names)
    return path == taken or path.startswith(taken + ".")


def _json_object(body: bytes, what: str) -> dict[str, Any]:
    value = _json_value(body)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BadRequest(f"{what} must be a JSON object")
    return value


def _json_value(body: bytes) -> Any:
    if not body.strip():
        return None
    try:
        return json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadRequest(f"the body is not JSON: {exc}") from None


def _assign(
    document: dict[str, Any], descriptor: Any, path: str, value: Any, *, raw: bool = False, repeat: bool = False
) -> None:
    names = path.split(".")
    target = document
    message: Any = descriptor
    for depth, name in enumerate(names):
        field = _field(message, name)
        if field is None:
            raise BadRequest(f"{path!r} is not a field of {descriptor.full_name}")
        last = depth == len(names) - 1
        if not last:
            if field.message_type is None or field.is_repeated:
                raise BadRequest(f"{path!r}: {name!r} is not a message field")
            target = target.setdefault(field.json_name, {})
            message = field.message_type
            continue
        if raw:
            target[field.json_name] = value
        elif field.is_repeated and field.message_type is None:
            target.setdefault(field.json_name, []).append(_typed(field, value, path))
        elif field.message_type is not None and not _is_scalar_wrapper(field):
            raise BadRequest(f"{path!r} is a message; it cannot come from the path or the query")
        elif repeat and field.json_name in target:
            raise BadRequest(f"{path!r} is not repeated; give it once")
        else:
            target[field.json_name] = _typed(field, value, path)


def _field(message: Any, name: str) -> Any:
    """The field called `name`, by its proto name or (as grpc-gateway allows in queries) its JSON name."""
    if message is None:
        return None
    found = message.fields_by_name.get(name)
    if found is None:
        found = next((field for field in message.fields if field.json_name == name), None)
    return found


_WRAPPERS = {
    "Timestamp",
    "Duration",
    "FieldMask",
    "DoubleValue",
    "FloatValue",
    "Int64Value",
    "UInt64Value",
    "Int32Value",
    "UInt32Value",
    "BoolValue",
    "StringValue",
    "BytesValue",
}


def _is_scalar_wrapper(field: FieldDescriptor) -> bool:
    """Well-known messages whose JSON form is a scalar: they can come from text."""
    message = field.message_type
    return message is not None and message.full_name.startswith("google.protobuf.") and message.name in _WRAPPERS


def _typed(field: FieldDescriptor, value: str, path: str) -> Any:
    kind = field.type
    if kind == FieldDescriptor.TYPE_BOOL or (field.message_type is not None and field.message_type.name == "BoolValue"):
        if value not in ("true", "false"):
            raise BadRequest(f"{path!r} must be true or false, not {value!r}")
        return value == "true"
    if kind in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        try:
            return float(value)
        except ValueError:
            raise BadRequest(f"{path!r} must be a number, not {value!r}") from None
    if kind == FieldDescriptor.TYPE_ENUM and value.lstrip("-").isdigit():
        return int(value)
    return value  # strings, bytes (base64), 64-bit and 32-bit integers as text: the JSON parser checks them
