"""One cache implementation under test: real grpc.aio servers on 127.0.0.1 over a real backend.

A CacheHarness starts replicas (servers of the same plugin, sharing the backend as production
replicas would: the same Redis prefix or memcached) and hands out SDK clients for any caller. For the
memory backend time is a manual clock the test moves; the others keep their servers' clocks, and a
test polls for expiry with a deadline instead.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, cast

import grpc
from upf.cache.v1 import cache_pb2_grpc

from common.rpc.channel import Channel
from plugins.cache.backend import CacheBackend, Limits
from plugins.cache.plugin import Backend, CacheSettings, make_backend, manifest_of
from plugins.cache.service import CacheService
from plugins.sdk.cache import CacheClient
from tests.support.clock import ManualClock


class Counted:
    """The real backend, with a count of the calls that reached it: a test waits on the count, not a clock."""

    def __init__(self, backend: CacheBackend) -> None:
        self.backend = backend
        self.calls: Counter[str] = Counter()

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self.backend, name)
        if name.startswith("_") or not callable(attribute):
            return attribute

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls[name] += 1
            return attribute(*args, **kwargs)

        return counted


@dataclass
class Replica:
    server: grpc.aio.Server
    backend: CacheBackend
    address: str
    origin: str
    counted: Counted
    channels: list[grpc.aio.Channel] = field(default_factory=list)

    def client(self, caller: str | None = "alpha", *, timeout: float = 10.0) -> CacheClient:
        channel = Channel(self.address)  # the channel plugins reach their cache with (plugins/sdk/resolve.py)
        self.channels.append(channel)
        return CacheClient(channel, caller=caller, timeout=timeout)

    def stub(self) -> Any:
        """A raw stub, for what the SDK client does not let one send (bad metadata)."""
        channel = Channel(self.address)
        self.channels.append(channel)
        return cache_pb2_grpc.CacheStub(channel)

    async def stop(self) -> None:
        for channel in self.channels:
            await channel.close(None)
        await self.server.stop(None)
        await self.backend.close()


class CacheHarness:
    def __init__(self, backend: Backend, settings: CacheSettings) -> None:
        self.backend = backend
        self.settings = settings
        self.manifest = manifest_of(backend)
        self.clock = ManualClock() if backend == "memory" else None
        self.replicas: list[Replica] = []
        self._shared_memory: CacheBackend | None = None

    async def replica(self, settings: CacheSettings | None = None) -> Replica:
        settings = settings or self.settings
        origin = f"{self.backend}-replica-{len(self.replicas) + 1}"
        if self.backend == "memory":
            # One process holds the data: replicas of the memory plugin are servers over one backend.
            if self._shared_memory is None:
                self._shared_memory = make_backend(settings, origin=origin, clock=self.clock or time.monotonic)
            backend = self._shared_memory
        else:
            backend = make_backend(settings, origin=origin)
        server = grpc.aio.server()
        counted = Counted(backend)
        service = CacheService(cast(CacheBackend, counted), limits=Limits(max_value_bytes=settings.max_value_bytes))
        cache_pb2_grpc.add_CacheServicer_to_server(service, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        running = Replica(server, backend, f"127.0.0.1:{port}", origin, counted)
        self.replicas.append(running)
        return running

    async def advance(self, seconds: float) -> None:
        """Move the memory backend's clock; the real servers' clocks move by themselves."""
        if self.clock is not None:
            self.clock.advance(seconds)

    async def close(self) -> None:
        for running in self.replicas:
            if running.backend is not self._shared_memory:
                await running.stop()
            else:
                for channel in running.channels:
                    await channel.close(None)
                await running.server.stop(None)
        if self._shared_memory is not None:
            await self._shared_memory.close()


async def poll(check: Callable[[], Awaitable[Any]], *, timeout: float = 10.0, what: str = "condition") -> Any:
    """Call `check` until it returns something truthy; fail after `timeout` seconds (no fixed sleeps)."""
    deadline = time.monotonic() + timeout
    pause = 0.01
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(pause)
        pause = min(pause * 2, 0.2)
