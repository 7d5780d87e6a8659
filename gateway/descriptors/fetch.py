"""One reflection conversation with a plugin replica: the files that define a symbol, with their imports.

grpc.reflection.v1 and v1alpha carry the same messages under two package names (v1alpha is what older
servers, grpcio's included, serve), so the v1alpha message classes serve both; the method path picks
the version. A server answers `file_containing_symbol` with the defining file and, usually, every file
it imports; a file it left out (servers may skip files sent earlier on the stream) is asked for by name.
Well-known types (google/protobuf/*.proto) come from the local protobuf runtime when a server omits them.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_reflection.v1alpha import reflection_pb2 as rpb

__all__ = ["REFLECTION_METHODS", "ReflectionError", "fetch_files"]

# Newest first: a server without v1 answers UNIMPLEMENTED and the next one is tried.
REFLECTION_METHODS = (
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
)
_MAX_FILES = 512  # a bound on what one service may pull in; real schemas hold a few dozen files


class ReflectionError(Exception):
    """The replica has no reflection, or answered it with an error; the message says which."""


async def fetch_files(
    channel: grpc.aio.Channel, symbol: str, *, timeout: float
) -> list[descriptor_pb2.FileDescriptorProto]:
    """The file defining `symbol` and every file it imports, each once, imports before importers."""
    last: grpc.aio.AioRpcError | None = None
    for method in REFLECTION_METHODS:
        try:
            return await _fetch(channel, method, symbol, timeout)
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.UNIMPLEMENTED:
                raise  # the replica could not be asked (UNAVAILABLE ...): the caller tells these apart
            last = exc
    assert last is not None
    raise ReflectionError("the plugin does not serve grpc.reflection (v1 or v1alpha)")


async def _fetch(
    channel: grpc.aio.Channel, method: str, symbol: str, timeout: float
) -> list[descriptor_pb2.FileDescriptorProto]:
    requests: asyncio.Queue[rpb.ServerReflectionRequest | None] = asyncio.Queue()

    async def outgoing() -> AsyncIterator[rpb.ServerReflectionRequest]:
        while (request := await requests.get()) is not None:
            yield request

    stream = channel.stream_stream(
        method,
        request_serializer=rpb.ServerReflectionRequest.SerializeToString,
        response_deserializer=rpb.ServerReflectionResponse.FromString,
    )
    call = stream(outgoing(), timeout=timeout)
    answers = call.__aiter__()

    async def ask(request: rpb.ServerReflectionRequest) -> None:
        requests.put_nowait(request)
        try:
            response: rpb.ServerReflectionResponse = await anext(answers)
        except StopAsyncIteration:
            raise ReflectionError("the plugin's reflection stream ended without an answer") from None
        if response.HasField("error_response"):
            error = response.error_response
            raise ReflectionError(f"reflection: {error.error_message or f'error {error.error_code}'}")
        _take(response, files)

    files: dict[str, descriptor_pb2.FileDescriptorProto] = {}
    try:
        await ask(rpb.ServerReflectionRequest(file_containing_symbol=symbol))
        while missing := _missing(files):
            name = missing[0]
            local = _well_known(name)
            if local is not None:
                files[name] = local
                continue
            await ask(rpb.ServerReflectionRequest(file_by_filename=name))
            if name not in files:
                raise ReflectionError(f"the plugin's reflection did not return {name!r}")
    finally:
        requests.put_nowait(None)
        call.cancel()
    return _ordered(files)


def _take(response: rpb.ServerReflectionResponse, files: dict[str, descriptor_pb2.FileDescriptorProto]) -> None:
    for raw in response.file_descriptor_response.file_descriptor_proto:
        proto = descriptor_pb2.FileDescriptorProto.FromString(raw)
        files.setdefault(proto.name, proto)
        if len(files) > _MAX_FILES:
            raise ReflectionError(f"the schema pulls in more than {_MAX_FILES} files")


def _missing(files: dict[str, descriptor_pb2.FileDescriptorProto]) -> list[str]:
    return sorted({dep for proto in files.values() for dep in proto.dependency if dep not in files})


def _well_known(name: str) -> descriptor_pb2.FileDescriptorProto | None:
    if not name.startswith("google/protobuf/"):
        return None
    try:
        found = descriptor_pool.Default().FindFileByName(name)
    except KeyError:
        return None
    proto = descriptor_pb2.FileDescriptorProto()
    found.CopyToProto(proto)
    return proto


def _ordered(files: dict[str, descriptor_pb2.FileDescriptorProto]) -> list[descriptor_pb2.FileDescriptorProto]:
    """Imports before the files that import them, as DescriptorPool.Add needs."""
    done: dict[str, descriptor_pb2.FileDescriptorProto] = {}

    def visit(name: str, path: tuple[str, ...]) -> None:
        if name in done:
            return
        if name in path:
            raise ReflectionError(f"import cycle through {name!r}")
        for dep in files[name].dependency:
            visit(dep, (*path, name))
        done[name] = files[name]

    for name in sorted(files):
        visit(name, ())
    return list(done.values())
