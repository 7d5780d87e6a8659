"""Running the JavaScript clients of tests/js from pytest: one Node process per call, JSON out; one for
a list of calls (node_batch); or one for a whole test, driven by commands (NodeSession)."""

from __future__ import annotations

import json
import queue
import shutil
import subprocess
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
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


def run_batch(
    node: str, script: str, args: Sequence[str], calls: list[dict[str, Any]], timeout: float = NODE_TIMEOUT
) -> subprocess.CompletedProcess[str]:
    """Run `node script args...` in tests/js with the calls as a JSON list on standard input (no size
    limit, unlike an argument): one Node process for many calls. Raises TimeoutExpired past `timeout`."""
    return subprocess.run(
        [node, str(JS_DIR / script), *args],
        cwd=JS_DIR,
        input=json.dumps(calls),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def node_batch(node: str, script: str, args: Sequence[str], calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """run_batch, asserting that it worked; returns the JSON list the script prints."""
    done = run_batch(node, script, args, calls)
    assert done.returncode == 0, f"{script} {' '.join(args[:1])} failed (exit {done.returncode}):\n{done.stderr}"
    results: list[dict[str, Any]] = json.loads(done.stdout)
    return results


class NodeSession:
    """A Node script that runs for a whole test, driven by JSON lines: one command in, one answer out."""

    def __init__(self, node: str, script: str, args: Sequence[str], log: Path) -> None:
        self._log = log.open("wb")
        self.process = subprocess.Popen(
            [node, str(JS_DIR / script), *args],
            cwd=JS_DIR,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
        )
        self.log = log
        self._answers: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._answers.put(line)
        self._answers.put(None)  # the script ended

    def ask(self, op: str, *, timeout: float = NODE_TIMEOUT, **command: Any) -> Any:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps({"op": op, **command}) + "\n")
        self.process.stdin.flush()
        try:
            line = self._answers.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"no answer to {op} within {timeout} s:\n{self.log.read_text()}") from None
        assert line is not None, f"the script ended before answering {op}:\n{self.log.read_text()}"
        return json.loads(line)

    def stop(self) -> None:
        if self.process.stdin is not None and not self.process.stdin.closed:
            self.process.stdin.close()  # the script closes its client and exits
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._reader.join(5)
        if self.process.stdout is not None:
            self.process.stdout.close()
        self._log.close()


@contextmanager
def node_session(node: str, script: str, args: Sequence[str], log: Path) -> Iterator[NodeSession]:
    session = NodeSession(node, script, args, log)
    try:
        yield session
    finally:
        session.stop()
