"""Running the JavaScript clients of tests/js from pytest: one Node process per call, JSON out."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterable
from typing import Any

import pytest

from tests.support.processes import ROOT

JS_DIR = ROOT / "tests" / "js"
NODE_TIMEOUT = 30.0


def require_node(packages: Iterable[str]) -> str:
    """The node binary, failing (not skipping) when it or one of the npm packages is missing."""
    path = shutil.which("node")
    if path is None:
        pytest.fail("node is not on PATH: the JavaScript client tests need Node 20; then run `make test`")
    for package in packages:
        if not (JS_DIR / "node_modules" / package / "package.json").is_file():
            pytest.fail(f"{JS_DIR}/node_modules lacks {package}: run `make test` (it runs npm ci in tests/js)")
    return path


def node_call(node: str, script: str, client: str, url: str, schema: str, spec: dict[str, Any]) -> dict[str, Any]:
    """Run `node script client url schema spec-json` in tests/js and return the JSON it prints."""
    args = [node, str(JS_DIR / script), client, url, schema, json.dumps(spec)]
    done = subprocess.run(args, cwd=JS_DIR, capture_output=True, text=True, timeout=NODE_TIMEOUT, check=False)
    assert done.returncode == 0, f"{client} call failed (exit {done.returncode}):\n{done.stderr}"
    result: dict[str, Any] = json.loads(done.stdout)
    return result
