"""Real processes for tests: start on free loopback ports, wait until ready, stop by PID."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

import httpx
import yaml

ROOT = Path(__file__).resolve().parents[2]


def _ephemeral_range() -> range:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return range(int(low), int(high) + 1)
    except (OSError, ValueError):
        return range(32768, 61000)


# Ports for tests come from below the kernel's ephemeral range: a port the kernel hands out for a bind to
# port 0 (as `upf run`'s embedded plugins and every in-process server do) can then never be the port a
# test reserved for a process that has not bound it yet. A random start and a process-wide set keep two
# calls from returning the same port.
_EPHEMERAL = _ephemeral_range()
_handed_out: set[int] = set()


def _worker_ports(ports: range) -> range:
    """This process's share of `ports`: under pytest-xdist each worker (PYTEST_XDIST_WORKER=gwN, one of
    PYTEST_XDIST_WORKER_COUNT) takes its own slice, so two workers never reserve the same port."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
    if not worker.startswith("gw") or count <= 1:
        return ports
    index = int(worker[2:])
    size = len(ports) // count
    return range(ports.start + index * size, ports.start + (index + 1) * size)


_TEST_PORTS = _worker_ports(range(20000, min(_EPHEMERAL.start, 32768)))


def free_port() -> int:
    """A loopback TCP port that nothing holds now and that no kernel-chosen port can take."""
    start = random.randrange(len(_TEST_PORTS))
    for offset in range(len(_TEST_PORTS)):
        port = _TEST_PORTS[(start + offset) % len(_TEST_PORTS)]
        if port in _handed_out:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError(f"no free port in {_TEST_PORTS.start}-{_TEST_PORTS.stop - 1}")


def wait_until(predicate: Any, *, timeout: float = 45.0, interval: float = 0.02, what: str = "condition") -> Any:
    """Poll `predicate` until it returns something truthy, or fail after `timeout` seconds.

    The default deadline is long because it costs nothing when things work: on a loaded 2-core machine
    (the suite runs a worker per core) a Python process can take 15 s just to import and listen."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


async def eventually(predicate: Any, *, timeout: float = 5.0, interval: float = 0.01, what: str = "condition") -> Any:
    """`wait_until` for code on the event loop: polls without blocking the loop that changes the state."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(interval)


class Process:
    def __init__(self, args: Sequence[str], *, env: dict[str, str] | None = None, log: Path, cwd: Path = ROOT) -> None:
        self.log_path = log
        self._log = log.open("wb")
        self.popen = subprocess.Popen(
            list(args),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=os.environ.copy() if env is None else env,
            cwd=cwd,
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        self._log.close()
        return self.popen.returncode


@contextmanager
def probe_backend(
    gen_dir: Path, log_dir: Path, *, port: int = 0, compress: bool = False
) -> Iterator[tuple[str, Process]]:
    with _python_backend("probe", gen_dir, log_dir, port=port, extra=["--compress"] if compress else []) as running:
        yield running


@contextmanager
def interop_backend(gen_dir: Path, log_dir: Path) -> Iterator[tuple[str, Process]]:
    """The grpc.testing.TestService interop server (tests/support/interop_server.py)."""
    with _python_backend("interop_server", gen_dir, log_dir) as running:
        yield running


@contextmanager
def _python_backend(
    module: str, gen_dir: Path, log_dir: Path, *, port: int = 0, extra: Sequence[str] = ()
) -> Iterator[tuple[str, Process]]:
    """`python -m tests.support.MODULE --port P --gen-dir DIR`, which prints `PORT <n>` once it listens."""
    args = [sys.executable, "-m", f"tests.support.{module}", "--port", str(port), "--gen-dir", str(gen_dir), *extra]
    process = Process(args, log=log_dir / f"{module}-{free_port()}.log")
    try:
        line = wait_until(
            lambda: (
                next((ln for ln in process.output().splitlines() if ln.startswith("PORT ")), None)
                or (not process.alive() and _died(process))
            ),
            what=f"the {module} service to listen",
        )
        yield f"127.0.0.1:{line.split()[1]}", process
    finally:
        process.stop()


def _died(process: Process) -> NoReturn:
    raise RuntimeError(f"process exited early:\n{process.output()}")


class Gateway:
    def __init__(self, process: Process, http_port: int, grpc_port: int) -> None:
        self.process = process
        self.http_port = http_port
        self.grpc_port = grpc_port
        self.url = f"http://127.0.0.1:{http_port}"
        self.grpc_target = f"127.0.0.1:{grpc_port}"


@contextmanager
def run_gateway(
    config: dict[str, Any],
    work_dir: Path,
    *,
    command: str = "gateway",
    http_port: int | None = None,
    args: Sequence[str] = (),
    env: dict[str, str] | None = None,
    ready_timeout: float = 45.0,  # a loaded machine (2 cores, other suites) can take 15 s to import and start
) -> Iterator[Gateway]:
    """`upf gateway` (or `upf run`) with this configuration, on free ports (or this HTTP port: a
    gateway started again where another one was); stopped with SIGTERM."""
    http_port, grpc_port = http_port or free_port(), free_port()
    config = {"httpPort": http_port, "grpcPort": grpc_port, "accessLog": False, **config}
    name = f"gateway-{http_port}-{grpc_port}"
    config_file = work_dir / f"{name}.yaml"
    config_file.write_text(yaml.safe_dump(config))
    upf = str(Path(sys.executable).parent / "upf")
    # The developer's own UPF_* variables must not leak into the test's gateway.
    clean = {key: value for key, value in os.environ.items() if not key.startswith("UPF_")}
    argv = [upf, command, "--config", str(config_file), *args]
    process = Process(argv, env={**clean, **(env or {})}, log=work_dir / f"{name}.log")
    gateway = Gateway(process, http_port, grpc_port)
    try:
        wait_until(
            lambda: _ready(gateway) or (not process.alive() and _died(process)),
            timeout=ready_timeout,
            what="the gateway to be ready",
        )
        yield gateway
    finally:
        process.stop()


def _ready(gateway: Gateway) -> bool:
    try:
        return httpx.get(f"{gateway.url}/readyz", timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False
