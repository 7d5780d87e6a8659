"""Connect's error body, `{"code": "invalid_argument", "message": "...", "details": [...]}`, from a
gRPC status. Codes are gRPC's names in lower case (`canceled` with one l, as Connect spells it); the
HTTP status of a unary error comes from gateway.errors.GRPC_TO_HTTP, the gateway's one table (Connect's
mapping is googleapis' one). Details are the `google.rpc.Status` details a plugin sent in
`grpc-status-details-bin`, as `{"type", "value"}` with unpadded base64, as Connect's wire format says.
"""

from __future__ import annotations

import base64
from typing import Any

import grpc
from google.protobuf import any_pb2, descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError, Message

from gateway.errors import GRPC_TO_HTTP

__all__ = ["connect_code", "error_body", "http_status"]

_CODE_BY_NUMBER = {code.value[0]: code for code in grpc.StatusCode}


def _status_class() -> type[Message]:
    """google.rpc.Status (code 1, message 2, repeated google.protobuf.Any details 3), built here: the
    gateway reads only this one message of googleapis and does not take a dependency for it."""
    pool = descriptor_pool.DescriptorPool()
    any_file = descriptor_pb2.FileDescriptorProto()
    any_pb2.DESCRIPTOR.CopyToProto(any_file)
    pool.Add(any_file)
    file = descriptor_pb2.FileDescriptorProto(
        name="google/rpc/status.proto", package="google.rpc", syntax="proto3", dependency=[any_file.name]
    )
    status = file.message_type.add(name="Status")
    status.field.add(name="code", number=1, type=5, label=1)
    status.field.add(name="message", number=2, type=9, label=1)
    status.field.add(name="details", number=3, type=11, label=3, type_name=".google.protobuf.Any")
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("google.rpc.Status"))


_STATUS = _status_class()


def connect_code(code: grpc.StatusCode) -> str:
    return "canceled" if code is grpc.StatusCode.CANCELLED else code.name.lower()


def http_status(code: grpc.StatusCode) -> int:
    return GRPC_TO_HTTP.get(code, 500)


def status_code(number: int) -> grpc.StatusCode:
    return _CODE_BY_NUMBER.get(number, grpc.StatusCode.UNKNOWN)


def error_body(code: grpc.StatusCode, message: str, details_bin: bytes | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"code": connect_code(code)}
    if message:
        body["message"] = message
    details = _details(details_bin)
    if details:
        body["details"] = details
    return body


def _details(raw: bytes | None) -> list[dict[str, str]]:
    if not raw:
        return []
    try:
        status: Any = _STATUS.FromString(raw)
    except DecodeError:  # a plugin's malformed details: the code and message still reach the client
        return []
    return [
        {
            "type": detail.type_url.rsplit("/", 1)[-1],
            "value": base64.b64encode(detail.value).decode().rstrip("="),
        }
        for detail in status.details
    ]
