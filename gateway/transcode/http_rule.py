"""The `google.api.http` option of a method (google/api/http.proto), read from its descriptor.

The gateway learns descriptors at run time (gateway.descriptors), so the option arrives as an extension
field (number 72295728) of MethodOptions that this process may not know. The options are read back
from their wire bytes with a local copy of HttpRule's shape: no dependency on googleapis' Python
package, and the same answer whether or not some module registered the extension.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.message import DecodeError, Message

from gateway.transcode.template import PathTemplate, TemplateError

__all__ = ["HttpBinding", "InvalidHttpRule", "http_bindings"]

HTTP_OPTION = 72295728
_VERBS = ("get", "put", "post", "delete", "patch")


class InvalidHttpRule(ValueError):
    """A method's google.api.http option that cannot be served; the message names the method."""


@dataclass(frozen=True, slots=True)
class HttpBinding:
    verb: str  # GET, POST ... (custom verbs as written)
    template: PathTemplate
    body: str  # "" (no body), "*" (the whole request) or a field path
    response_body: str  # "" (the whole response) or a field path


def _classes() -> tuple[type[Message], type[Message]]:
    file = descriptor_pb2.FileDescriptorProto(
        name="upf/gateway/http_rule.proto", package="upf.gateway", syntax="proto3"
    )
    custom = file.message_type.add(name="CustomHttpPattern")
    custom.field.add(name="kind", number=1, type=9, label=1)
    custom.field.add(name="path", number=2, type=9, label=1)
    rule = file.message_type.add(name="HttpRule")
    rule.field.add(name="selector", number=1, type=9, label=1)
    for number, verb in enumerate(_VERBS, start=2):
        rule.field.add(name=verb, number=number, type=9, label=1, oneof_index=0)
    rule.field.add(name="body", number=7, type=9, label=1)
    rule.field.add(name="custom", number=8, type=11, label=1, type_name=".upf.gateway.CustomHttpPattern", oneof_index=0)
    rule.field.add(name="additional_bindings", number=11, type=11, label=3, type_name=".upf.gateway.HttpRule")
    rule.field.add(name="response_body", number=12, type=9, label=1)
    rule.oneof_decl.add(name="pattern")
    holder = file.message_type.add(name="MethodOptionsHttp")
    holder.field.add(name="http", number=HTTP_OPTION, type=11, label=1, type_name=".upf.gateway.HttpRule")
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    get = message_factory.GetMessageClass
    return get(pool.FindMessageTypeByName("upf.gateway.HttpRule")), get(
        pool.FindMessageTypeByName("upf.gateway.MethodOptionsHttp")
    )


_HTTP_RULE, _HOLDER = _classes()


def http_bindings(method: MethodDescriptor) -> list[HttpBinding]:
    """The method's HTTP bindings (its rule, then its additional bindings), or [] without the option."""
    try:
        holder: Any = _HOLDER.FromString(method.GetOptions().SerializeToString())
    except DecodeError:
        return []
    if not holder.HasField("http"):
        return []
    rule = holder.http
    bindings = [_binding(method, rule)]
    for extra in rule.additional_bindings:
        if extra.additional_bindings:
            raise InvalidHttpRule(f"{method.full_name}: additional bindings cannot nest")
        bindings.append(_binding(method, extra, response_body=extra.response_body or rule.response_body))
    return bindings


def _binding(method: MethodDescriptor, rule: Any, *, response_body: str | None = None) -> HttpBinding:
    pattern = rule.WhichOneof("pattern")
    if pattern is None:
        raise InvalidHttpRule(f"{method.full_name}: google.api.http has no verb")
    verb, path = (
        (rule.custom.kind, rule.custom.path) if pattern == "custom" else (pattern.upper(), getattr(rule, pattern))
    )
    try:
        template = PathTemplate.parse(path)
    except TemplateError as exc:
        raise InvalidHttpRule(f"{method.full_name}: {exc}") from None
    for variable in template.variables:
        _check_field(method, method.input_type, variable, "path variable")
    if rule.body and rule.body != "*":
        _check_field(method, method.input_type, rule.body, "body")
    chosen = rule.response_body if response_body is None else response_body
    if chosen:
        _check_field(method, method.output_type, chosen, "response_body")
    return HttpBinding(verb, template, rule.body, chosen)


def _check_field(method: MethodDescriptor, message: Any, path: str, what: str) -> None:
    top = message.full_name
    for name in path.split("."):
        field = message.fields_by_name.get(name) if message is not None else None
        if field is None:
            raise InvalidHttpRule(f"{method.full_name}: {what} {path!r} is not a field of {top}")
        message = field.message_type
