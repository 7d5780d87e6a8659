"""Redis for tests: the shared server on 127.0.0.1:6379 (required), and private ones a test can kill."""

from __future__ import annotations

import signal
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import redis

from tests.support.processes import Process, free_port, wait_until

SHARED_URL = "redis://127.0.0.1:6379/0"


def shared_client() -> redis.Redis:
    """A client of the shared Redis; the test fails (never skips) when it does not answer."""
    client = redis.Redis.from_url(SHARED_URL, socket_timeout=5)
    try:
        client.ping()
    except redis.RedisError as exc:
        client.close()
        pytest.fail(f"Redis is not reachable at {SHARED_URL} ({exc}); .ci/run starts it")
    return client


def new_prefix() -> str:
    """A key prefix of the test's own, so that runs and tests never share a bucket."""
    return f"upf:test:{uuid.uuid4().hex[:12]}"


def delete_prefix(client: redis.Redis, prefix: str) -> None:
    keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
    if keys:
        client.delete(*keys)


class RedisServer:
    """A redis-server of the test's own on a free port: no persistence, started and killed by PID."""

    def __init__(self, log_dir: Path) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.log_dir = log_dir
        self.process: Process | None = None

    def start(self) -> None:
        args = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        self.process = Process(args, log=self.log_dir / f"redis-{self.port}-{uuid.uuid4().hex[:6]}.log")
        client = redis.Redis(port=self.port, socket_timeout=1)
        try:
            wait_until(lambda: self._answers(client), what=f"redis-server on port {self.port}")
        finally:
            client.close()

    def kill(self) -> None:
        """SIGKILL: a crash, not a shutdown; connections drop with no goodbye."""
        if self.process is not None:
            self.process.stop(signal.SIGKILL)
            self.process = None

    def _answers(self, client: redis.Redis) -> bool:
        if self.process is not None and not self.process.alive():
            raise RuntimeError(f"redis-server exited:\n{self.process.output()}")
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False


@contextmanager
def redis_server(log_dir: Path) -> Iterator[RedisServer]:
    server = RedisServer(log_dir)
    server.start()
    try:
        yield server
    finally:
        server.kill()
