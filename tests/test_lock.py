"""The Python environment is the one uv.lock describes, and a change to pyproject.toml without `make lock`
is caught before it reaches anyone else."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
UV = Path(sys.executable).parent / "uv"


def locked_versions() -> dict[str, str]:
    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    return {canonicalize_name(p["name"]): p["version"] for p in lock["package"] if p["name"] != "upf"}


def lock_check(project: Path, *, offline: bool = True) -> subprocess.CompletedProcess[str]:
    # --offline: a pyproject.toml that the lock matches needs no index. One that changed does: uv resolves
    # again to say what changed, and on a machine whose uv cache is empty that needs the index.
    return subprocess.run(
        [str(UV), "lock", "--check", *(["--offline"] if offline else []), "--python", sys.executable],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=60,
        # The caller's environment (certificates, proxies, index settings), as `make check` runs uv.
        env=os.environ | {"UV_PYTHON_DOWNLOADS": "never"},
    )


def copy_project(dest: Path) -> Path:
    for name in ("pyproject.toml", "uv.lock", "README.md"):
        shutil.copy(ROOT / name, dest / name)
    return dest


def test_every_installed_package_is_at_its_locked_version() -> None:
    locked = locked_versions()
    installed = {
        canonicalize_name(d.metadata["Name"]): d.version
        for d in metadata.distributions()
        if canonicalize_name(d.metadata["Name"]) != "upf"
    }
    wrong = {name: (version, locked.get(name)) for name, version in installed.items() if locked.get(name) != version}
    assert wrong == {}, "installed (version, locked version) differ; run `make install`"


def test_the_makefile_bootstraps_the_uv_that_the_lock_pins() -> None:
    makefile = (ROOT / "Makefile").read_text()
    pinned = re.search(r"^UV_VERSION := (\S+)$", makefile, re.MULTILINE)
    assert pinned is not None
    assert pinned.group(1) == locked_versions()["uv"]


def test_the_lock_matches_pyproject(tmp_path: Path) -> None:
    result = lock_check(copy_project(tmp_path))
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    ("old", "new"),
    [
        # A new runtime dependency (one the lock already holds as a transitive one, so no index is asked).
        ('  "prometheus-client>=0.26,<1",\n', '  "prometheus-client>=0.26,<1",\n  "anyio>=4",\n'),
        # A range widened: the locked version still fits it, but the lock records the old range.
        ('"pyyaml>=6.0.3,<7"', '"pyyaml>=6.0.2,<7"'),
        # A dependency dropped from an extra.
        ('  "respx==0.23.1",\n', ""),
    ],
    ids=["dependency-added", "range-changed", "dependency-dropped"],
)
def test_the_lock_check_fails_when_pyproject_changes_without_make_lock(tmp_path: Path, old: str, new: str) -> None:
    project = copy_project(tmp_path)
    pyproject = project / "pyproject.toml"
    text = pyproject.read_text()
    assert old in text
    pyproject.write_text(text.replace(old, new))
    result = lock_check(project, offline=False)
    assert result.returncode != 0
    assert "needs to be updated" in result.stderr
