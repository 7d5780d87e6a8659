from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Iterator
from urllib.parse import urlsplit

import pytest

from plugins.messagebus.plugin import build, make_backend
from plugins.sdk import Plugin, Timings
from tests.conformance.messagebus.harness import BACKENDS, URLS, Callers, bus_settings, caller_token, callers
from tests.support.processes import eventually
from tests.support.registry_process import RunningRegistry, run_registry

FAST = Timings(stop_notice=0, drain_grace=0.5)


@pytest.fixture(scope="package")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningRegistry]:
    with run_registry({}, tmp_path_factory.mktemp("bus-registry")) as running:
        yield running


@pytest.fixture(scope="package")
def tokens(registry: RunningRegistry) -> dict[str, str]:
    return {"a": caller_token(registry, "bus-caller-a"), "b": caller_token(registry, "bus-caller-b")}


def require_broker(backend: str) -> None:
    """The test fails (never skips) when the broker it needs is not there; .ci/run starts them."""
    if backend == "memory":
        return
    url = urlsplit(URLS[backend])
    try:
        socket.create_connection((url.hostname, url.port), timeout=2).close()
    except OSError as exc:
        pytest.fail(f"{backend} is not reachable at {url.hostname}:{url.port} ({exc}); .ci/run starts it")


class Bus:
    """A running bus plugin and clients of it."""

    def __init__(self, backend: str, plugin: Plugin, clients: Callers) -> None:
        self.backend = backend
        self.plugin = plugin
        self.a, self.b, self.anonymous = clients.a, clients.b, clients.anonymous


@pytest.fixture(params=BACKENDS)
async def bus(request: pytest.FixtureRequest, registry: RunningRegistry, tokens: dict[str, str]) -> AsyncIterator[Bus]:
    backend_name: str = request.param
    require_broker(backend_name)
    settings = bus_settings(backend_name)
    backend = make_backend(settings)
    plugin = build(
        settings,
        registry=registry.target,
        credential=registry.credential,
        handle_signals=False,
        timings=FAST,
        backend=backend,
    )
    task = asyncio.create_task(plugin.run())
    await registered(plugin)
    try:
        async with callers(plugin.endpoint, tokens) as clients:
            yield Bus(backend_name, plugin, clients)
    finally:
        await plugin.stop()
        await task
        destroy = getattr(backend, "destroy", None)
        if destroy is not None:
            await destroy()
        await backend.close()


async def registered(plugin: Plugin) -> None:
    """Wait until the plugin holds its lease: stopping it then unregisters it. (All four bus plugins
    serve upf.messagebus.v1.MessageBus, which the registry lets only one plugin id hold at a time.)"""
    await plugin.started.wait()
    await eventually(lambda: plugin.keeper is not None and plugin.keeper.lease_id, what="the plugin to register")
