"""The accept.v1.Probe test service: generated at test time, served by a real grpc.aio server.

    python -m tests.support.probe --port 0 --gen-dir DIR [--compress]

prints `PORT <n>` once it listens. `generate(DIR)` writes the Python modules and a descriptor set
(probe.binpb) for the JavaScript clients.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import importlib
import sys
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc

PROTO_DIR = Path(__file__).resolve().parent / "proto"
PROTO_FILE = "accept/v1/probe.proto"


def compile_protos(out: Path, files: Sequence[str], descriptor_set: str, *, include: str = str(PROTO_DIR)) -> Path:
    """grpc_tools' protoc: Python modules and gRPC stubs for `files` under out, and out/descriptor_set
    (with the imports) for the JavaScript clients. `include` is the import root, or VIRTUAL=DISK."""
    from grpc_tools import protoc

    out.mkdir(parents=True, exist_ok=True)
    well_known = Path(protoc.__file__).parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{include}",
        f"-I{well_known}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        "--include_imports",
        f"--descriptor_set_out={out / descriptor_set}",
        *files,
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed for {', '.join(files)}")
    return out


def generate(out: Path) -> Path:
    """Write probe_pb2(.py/_grpc.py) under out/accept/v1 and out/probe.binpb; returns out."""
    return compile_protos(out, [PROTO_FILE], "probe.binpb")


def load(gen_dir: Path) -> tuple[Any, Any]:
    """Import the generated modules (probe_pb2, probe_pb2_grpc) from gen_dir."""
    if str(gen_dir) not in sys.path:
        sys.path.insert(0, str(gen_dir))
    return importlib.import_module("accept.v1.probe_pb2"), importlib.import_module("accept.v1.probe_pb2_grpc")


def _metadata(pairs: Any) -> list[tuple[str, str | bytes]]:
    return [(k, base64.b64decode(v) if k.endswith("-bin") else v) for k, v in pairs.items()]


def build_servicer(pb2: Any, pb2_grpc: Any) -> Any:
    from google.rpc import status_pb2  # type: ignore[import-untyped]

    observations: dict[str, dict[str, int]] = defaultdict(lambda: {"started": 0, "cancelled": 0, "finished": 0})
    releases: dict[str, asyncio.Semaphore] = defaultdict(lambda: asyncio.Semaphore(0))

    def reply(request: Any, context: Any, index: int = 0, requests: int = 0) -> Any:
        received = {}
        for key, value in context.invocation_metadata() or ():
            received[key] = base64.b64encode(value).decode() if isinstance(value, bytes) else value
        remaining = context.time_remaining()
        payload = b"r" * request.response_bytes if request.response_bytes else request.payload
        return pb2.CallReply(
            payload=payload,
            metadata=received,
            deadline_remaining=-1.0 if remaining is None else remaining,
            index=index,
            requests=requests,
        )

    async def finish(request: Any, context: Any) -> None:
        if request.trailers:
            context.set_trailing_metadata(_metadata(request.trailers))
        if request.fail_code:
            code = next(c for c in grpc.StatusCode if c.value[0] == request.fail_code)
            if request.details:
                status = status_pb2.Status(code=request.fail_code, message=request.fail_message)
                context.set_trailing_metadata(
                    [*_metadata(request.trailers), ("grpc-status-details-bin", status.SerializeToString())]
                )
            await context.abort(code, request.fail_message)

    async def begin(request: Any, context: Any) -> None:
        if request.key:
            observations[request.key]["started"] += 1
        if request.headers or request.send_headers_first:
            await context.send_initial_metadata(_metadata(request.headers))
        if request.wait_release_first:
            await releases[request.key].acquire()
        if request.sleep_ms:
            await asyncio.sleep(request.sleep_ms / 1000)

    class Probe(pb2_grpc.ProbeServicer):  # type: ignore[misc]
        async def Unary(self, request: Any, context: Any) -> Any:
            try:
                await begin(request, context)
                await finish(request, context)
                return reply(request, context)
            except asyncio.CancelledError:
                if request.key:
                    observations[request.key]["cancelled"] += 1
                raise
            finally:
                if request.key:
                    observations[request.key]["finished"] += 1

        async def ServerStream(self, request: Any, context: Any) -> Any:
            try:
                await begin(request, context)
                for index in range(request.count):
                    if request.fail_code and request.fail_after == index:
                        break
                    yield reply(request, context, index)
                    if request.wait_release:
                        await releases[request.key].acquire()
                await finish(request, context)
            except (asyncio.CancelledError, GeneratorExit):
                # A stream cancelled while suspended at its yield is closed with GeneratorExit.
                if request.key:
                    observations[request.key]["cancelled"] += 1
                raise
            finally:
                if request.key:
                    observations[request.key]["finished"] += 1

        async def ClientStream(self, request_iterator: Any, context: Any) -> Any:
            payload = b""
            count = 0
            last = pb2.CallRequest()
            async for request in request_iterator:
                payload += request.payload
                count += 1
                last = request
            await finish(last, context)
            return pb2.CallReply(payload=payload, requests=count)

        async def Bidi(self, request_iterator: Any, context: Any) -> Any:
            first = [(k, v) for k, v in context.invocation_metadata() or () if k == "x-headers-first"]
            if first:
                await context.send_initial_metadata(first)
            count = 0
            async for request in request_iterator:
                count += 1
                if request.fail_code:
                    await finish(request, context)
                yield reply(request, context, index=count - 1, requests=count)

        async def Release(self, request: Any, context: Any) -> Any:
            releases[request.key].release()
            return pb2.Observation(**observations[request.key])

        async def Observe(self, request: Any, context: Any) -> Any:
            return pb2.Observation(**observations[request.key])

    return Probe()


async def serve_on(server: Any, port: int) -> None:
    """Listen on 127.0.0.1:port (0: a free one), say `PORT <n>` on stdout (what the tests' start-up
    waits for: tests/support/processes.py) and serve until stopped."""
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print(f"PORT {bound}", flush=True)
    await server.wait_for_termination()


async def serve(port: int, gen_dir: Path, compress: bool) -> None:
    pb2, pb2_grpc = load(gen_dir)
    server = grpc.aio.server(compression=grpc.Compression.Gzip if compress else None)
    pb2_grpc.add_ProbeServicer_to_server(build_servicer(pb2, pb2_grpc), server)
    # Reflection, as every SDK plugin serves it: the gateway's JSON (Connect) routes learn the schema from it.
    from grpc_reflection.v1alpha import reflection

    reflection.enable_server_reflection(["accept.v1.Probe", reflection.SERVICE_NAME], server)
    await serve_on(server, port)


def main() -> None:
    parser = argparse.ArgumentParser(description="Serve accept.v1.Probe for tests.")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--gen-dir", type=Path, required=True)
    parser.add_argument("--compress", action="store_true", help="gzip every response message")
    args = parser.parse_args()
    generate(args.gen_dir)
    asyncio.run(serve(args.port, args.gen_dir, args.compress))


if __name__ == "__main__":
    main()
