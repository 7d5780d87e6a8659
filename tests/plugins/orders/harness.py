"""The orders plugin's world in tests: a real `upf registry`, real storage and cache plugins as processes
registered with it, and the orders plugin (in the test's process, so that the test reaches into nothing
but its gRPC port) finding them through its manifest's `requires`."""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import grpc
from upf.orders.v1 import orders_pb2 as pb, orders_pb2_grpc
from upf.registry.v1 import registry_pb2

from plugins.orders.plugin import build
from plugins.sdk import DependencyUnavailable, Plugin, Timings
from tests.conformance.cache.harness import poll
from tests.support.processes import Process, _died, free_port, wait_until
from tests.support.redis_server import SHARED_URL, delete_prefix, new_prefix, shared_client
from tests.support.registry_process import RunningRegistry, run_registry

UPF = str(Path(sys.executable).parent / "upf")
FAST = {"leaseTtl": 1.5, "health": {"interval": 0.2, "timeout": 0.5, "successesBeforeHealthy": 1}}
POSTGRES_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


@dataclass(frozen=True)
class Backends:
    """Which storage and cache plugins to run: `storage` is an `upf plugin` name, `cache` one or None."""

    storage: str
    cache: str | None


def _healthy(registry: RunningRegistry, plugin_id: str) -> bool:
    reply = registry.stub.ListPlugins(registry_pb2.ListPluginsRequest(), timeout=2)
    return any(
        p.plugin_id == plugin_id and any(i.health == registry_pb2.HEALTH_STATE_HEALTHY for i in p.instances)
        for p in reply.plugins
    )


def _postgres_admin(statement: str) -> None:
    async def run() -> None:
        connection = await asyncpg.connect(POSTGRES_ADMIN, timeout=5)
        try:
            await connection.execute(statement)
        finally:
            await connection.close()

    # A loop of its own: fixtures may be set up while a test's loop runs.
    with ThreadPoolExecutor(1) as executor:
        executor.submit(asyncio.run, run()).result()


class InfraProcess:
    """`upf plugin NAME ...` registered with `registry`, restartable on the same port."""

    def __init__(self, registry: RunningRegistry, work_dir: Path, name: str, args: list[str]) -> None:
        self.registry, self.work_dir, self.name, self.args = registry, work_dir, name, args
        self.port = free_port()
        self.process: Process | None = None

    def start(self) -> None:
        env = {key: value for key, value in os.environ.items() if not key.startswith("UPF_")}
        env["UPF_REGISTRATION_CREDENTIAL"] = self.registry.credential(self.name)
        args = [UPF, "plugin", self.name, *self.args, "--registry", self.registry.target, "--port", str(self.port)]
        process = self.process = Process(
            [*args, "--drain-grace", "0.5"], env=env, log=self.work_dir / f"{self.name}-{free_port()}.log"
        )
        wait_until(
            lambda: _healthy(self.registry, self.name) or (not process.alive() and _died(process)),
            what=f"{self.name} to be registered and healthy",
        )

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
            self.process = None


@dataclass
class Stack:
    registry: RunningRegistry
    storage: InfraProcess
    cache: InfraProcess | None
    work_dir: Path


@contextmanager
def run_stack(backends: Backends, work_dir: Path) -> Iterator[Stack]:
    """A registry with the storage (and cache) plugin of `backends`, registered and healthy."""
    cleanups: list[Callable[[], None]] = []
    with run_registry(FAST, work_dir) as registry:
        try:
            if backends.storage == "storage-postgres":
                database = f"upf_orders_test_{uuid.uuid4().hex[:12]}"
                _postgres_admin(f'CREATE DATABASE "{database}"')
                cleanups.append(lambda: _postgres_admin(f'DROP DATABASE "{database}" WITH (FORCE)'))
                dsn = f"postgresql://postgres@127.0.0.1:5432/{database}"
            else:
                dsn = str(work_dir / f"orders-{free_port()}.sqlite3")
            storage = InfraProcess(registry, work_dir, backends.storage, ["--dsn", dsn])
            cache = None
            if backends.cache is not None:
                prefix = new_prefix()
                cache = InfraProcess(
                    registry, work_dir, backends.cache, ["--key-prefix", prefix, "--redis-url", SHARED_URL]
                )
                if backends.cache == "cache-redis":
                    cleanups.append(lambda: _delete_redis_prefix(prefix))
            for infra in (storage, cache):
                if infra is not None:
                    cleanups.insert(0, infra.stop)
                    infra.start()
            yield Stack(registry, storage, cache, work_dir)
        finally:
            for cleanup in cleanups:
                cleanup()


def _delete_redis_prefix(prefix: str) -> None:
    client = shared_client()
    delete_prefix(client, prefix)
    client.close()


@dataclass
class Orders:
    plugin: Plugin
    stub: orders_pb2_grpc.OrdersAsyncStub


@asynccontextmanager
async def running_orders(stack: Stack) -> AsyncIterator[Orders]:
    """The orders plugin registered with the stack's registry, once it reaches its dependencies."""
    plugin = build(
        registry=stack.registry.target,
        handle_signals=False,
        credential=stack.registry.credential,
        timings=Timings(stop_notice=0, drain_grace=0.5, resolve_cache_ttl=0.1, backoff_max=0.5),
    )
    task = asyncio.create_task(plugin.run())
    try:
        await plugin.started.wait()

        async def reaches(interface: str) -> bool:
            assert not task.done(), "the orders plugin stopped"
            try:
                await plugin.channel(interface)
            except DependencyUnavailable:
                return False
            return bool(plugin.identity_token())

        await poll(lambda: reaches("IStorage"), timeout=15, what="orders to reach IStorage")
        if stack.cache is not None:
            await poll(lambda: reaches("ICache"), timeout=15, what="orders to reach ICache")
        async with grpc.aio.insecure_channel(plugin.endpoint) as channel:
            yield Orders(plugin, orders_pb2_grpc.OrdersStub(channel))
    finally:
        await plugin.stop()
        await task


def new_customer() -> str:
    """A customer of the test's own: tests share storage and list by customer."""
    return f"cust-{uuid.uuid4().hex[:10]}"


def create_request(customer: str, request_id: str = "", **fields: Any) -> pb.CreateOrderRequest:
    items = fields.pop(
        "items",
        [
            pb.OrderItem(product_id="sku-1", name="Tea", quantity=2, unit_price_minor=450),
            pb.OrderItem(product_id="sku-2", name="Cup", quantity=1, unit_price_minor=1299),
        ],
    )
    return pb.CreateOrderRequest(request_id=request_id, customer_id=customer, items=items, **fields)
