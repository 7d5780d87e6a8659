"""`upf manifest validate`: what a plugin author sees for valid, invalid and unreadable files.

Each invalid manifest in data/ sits next to a `.expected` file holding exactly what the command prints
for it (run from the repository root), so a change in wording shows up as a diff.
"""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest

from cli.main import main
from manifests.cli import validate_files
from tests.support.processes import ROOT

DATA = Path(__file__).parent / "data"
INVALID = sorted(p.relative_to(ROOT).as_posix() for p in DATA.iterdir() if p.suffix in (".yaml", ".json"))
DEMO = "plugins/demo/manifest.yaml"
UPF = str(Path(sys.executable).parent / "upf")


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exited:
        main(["manifest", "validate", *args])
    out, err = capsys.readouterr()
    assert isinstance(exited.value.code, int)
    return exited.value.code, out, err


@pytest.fixture(autouse=True)
def _from_the_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)  # paths are printed as given, relative to where the command runs


def test_a_valid_manifest_prints_ok(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, DEMO) == (0, f"{DEMO}: ok\n", "")


@pytest.mark.parametrize("path", INVALID)
def test_each_problem_is_one_line_with_file_line_column_and_field(
    capsys: pytest.CaptureFixture[str], path: str
) -> None:
    expected = (ROOT / f"{path}.expected").read_text()
    assert run(capsys, path) == (1, "", expected)


def test_the_brief_example_reads_as_promised(capsys: pytest.CaptureFixture[str]) -> None:
    _, _, err = run(capsys, "tests/manifests/data/requires.yaml")
    assert 'tests/manifests/data/requires.yaml:12:5: requires[2].version: "^1.x.y" is not a semver range\n' in err


def test_unreadable_files_exit_2_and_the_others_are_still_checked(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    missing = str(tmp_path / "missing.yaml")
    status, out, err = run(capsys, missing, str(tmp_path), DEMO, "tests/manifests/data/empty.yaml")
    assert status == 2
    assert out == f"{DEMO}: ok\n"
    assert err == (
        f"{missing}: cannot be read: No such file or directory\n"
        f"{tmp_path}: cannot be read: Is a directory\n"
        "tests/manifests/data/empty.yaml: the file is empty; a manifest needs at least id, version, name, type\n"
    )


def test_a_file_that_is_not_utf8_is_invalid(tmp_path: Path) -> None:
    path = tmp_path / "manifest.yaml"
    path.write_bytes(b"id: caf\xe9\n")
    out, err = io.StringIO(), io.StringIO()
    assert validate_files([str(path)], out, err) == 1
    assert err.getvalue() == f"{path}: not UTF-8 text (byte 7); save the file as UTF-8\n"


def test_the_console_script_explains_itself_and_sets_the_exit_status() -> None:
    helped = subprocess.run([UPF, "manifest", "validate", "--help"], capture_output=True, text=True, timeout=30)
    assert helped.returncode == 0
    for words in ("FILE", "semver ranges", "exit status: 0 all valid, 1 a manifest is invalid, 2 a file cannot be"):
        assert words in helped.stdout
    assert "manifest" in subprocess.run([UPF, "--help"], capture_output=True, text=True, timeout=30).stdout
    checked = subprocess.run(
        [UPF, "manifest", "validate", DEMO, "tests/manifests/data/ui.yaml"],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
    )
    assert (checked.returncode, checked.stdout) == (1, f"{DEMO}: ok\n")
    assert checked.stderr == (ROOT / "tests/manifests/data/ui.yaml.expected").read_text()
    assert "Traceback" not in checked.stderr
