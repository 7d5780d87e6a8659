"""The standard gRPC interop server (grpc.testing.TestService), as the gRPC-Web interop cases need it.

    python -m tests.support.interop_server --port 0 --gen-dir DIR

prints `PORT <n>` once it listens. `generate(DIR)` compiles tests/support/proto/grpc/testing/*.proto
under the path they have in grpc/grpc (src/proto/grpc/testing/, hence the Python modules
src.proto.grpc.testing.*_pb2, which cannot clash with the grpc package) and writes the descriptor
set interop.binpb for the JavaScript clients.

What it does, as grpc/grpc doc/interop-test-descriptions.md asks of a server:
- every call echoes the request metadata `x-grpc-test-echo-initial` as initial metadata and
  `x-grpc-test-echo-trailing-bin` as trailing metadata;
- EmptyCall answers an Empty;
- UnaryCall answers a payload of response_size zero bytes, or ends with response_status;
- StreamingOutputCall sends one response per response_parameters entry, of that size, each after
  interval_us, then ends with response_status (OK when unset);
- UnimplementedCall and all that is not listed here answer UNIMPLEMENTED (UnimplementedService is
  not registered at all).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import grpc

from tests.support.probe import compile_protos, serve_on

PROTO_DIR = Path(__file__).resolve().parent / "proto" / "grpc" / "testing"
IMPORT_PATH = "src/proto/grpc/testing"
PROTO_FILES = [f"{IMPORT_PATH}/{name}.proto" for name in ("empty", "messages", "test")]
DESCRIPTOR_SET = "interop.binpb"

ECHO_INITIAL = "x-grpc-test-echo-initial"
ECHO_TRAILING = "x-grpc-test-echo-trailing-bin"


def generate(out: Path) -> Path:
    """Write src/proto/grpc/testing/{empty,messages,test}_pb2(_grpc).py and interop.binpb under out."""
    return compile_protos(out, PROTO_FILES, DESCRIPTOR_SET, include=f"{IMPORT_PATH}={PROTO_DIR}")


def load(gen_dir: Path) -> SimpleNamespace:
    """Import the generated modules from gen_dir: .empty_pb2, .messages_pb2, .test_pb2, .test_pb2_grpc."""
    if str(gen_dir) not in sys.path:
        sys.path.insert(0, str(gen_dir))
    package = IMPORT_PATH.replace("/", ".")
    names = ("empty_pb2", "messages_pb2", "test_pb2", "test_pb2_grpc")
    return SimpleNamespace(**{name: importlib.import_module(f"{package}.{name}") for name in names})


def build_servicer(modules: SimpleNamespace) -> Any:
    empty_pb2, messages_pb2 = modules.empty_pb2, modules.messages_pb2

    async def echo_metadata(context: Any) -> None:
        received = dict(context.invocation_metadata() or ())
        if ECHO_INITIAL in received:
            await context.send_initial_metadata([(ECHO_INITIAL, received[ECHO_INITIAL])])
        if ECHO_TRAILING in received:
            context.set_trailing_metadata([(ECHO_TRAILING, received[ECHO_TRAILING])])

    async def echo_status(request: Any, context: Any) -> None:
        if request.HasField("response_status") and request.response_status.code != 0:
            status = request.response_status
            code = next(c for c in grpc.StatusCode if c.value[0] == status.code)
            await context.abort(code, status.message)

    def payload(size: int) -> Any:
        return messages_pb2.Payload(type=messages_pb2.COMPRESSABLE, body=bytes(size))

    base: Any = modules.test_pb2_grpc.TestServiceServicer

    class TestService(base):  # type: ignore[misc]
        async def EmptyCall(self, request: Any, context: Any) -> Any:
            await echo_metadata(context)
            return empty_pb2.Empty()

        async def UnaryCall(self, request: Any, context: Any) -> Any:
            await echo_metadata(context)
            await echo_status(request, context)
            return messages_pb2.SimpleResponse(payload=payload(request.response_size))

        async def StreamingOutputCall(self, request: Any, context: Any) -> Any:
            await echo_metadata(context)
            for parameters in request.response_parameters:
                if parameters.interval_us:
                    await asyncio.sleep(parameters.interval_us / 1_000_000)
                yield messages_pb2.StreamingOutputCallResponse(payload=payload(parameters.size))
            await echo_status(request, context)

        async def UnimplementedCall(self, request: Any, context: Any) -> Any:
            # The generated base class raises NotImplementedError; a real interop server has no such
            # method at all, which a client sees as UNIMPLEMENTED.
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, "Method not found: UnimplementedCall")

    return TestService()


async def serve(port: int, gen_dir: Path) -> None:
    modules = load(gen_dir)
    server = grpc.aio.server()
    modules.test_pb2_grpc.add_TestServiceServicer_to_server(build_servicer(modules), server)
    await serve_on(server, port)


def main() -> None:
    parser = argparse.ArgumentParser(description="Serve grpc.testing.TestService for the interop tests.")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--gen-dir", type=Path, required=True)
    args = parser.parse_args()
    generate(args.gen_dir)
    asyncio.run(serve(args.port, args.gen_dir))


if __name__ == "__main__":
    main()
