"""ServerReflection: the answers of grpc.reflection's ServerReflectionInfo, from the plugins' descriptors.

v1 and v1alpha carry the same messages under two package names, so the v1alpha classes serve both
(as in gateway/descriptors/fetch.py). Each visible service's descriptors live in their own pool (one
per plugin version, DescriptorCatalog); a request is answered from the first pool that knows its
symbol, file or type, trying the pools of the services the symbol is named after first. Two plugins
shipping different files under one name are not merged: the first service's (by name) is described.

What a client may not call is not described: a file goes out without the services that are not
visible (internal, or not routed), and asking for one of those is NOT_FOUND, as for a symbol nobody
defines. A file's imports follow it once per stream, as grpc-go's reflection sends them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Iterator

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.descriptor import FileDescriptor, ServiceDescriptor
from google.protobuf.message import DecodeError
from grpc_reflection.v1alpha import reflection_pb2 as rpb

from gateway.descriptors import DescriptorsUnavailable
from gateway.errors import BadRequest

__all__ = ["REFLECTION_PATHS", "REFLECTION_SERVICES", "ServerReflection"]

REFLECTION_SERVICES = ("grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection")
REFLECTION_PATHS = tuple(f"/{service}/ServerReflectionInfo" for service in REFLECTION_SERVICES)

Services = Callable[[], Iterable[str]]  # the services a client may call now
Describe = Callable[[str], Awaitable[ServiceDescriptor]]  # DescriptorCatalog.service

_NOT_FOUND = grpc.StatusCode.NOT_FOUND.value[0]
_INVALID_ARGUMENT = grpc.StatusCode.INVALID_ARGUMENT.value[0]


class _NotFound(Exception):
    """Answered as an ErrorResponse with NOT_FOUND; the stream goes on."""


def _own_pool() -> descriptor_pool.DescriptorPool:
    """The reflection services' own files, under their canonical names (grpcio-reflection ships only
    v1alpha, under another file name; v1 is the same file in package grpc.reflection.v1)."""
    alpha = descriptor_pb2.FileDescriptorProto()
    rpb.DESCRIPTOR.CopyToProto(alpha)
    alpha.name = "grpc/reflection/v1alpha/reflection.proto"
    v1 = descriptor_pb2.FileDescriptorProto()
    v1.CopyFrom(alpha)
    v1.name, v1.package = "grpc/reflection/v1/reflection.proto", "grpc.reflection.v1"
    v1.ClearField("options")
    old, new = ".grpc.reflection.v1alpha.", ".grpc.reflection.v1."
    for message in v1.message_type:
        for field in message.field:
            if field.HasField("type_name"):
                field.type_name = field.type_name.replace(old, new)
    for method in v1.service[0].method:
        method.input_type = method.input_type.replace(old, new)
        method.output_type = method.output_type.replace(old, new)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(alpha)
    pool.Add(v1)
    return pool


class ServerReflection:
    """`services()`: what a client may call now; `describe(service)`: its descriptors (the catalog's)."""

    def __init__(self, services: Services, describe: Describe) -> None:
        self._services = services
        self._describe = describe
        self._own = _own_pool()

    def methods(self) -> dict[str, Callable[[], Callable[[bytes], Awaitable[bytes]]]]:
        """The call paths to serve, each opening one stream's answerer (for the ingress's `local`)."""
        return dict.fromkeys(REFLECTION_PATHS, self.open)

    def open(self) -> Callable[[bytes], Awaitable[bytes]]:
        return _Stream(self).answer

    def visible(self) -> list[str]:
        return sorted({*self._services(), *REFLECTION_SERVICES})

    async def pools(self, symbol: str = "") -> tuple[set[str], list[descriptor_pool.DescriptorPool], dict[str, str]]:
        """The visible services, the pools to search (the reflection services' own first, then those of
        the services `symbol` is named after), and why a visible service has no descriptors now."""
        visible = self.visible()
        routed = [service for service in visible if service not in REFLECTION_SERVICES]
        described = await asyncio.gather(*(self._describe(service) for service in routed), return_exceptions=True)
        named = {service for service in routed if symbol == service or symbol.startswith(service + ".")}
        pools, unavailable = [self._own], {}
        for service, result in sorted(zip(routed, described, strict=True), key=lambda pair: pair[0] not in named):
            if isinstance(result, DescriptorsUnavailable):
                unavailable[service] = str(result)
            elif isinstance(result, BaseException):
                raise result
            elif all(pool is not result.file.pool for pool in pools):
                pools.append(result.file.pool)
        return set(visible), pools, unavailable


class _Stream:
    """One ServerReflectionInfo call: the files already sent on it are not sent again as imports."""

    def __init__(self, reflection: ServerReflection) -> None:
        self.reflection = reflection
        self.sent: set[str] = set()

    async def answer(self, raw: bytes) -> bytes:
        try:
            request = rpb.ServerReflectionRequest.FromString(raw)
        except DecodeError:
            raise BadRequest("the request is not a grpc.reflection ServerReflectionRequest") from None
        response = rpb.ServerReflectionResponse(valid_host=request.host, original_request=request)
        try:
            await self._fill(request, response)
        except _NotFound as exc:
            response.error_response.error_code = _NOT_FOUND
            response.error_response.error_message = str(exc)
        answer: bytes = response.SerializeToString()
        return answer

    async def _fill(self, request: rpb.ServerReflectionRequest, response: rpb.ServerReflectionResponse) -> None:
        kind = request.WhichOneof("message_request")
        if kind == "list_services":
            response.list_services_response.service.extend(
                rpb.ServiceResponse(name=name) for name in self.reflection.visible()
            )
        elif kind == "file_containing_symbol":
            file = await self._containing_symbol(request.file_containing_symbol)
            response.file_descriptor_response.file_descriptor_proto.extend(self._with_imports(file))
        elif kind == "file_by_filename":
            file = await self._by_filename(request.file_by_filename)
            response.file_descriptor_response.file_descriptor_proto.extend(self._with_imports(file))
        elif kind == "file_containing_extension":
            wanted = request.file_containing_extension
            file = await self._containing_extension(wanted.containing_type, wanted.extension_number)
            response.file_descriptor_response.file_descriptor_proto.extend(self._with_imports(file))
        elif kind == "all_extension_numbers_of_type":
            name = request.all_extension_numbers_of_type
            response.all_extension_numbers_response.base_type_name = name
            response.all_extension_numbers_response.extension_number.extend(await self._extension_numbers(name))
        else:
            response.error_response.error_code = _INVALID_ARGUMENT
            response.error_response.error_message = "the request asks for nothing this server knows"

    async def _containing_symbol(self, symbol: str) -> FileDescriptor:
        visible, pools, unavailable = await self.reflection.pools(symbol)
        for pool in pools:
            found = _find_symbol(pool, symbol)
            if found is None:
                continue
            file, service = found
            if service is None or service in visible:
                return file
        owner = next((service for service in unavailable if symbol == service or symbol.startswith(service + ".")), "")
        if owner:
            raise _NotFound(f"symbol not found: {symbol} ({unavailable[owner]})")
        raise _NotFound(f"symbol not found: {symbol}")

    async def _by_filename(self, name: str) -> FileDescriptor:
        _, pools, _ = await self.reflection.pools()
        for pool in pools:
            try:
                return pool.FindFileByName(name)
            except KeyError:
                continue
        raise _NotFound(f"file not found: {name}")

    async def _containing_extension(self, message: str, number: int) -> FileDescriptor:
        _, pools, _ = await self.reflection.pools(message)
        for pool in pools:
            try:
                extension = pool.FindExtensionByNumber(pool.FindMessageTypeByName(message), number)
            except KeyError:
                continue
            return pool.FindFileContainingSymbol(extension.full_name)
        raise _NotFound(f"extension {number} of {message} not found")

    async def _extension_numbers(self, message: str) -> list[int]:
        _, pools, _ = await self.reflection.pools(message)
        numbers: set[int] = set()
        known = False
        for pool in pools:
            try:
                descriptor = pool.FindMessageTypeByName(message)
            except KeyError:
                continue
            known = True
            numbers.update(extension.number for extension in pool.FindAllExtensions(descriptor))
        if not known:
            raise _NotFound(f"type not found: {message}")
        return sorted(numbers)

    def _with_imports(self, file: FileDescriptor) -> list[bytes]:
        """The file (always: it was asked for), then those it imports, directly or not, not sent yet."""
        visible = set(self.reflection.visible())
        out = [_public(file, visible)]
        self.sent.add(file.name)
        for imported in _imports(file):
            if imported.name not in self.sent:
                self.sent.add(imported.name)
                out.append(_public(imported, visible))
        return out


def _find_symbol(pool: descriptor_pool.DescriptorPool, symbol: str) -> tuple[FileDescriptor, str | None] | None:
    """The file defining `symbol`, and the service it is or belongs to (None: it is no service or method)."""
    try:
        service = pool.FindServiceByName(symbol)
        return service.file, service.full_name
    except KeyError:
        pass
    try:
        method = pool.FindMethodByName(symbol)  # the file lookup below knows no methods
        return method.containing_service.file, method.containing_service.full_name
    except KeyError:
        pass
    try:
        return pool.FindFileContainingSymbol(symbol), None
    except KeyError:
        return None


def _imports(file: FileDescriptor) -> Iterator[FileDescriptor]:
    seen: set[str] = {file.name}
    stack = list(file.dependencies)
    while stack:
        imported = stack.pop()
        if imported.name not in seen:
            seen.add(imported.name)
            yield imported
            stack.extend(imported.dependencies)


def _public(file: FileDescriptor, visible: set[str]) -> bytes:
    """The file as a client may see it: without the services it may not call."""
    raw: bytes = file.serialized_pb
    if not file.services_by_name:
        return raw
    proto = descriptor_pb2.FileDescriptorProto.FromString(raw)
    prefix = f"{proto.package}." if proto.package else ""
    kept = [service for service in proto.service if prefix + service.name in visible]
    if len(kept) == len(proto.service):
        return raw
    del proto.service[:]
    proto.service.extend(kept)
    proto.ClearField("source_code_info")  # its locations count services by position
    return proto.SerializeToString()
