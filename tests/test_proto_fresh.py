from __future__ import annotations

import filecmp
import subprocess
import sys
from pathlib import Path

from tests.support.processes import ROOT

GENERATED = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi", "__init__.py")


def test_generated_code_matches_proto(tmp_path: Path) -> None:
    subprocess.run([sys.executable, str(ROOT / "proto" / "generate.py"), "--out", str(tmp_path)], check=True)
    fresh = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.name.endswith(GENERATED))
    checked_in = sorted(
        p.relative_to(ROOT / "proto") for p in (ROOT / "proto").rglob("*") if p.name.endswith(GENERATED)
    )
    assert fresh, "no code was generated"
    assert fresh == checked_in, "generated files differ from proto/: run `make proto`"
    stale = [str(p) for p in fresh if not filecmp.cmp(tmp_path / p, ROOT / "proto" / p, shallow=False)]
    assert not stale, f"stale generated code (run `make proto`): {stale}"
