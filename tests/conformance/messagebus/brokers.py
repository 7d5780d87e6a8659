"""Brokers a test owns and may take away: a nats-server, a redis-server, a RabbitMQ node on free ports.

Each keeps its data across a restart (same port, same directory), as a production broker does:

- nats-server with JetStream's store in a temp dir; stopped with SIGTERM, because JetStream writes
  consumer state (acks) to disk in the background, so after a SIGKILL it may redeliver messages whose ack
  it had confirmed (nats-server 2.9 has no sync-always setting).
- redis-server with appendonly and appendfsync always (an XACK answered is on disk); SIGKILLed.
- a RabbitMQ node of its own (rabbitmq-server with its own node name, ports and mnesia directory: the
  shared RabbitMQ must not be restarted); stopped with SIGTERM for the same reason as NATS (a classic
  queue's acks reach its index in the background: after a SIGKILL, 143 confirmed acks of 10,000 were
  delivered again in one run). Its directory is under /tmp with mode 0777 so that the rabbitmq user can
  write it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
from pathlib import Path

from tests.support.processes import free_port, wait_until


class Broker:
    def __init__(self, backend: str, work_dir: Path) -> None:
        self.backend = backend
        self.port = free_port()
        self._dist_port = free_port()  # RabbitMQ's Erlang distribution port
        self._log_dir = work_dir
        if backend == "rabbitmq":
            self.data = Path(tempfile.mkdtemp(prefix="upf-test-rabbitmq-"))
            self.data.chmod(0o777)
        else:
            self.data = work_dir / f"{backend}-data"
            self.data.mkdir(exist_ok=True)
        self._popen: subprocess.Popen[bytes] | None = None
        self._starts = 0

    @property
    def url(self) -> str:
        if self.backend == "nats":
            return f"nats://127.0.0.1:{self.port}"
        if self.backend == "redis":
            return f"redis://127.0.0.1:{self.port}/0"
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    def _command(self) -> tuple[list[str], dict[str, str]]:
        env = dict(os.environ)
        if self.backend == "nats":
            return ["/usr/sbin/nats-server", "-a", "127.0.0.1", "-p", str(self.port), "-js", "-sd", str(self.data)], env
        if self.backend == "redis":
            return [
                "redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.data),
                "--appendonly", "yes", "--appendfsync", "always", "--save", "",
            ], env  # fmt: skip
        env.update(
            HOME=str(self.data),
            RABBITMQ_NODE_IP_ADDRESS="127.0.0.1",
            RABBITMQ_NODE_PORT=str(self.port),
            RABBITMQ_DIST_PORT=str(self._dist_port),
            RABBITMQ_NODENAME=f"upftest{self.port}@localhost",
            RABBITMQ_MNESIA_BASE=str(self.data / "mnesia"),
            RABBITMQ_LOG_BASE=str(self.data / "log"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(self.data / "enabled_plugins"),
            RABBITMQ_CONFIG_FILE=str(self.data / "no-config"),
        )
        return ["rabbitmq-server"], env

    async def start(self) -> None:
        self._spawn()
        await asyncio.to_thread(wait_until, self._answers, timeout=60.0, what=f"{self.backend} on {self.port}")

    def _spawn(self) -> None:
        self._starts += 1
        command, env = self._command()
        with (self._log_dir / f"{self.backend}-{self._starts}.log").open("wb") as log:
            try:
                self._popen = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
            except FileNotFoundError:
                raise AssertionError(f"{command[0]} is needed for a {self.backend} of the test's own") from None

    def _answers(self) -> bool:
        assert self._popen is not None
        if self._popen.poll() is not None:
            raise AssertionError(f"{self.backend} exited; see {self._log_dir}")
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
        except OSError:
            return False
        return True

    async def stop(self) -> None:
        if self._popen is None:
            return
        if self.backend == "nats":
            self._popen.send_signal(signal.SIGTERM)
        elif self.backend == "rabbitmq":
            # SIGTERM to the node (beam.smp, the deepest of rabbitmq-server -> su -> sh -> beam.smp) shuts
            # it down cleanly: like JetStream, a classic queue writes acks to its index in the background,
            # so after a SIGKILL a node may deliver again what it had confirmed as acknowledged.
            for pid in reversed(_tree(self._popen.pid)):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
        else:
            self._popen.send_signal(signal.SIGKILL)
        await asyncio.to_thread(self._popen.wait, 30)
        if self.backend == "rabbitmq":
            # The node's processes are gone once its port is free again.
            await asyncio.to_thread(wait_until, lambda: not self._port_open(), timeout=30.0, what="RabbitMQ to stop")
        self._popen = None

    def _port_open(self) -> bool:
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
        except OSError:
            return False
        return True

    def remove(self) -> None:
        if self.backend == "rabbitmq":
            shutil.rmtree(self.data, ignore_errors=True)


def _tree(root: int) -> list[int]:
    """`root` and its descendants (by /proc), parents first."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, queue = [], [root]
    while queue:
        pid = queue.pop(0)
        found.append(pid)
        queue += children.get(pid, [])
    return found
