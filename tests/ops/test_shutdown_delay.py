"""shutdownDelay: after SIGTERM the gateway fails /readyz while it still serves, and only then drains.

That order is what lets a proxy's health check (Traefik's, a Kubernetes readiness probe) take a gateway
out of rotation before its port closes; tests/ops/test_traefik.py shows the result through Traefik.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import httpx
import yaml

from tests.support.processes import Process, _died, free_port, wait_until

UPF = str(Path(sys.executable).parent / "upf")


def start(tmp_path: Path, delay: float) -> tuple[Process, str]:
    port = free_port()
    config = tmp_path / f"gateway-{port}.yaml"
    config.write_text(yaml.safe_dump({"httpPort": port, "grpcPort": 0, "accessLog": False, "shutdownDelay": delay}))
    env = {key: value for key, value in os.environ.items() if not key.startswith("UPF_")}
    process = Process([UPF, "gateway", "--config", str(config)], env=env, log=tmp_path / f"gateway-{port}.log")
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        try:
            return httpx.get(f"{url}/readyz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(lambda: ready() or (not process.alive() and _died(process)), timeout=60, what="the gateway")
    return process, url


def answers(url: str) -> httpx.Response | None:
    try:
        return httpx.get(url, timeout=1)
    except httpx.HTTPError:
        return None


def test_a_stopping_gateway_fails_readyz_while_it_still_serves_then_closes(tmp_path: Path) -> None:
    process, url = start(tmp_path, delay=2.0)
    try:
        process.popen.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        readyz = wait_until(
            lambda: (r := answers(f"{url}/readyz")) is not None and r.status_code == 503 and r,
            timeout=5,
            what="/readyz to fail",
        )
        assert readyz.json() == {"status": "not ready", "reason": "shutting down"}
        # Still serving meanwhile: the process answers, and the port is open.
        health = answers(f"{url}/healthz")
        assert health is not None
        assert health.status_code == 200
        wait_until(lambda: answers(f"{url}/healthz") is None, timeout=15, what="the port to close")
        assert time.monotonic() - signalled >= 2.0
        assert process.popen.wait(timeout=15) == 0
    finally:
        process.stop()
