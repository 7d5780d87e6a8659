"""Generated protobuf code (made at run time) and gRPC / gRPC-Web frames: request bodies and response checks."""

from __future__ import annotations

import re
import struct
import subprocess
import sys
from pathlib import Path
from types import ModuleType

HERE = Path(__file__).resolve().parent
PROTO = HERE / "bench.proto"
SERVICE = "bench.v1.Echo"
UNARY = f"/{SERVICE}/Unary"
SERVER_STREAM = f"/{SERVICE}/ServerStream"
TRAILER_FLAG = 0x80
_PREFIX = struct.Struct(">BI")


class CheckFailed(Exception):
    """A response is not what a correct server sends."""


def generate(gen_dir: Path) -> ModuleType:
    """Generate bench_pb2.py and bench_pb2_grpc.py into gen_dir and return bench_pb2."""
    gen_dir.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{HERE}",
            f"--python_out={gen_dir}",
            f"--grpc_python_out={gen_dir}",
            str(PROTO),
        ],
        check=True,
        timeout=60,
    )
    sys.path.insert(0, str(gen_dir))
    import bench_pb2  # type: ignore[import-not-found]

    module: ModuleType = bench_pb2
    return module


def frame(payload: bytes, flags: int = 0) -> bytes:
    return _PREFIX.pack(flags, len(payload)) + payload


def parse_frames(buf: bytes) -> list[tuple[int, bytes]]:
    frames, offset = [], 0
    while offset + 5 <= len(buf):
        flags, length = _PREFIX.unpack_from(buf, offset)
        end = offset + 5 + length
        if end > len(buf):
            raise CheckFailed(f"frame at byte {offset} announces {length} B but only {len(buf) - offset - 5} follow")
        frames.append((flags, buf[offset + 5 : end]))
        offset = end
    if offset != len(buf):
        raise CheckFailed(f"{len(buf) - offset} stray bytes after the last frame")
    return frames


def _describe(payloads: list[bytes]) -> str:
    sizes = sorted({len(p) for p in payloads})
    return f"{len(payloads)} message(s) of {', '.join(map(str, sizes)) or '-'} B"


def check_grpc(body: bytes, headers: str, expected: list[bytes]) -> str:
    """Native gRPC (HTTP/2): data frames equal `expected`, trailers carry grpc-status 0."""
    frames = parse_frames(body)
    payloads = [p for _, p in frames]
    if payloads != expected:
        raise CheckFailed(f"got {_describe(payloads)}, expected {_describe(expected)}")
    statuses = re.findall(r"^grpc-status:\s*(\S*)\s*$", headers, re.M | re.I)
    if statuses != ["0"]:
        raise CheckFailed(f"grpc-status in headers/trailers: {statuses}")
    return f"{_describe(payloads)} as expected; HTTP/2 trailer grpc-status: 0"


def check_grpc_web(body: bytes, headers: str, expected: list[bytes]) -> str:
    """gRPC-Web: data frames equal `expected`, then exactly one trailer frame, last, with grpc-status 0."""
    frames = parse_frames(body)
    data = [p for flags, p in frames if not flags & TRAILER_FLAG]
    trailers = [p for flags, p in frames if flags & TRAILER_FLAG]
    if not trailers:
        status = re.findall(r"^grpc-status:.*$", headers, re.M | re.I)
        raise CheckFailed(f"no trailer frame (status in headers: {status}); body {len(body)} B")
    if len(trailers) != 1 or not frames[-1][0] & TRAILER_FLAG:
        raise CheckFailed(f"{len(trailers)} trailer frames, last frame flags {frames[-1][0]:#x}")
    if data != expected:
        raise CheckFailed(f"got {_describe(data)}, expected {_describe(expected)}")
    fields = {}
    for line in trailers[0].decode("latin-1").split("\r\n"):
        if line:
            key, _, value = line.partition(":")
            fields[key.strip().lower()] = value.strip()
    if fields.get("grpc-status") != "0":
        raise CheckFailed(f"trailer frame {trailers[0]!r}")
    return f"{_describe(data)} as expected; trailer frame {trailers[0]!r}"
