"""Fixtures of the cache conformance suite: every test body runs against each implementation.

`cache` is parametrised over memory, Redis (the shared server on 6379, under a random key prefix)
and memcached (a process of the session's own, under a random key prefix). `shared_cache` covers
the backends that replicas share across processes, `killable_cache` those a test can crash: a
redis-server or memcached of the test's own, never the shared Redis.
"""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from plugins.cache.plugin import Backend, CacheSettings
from tests.conformance.cache.harness import CacheHarness
from tests.conformance.cache.servers import MemcachedServer
from tests.support.redis_server import SHARED_URL, RedisServer, delete_prefix, new_prefix, shared_client

TIMEOUT = 0.5  # seconds a backend call may take: a dead backend is reported quickly


@pytest.fixture(scope="session")
def memcached_address(work_dir: Path) -> Iterator[str]:
    server = MemcachedServer(work_dir)
    server.start()
    try:
        yield server.address
    finally:
        server.kill()


async def _harness(backend: Backend, request: pytest.FixtureRequest) -> AsyncIterator[CacheHarness]:
    prefix = new_prefix()
    settings = CacheSettings(backend=backend, key_prefix=prefix, timeout=TIMEOUT)
    if backend == "redis":
        client = shared_client()
        settings = CacheSettings(backend=backend, redis_url=SHARED_URL, key_prefix=prefix, timeout=TIMEOUT)
    elif backend == "memcached":
        address = request.getfixturevalue("memcached_address")
        settings = CacheSettings(backend=backend, memcached=address, key_prefix=prefix, timeout=TIMEOUT)
    harness = CacheHarness(backend, settings)
    try:
        yield harness
    finally:
        await harness.close()
        if backend == "redis":
            delete_prefix(client, prefix)
            client.close()


@pytest.fixture(params=["memory", "redis", "memcached"])
async def cache(request: pytest.FixtureRequest) -> AsyncIterator[CacheHarness]:
    async for harness in _harness(request.param, request):
        yield harness


@pytest.fixture(params=["redis", "memcached"])
async def shared_cache(request: pytest.FixtureRequest) -> AsyncIterator[CacheHarness]:
    async for harness in _harness(request.param, request):
        yield harness


class Crashable:
    """A backend server of the test's own: `kill()` it, `start()` it again on the same port."""

    def __init__(self, harness: CacheHarness, server: RedisServer | MemcachedServer) -> None:
        self.harness = harness
        self.server = server

    def kill(self) -> None:
        self.server.kill()

    def start(self) -> None:
        self.server.start()

    def pause(self) -> None:
        """The server stops answering but keeps its connections open (SIGSTOP): a backend that hangs."""
        assert self.server.process is not None
        self.server.process.popen.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.server.process is not None
        self.server.process.popen.send_signal(signal.SIGCONT)


@pytest.fixture(params=["redis", "memcached"])
async def killable_cache(request: pytest.FixtureRequest, work_dir: Path) -> AsyncIterator[Crashable]:
    backend: Backend = request.param
    server: RedisServer | MemcachedServer = RedisServer(work_dir) if backend == "redis" else MemcachedServer(work_dir)
    server.start()
    prefix = new_prefix()
    settings = CacheSettings(backend=backend, key_prefix=prefix, timeout=TIMEOUT)
    if isinstance(server, RedisServer):
        settings = CacheSettings(backend=backend, redis_url=server.url, key_prefix=prefix, timeout=TIMEOUT)
    else:
        settings = CacheSettings(backend=backend, memcached=server.address, key_prefix=prefix, timeout=TIMEOUT)
    harness = CacheHarness(backend, settings)
    try:
        yield Crashable(harness, server)
    finally:
        await harness.close()
        server.kill()
