"""Regenerate the Python code for every .proto under proto/upf.

Usage: python proto/generate.py [--out DIR]

The generated modules live beside their .proto files (proto/upf/<area>/v1/) so that the import path
`upf.<area>.v1` mirrors the proto package. tests/test_proto_fresh.py runs this into a temporary
directory and fails when the checked-in code differs: run `make proto` after editing a .proto.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from google.api import annotations_pb2
from grpc_tools import protoc

PROTO_ROOT = Path(__file__).resolve().parent
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi")


def proto_files(root: Path = PROTO_ROOT) -> list[Path]:
    return sorted(root.glob("upf/**/*.proto"))


def generate(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    sources = [str(p.relative_to(PROTO_ROOT)) for p in proto_files()]
    well_known = Path(protoc.__file__).parent / "_proto"
    # google/api/annotations.proto (REST annotations) from googleapis-common-protos, beside its module.
    googleapis = Path(annotations_pb2.__file__).parents[2]
    bin_dir = Path(sys.executable).parent  # mypy-protobuf's plugins sit beside this interpreter
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"-I{googleapis}",
        f"--plugin=protoc-gen-mypy={bin_dir / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={bin_dir / 'protoc-gen-mypy_grpc'}",
        f"--python_out={out}",
        f"--mypy_out={out}",
        f"--grpc_python_out={out}",
        f"--mypy_grpc_out={out}",
        *sources,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    # Every directory on the way to a generated module is a regular package.
    for module in out.glob("upf/**/*_pb2.py"):
        directory = module.parent
        while directory != out:
            (directory / "__init__.py").touch()
            directory = directory.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=PROTO_ROOT, help="output root (default: proto/)")
    args = parser.parse_args()
    if args.out.resolve() == PROTO_ROOT:
        # Drop stale output first, so that a deleted .proto leaves no module behind.
        for path in PROTO_ROOT.glob("upf/**/*"):
            if path.name.endswith(GENERATED_SUFFIXES):
                path.unlink()
    generate(args.out)
    print(f"generated code for {len(proto_files())} proto file(s) under {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
