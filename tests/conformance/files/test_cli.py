"""`upf plugin files-local|files-s3|files-gcs`: their own options in --help, and mistakes stopped with a
message that names the option, never a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

UPF = str(Path(sys.executable).parent / "upf")


def upf(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([UPF, *args], capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("files-local", ["--root", "--http-port", "--public-url", "--signing-secret", "UPF_FILES_ROOT"]),
        ("files-s3", ["--bucket", "--endpoint", "--part-size-mib", "UPF_FILES_S3_ENDPOINT", "MinIO"]),
        ("files-gcs", ["--bucket", "--api-root", "--service-file", "GOOGLE_APPLICATION_CREDENTIALS"]),
    ],
)
def test_help_lists_each_plugins_options(name: str, options: list[str]) -> None:
    result = upf("plugin", name, "--help")
    assert result.returncode == 0
    for option in ["--registry", "--port", *options]:
        assert option in result.stdout, option


def test_the_plugin_list_names_the_files_plugins() -> None:
    assert "files-local" in upf("plugin", "--help").stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["files-s3"], "--bucket (or $UPF_FILES_S3_BUCKET) is required"),
        (["files-gcs"], "--bucket (or $UPF_FILES_GCS_BUCKET) is required"),
        (["files-local", "--http-port", "99999"], "argument --http-port: 99999 is not a port"),
        (["files-s3", "--bucket", "b", "--part-size-mib", "1"], "between 5 MiB and 512 MiB"),
    ],
)
def test_mistakes_stop_with_a_message(args: list[str], message: str) -> None:
    result = upf("plugin", *args)
    assert result.returncode in (1, 2)
    assert message in result.stderr
    assert "Traceback" not in result.stderr
