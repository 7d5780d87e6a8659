"""memcached for the cache suite: a process of the test's own on a free port, started and killed by PID."""

from __future__ import annotations

import getpass
import os
import shutil
import signal
import socket
import uuid
from pathlib import Path

import pytest

from tests.support.processes import Process, free_port, wait_until

# Larger than the plugin's largest value (4 MiB - 64 KiB) plus memcached's per-item overhead.
ITEM_SIZE_MAX = "8m"


def memcached_binary() -> str:
    """The memcached executable; the test fails (never skips) without it."""
    binary = shutil.which("memcached")
    if binary is None:
        pytest.fail("memcached is not installed: apt-get install -y memcached (.ci/run installs it)")
    return binary


class MemcachedServer:
    def __init__(self, log_dir: Path, port: int | None = None) -> None:
        self.port = port or free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.log_dir = log_dir
        self.process: Process | None = None

    def start(self) -> None:
        args = [memcached_binary(), "-l", "127.0.0.1", "-p", str(self.port), "-U", "0", "-I", ITEM_SIZE_MAX]
        if os.geteuid() == 0:
            args += ["-u", getpass.getuser()]  # memcached refuses to run as root without naming a user
        self.process = Process(args, log=self.log_dir / f"memcached-{self.port}-{uuid.uuid4().hex[:6]}.log")
        wait_until(self._answers, what=f"memcached on port {self.port}")

    def kill(self) -> None:
        """SIGKILL: a crash, connections drop with no goodbye."""
        if self.process is not None:
            self.process.stop(signal.SIGKILL)
            self.process = None

    def _answers(self) -> bool:
        if self.process is not None and not self.process.alive():
            raise RuntimeError(f"memcached exited:\n{self.process.output()}")
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                sock.sendall(b"version\r\n")
                return sock.recv(64).startswith(b"VERSION")
        except OSError:
            return False
