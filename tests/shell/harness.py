"""The shell tests' helpers: UI-only plugins (tests/shell/ui_plugin.py) as processes that can stop and
start again, and what /api/manifests says about them."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import httpx

from tests.support.processes import Gateway, Process, _died, free_port, wait_until
from tests.support.registry_process import credential_for

ISSUER = "http://gateway.shell.test"
FAST_REGISTRY = {"leaseTtl": 3, "health": {"interval": 0.2, "timeout": 0.5, "successesBeforeHealthy": 1}}
USER, PASSWORD = "demo", "demo-password"
ACCESS_TOKEN_TTL = 5  # seconds: the shell must refresh tokens while the browser test runs


def login_answers(gateway: Gateway) -> bool:
    r = httpx.post(f"{gateway.url}/api/auth/login", json={"username": "nobody", "password": "x"}, timeout=5)
    return r.status_code == 401


class UiPlugin:
    """tests/shell/ui_plugin.py as a process that can be stopped (SIGTERM: unregisters) and started again."""

    def __init__(self, plugin_id: str, title: str, dist: Path, registry: str, log_dir: Path, *extra: str) -> None:
        self.args = [
            sys.executable, "-m", "tests.shell.ui_plugin", "--registry", registry, "--id", plugin_id,
            "--title", title, "--dist", str(dist), "--http-port", str(free_port()), *extra,
        ]  # fmt: skip
        self.plugin_id = plugin_id
        self.log_dir = log_dir
        self.process: Process | None = None

    def start(self) -> None:
        env = {**os.environ, "UPF_REGISTRATION_CREDENTIAL": credential_for(self.plugin_id)}
        process = self.process = Process(self.args, env=env, log=self.log_dir / f"{self.plugin_id}-{free_port()}.log")
        wait_until(
            lambda: "PORT " in process.output() or (not process.alive() and _died(process)),
            what=f"{self.plugin_id} to serve",
        )

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
            self.process = None


def plugin_status(gateway: Gateway, plugin_id: str) -> dict[str, Any] | None:
    document = httpx.get(f"{gateway.url}/api/manifests", timeout=5).json()
    entry = next((p for p in document["plugins"] if p["id"] == plugin_id), None)
    return None if entry is None else entry["status"]


def ready(gateway: Gateway, plugin_id: str) -> bool:
    status = plugin_status(gateway, plugin_id)
    return status is not None and status["ready"] > 0 and status["health"] == "HEALTHY"


class PluginProcess:
    """`upf plugin NAME ...` registered with the shell tests' registry: stopped (SIGTERM: drains and
    unregisters) and started again, as an operator would."""

    def __init__(self, name: str, plugin_id: str, registry: str, log_dir: Path, *extra: str) -> None:
        upf = str(Path(sys.executable).parent / "upf")
        self.args = [upf, "plugin", name, "--registry", registry, "--drain-grace", "0.5", *extra]
        self.plugin_id = plugin_id
        self.log_dir = log_dir
        self.process: Process | None = None

    def start(self) -> None:
        env = {key: value for key, value in os.environ.items() if not key.startswith("UPF_")}
        env["UPF_REGISTRATION_CREDENTIAL"] = credential_for(self.plugin_id)
        process = self.process = Process(self.args, env=env, log=self.log_dir / f"{self.plugin_id}-{free_port()}.log")
        wait_until(
            lambda: "listening on" in process.output() or (not process.alive() and _died(process)),
            what=f"{self.plugin_id} to listen",
        )

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
            self.process = None


def routed(gateway: Gateway, plugin_id: str) -> bool:
    """Listed with a ready instance, HEALTHY or DEGRADED (a missing optional dependency)."""
    status = plugin_status(gateway, plugin_id)
    return status is not None and status["ready"] > 0 and status["health"] in ("HEALTHY", "DEGRADED")
