"""What a newcomer does first: `upf --help`, `make run`'s `upf run`, and the README's curl call."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.support.processes import ROOT, free_port, run_gateway, wait_until

UPF = str(Path(sys.executable).parent / "upf")


def upf(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([UPF, *args], capture_output=True, text=True, timeout=30, env=env)


def test_readme_starts_with_the_two_commands() -> None:
    readme = (ROOT / "README.md").read_text()
    first_block = re.search(r"```\w*\n(.*?)```", readme, re.S)
    assert first_block is not None
    assert first_block.group(1).split("\n")[:-1] == ["make run", "make test"]


def test_help_explains_every_command() -> None:
    top = upf("--help")
    assert top.returncode == 0
    assert "run" in top.stdout
    assert "gateway" in top.stdout
    for command in ("run", "gateway"):
        result = upf(command, "--help")
        assert result.returncode == 0
        for word in ("--config", "--http-port", "--grpc-port", "upstreams:", "UPF_"):
            assert word in result.stdout + top.stdout, (command, word)


def test_bad_config_stops_start_up_with_the_key_and_no_traceback(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("httpPort: 8080\ncircuitBreaker:\n  failureTreshold: 3\n")
    result = upf("gateway", "--config", str(config))
    assert result.returncode == 2
    assert f"config file {config}: circuitBreaker.failureTreshold: unknown key" in result.stderr
    assert "Traceback" not in result.stderr


def test_readme_login_and_curls_answer_json_and_grpc_web(tmp_path: Path) -> None:
    readme = (ROOT / "README.md").read_text()
    login = next(line for line in readme.splitlines() if line.startswith("TOKEN=$(curl"))
    command = next(line for line in readme.splitlines() if line.startswith("printf") and "curl" in line)
    json_call = next(line for line in readme.splitlines() if line.startswith("curl") and "Echo/Say" in line)
    # The embedded registry on a free port: a developer's own registry may hold 50052.
    with run_gateway({"registryUrl": f"127.0.0.1:{free_port()}"}, tmp_path, command="run") as gateway:
        script = f"{login}\n{command}".replace(" | od -c", "")
        pipeline = script.replace("127.0.0.1:8080", f"127.0.0.1:{gateway.http_port}")
        expected = b"\0\0\0\0\x0d\n\x0becho: hello" + b"\x80\0\0\0\x10grpc-status: 0\r\n"

        def curl() -> bytes:
            return subprocess.run(["bash", "-c", pipeline], capture_output=True, timeout=30, check=True).stdout

        # The demo plugin registers right after start-up; until its first health check passes the
        # gateway does not route to it yet (UNIMPLEMENTED, trailers-only).
        wait_until(lambda: curl() == expected, timeout=20, what="the demo plugin to be routed")

        # The same call as plain JSON: the README's first example, exactly as printed there.
        json_pipeline = f"{login}\n{json_call} -s".replace("127.0.0.1:8080", f"127.0.0.1:{gateway.http_port}")
        answer = subprocess.run(["bash", "-c", json_pipeline], capture_output=True, timeout=30, check=True).stdout
        assert answer == b'{"text":"echo: hello"}'

        # REST from the orders plugin's annotations: the README's create and list, as printed there.
        create, listing = [
            line for line in readme.splitlines() if line.startswith("curl") and "/api/v1/orders" in line
        ][:2]

        def rest(line: str) -> Any:
            script = f"{login}\n{line} -s".replace("127.0.0.1:8080", f"127.0.0.1:{gateway.http_port}")
            return json.loads(
                subprocess.run(["bash", "-c", script], capture_output=True, timeout=30, check=True).stdout
            )

        created = wait_until(lambda: rest(create).get("order"), timeout=20, what="the orders plugin to be routed")
        assert (created["customerId"], created["totalMinor"]) == ("c-1", "900")
        assert created["id"] in [order["id"] for order in rest(listing)["orders"]]
