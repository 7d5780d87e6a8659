"""The infrastructure plugins `upf run` can start in its process, and starting the ones a deployment chose.

Each entry builds a plugin from its deployment `config:` (the seed's keys, checked by the plugin's own
`from_config`, which names a wrong key) registered with the platform's registry under its own
credential. A plugin's process is the platform's: its signals are the gateway's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from cli.deployment import Deployment
from plugins.cache.plugin import CacheSettings, build as build_cache
from plugins.files.embedded import EmbeddedFiles, check_config as files_config
from plugins.messagebus.plugin import build as build_bus, settings_from_config as bus_settings
from plugins.sdk import Plugin
from plugins.sdk.credentials import Credential
from plugins.sdk.tracing import Traced, untraced
from plugins.storage.plugin import build as build_storage, options_from_config as storage_options

__all__ = ["CATALOGUE", "Entry", "check_deployment", "known_plugins", "run_infrastructure", "wait_started"]

logger = logging.getLogger(__name__)

_START_TIMEOUT = 30.0


class Runnable(Protocol):
    """A plugin as `upf run` starts it: a Plugin, or one that builds its Plugin when it runs (files)."""

    @property
    def started(self) -> asyncio.Event: ...

    async def run(self) -> None: ...

    async def stop(self) -> None: ...


# (config, registry address, credential) -> the plugin, not started
# (config, registry, credential, traced): the plugin, not started yet, `traced` applied to it.
Builder = Callable[[Mapping[str, Any], str, Credential, Traced], Plugin | Runnable]


@dataclass(frozen=True, slots=True)
class Entry:
    interface: str  # the deployment key: storage, cache, files, messageBus
    build: Builder
    check: Callable[[Mapping[str, Any], str], object]  # (config, where) -> ValueError naming a wrong key


def _storage(name: str, default_dsn: str | None) -> Entry:
    where = f"infrastructure.storage.config ({name})"

    def build(config: Mapping[str, Any], registry: str, credential: Credential, traced: Traced) -> Plugin:
        options = storage_options(config, where)
        options.setdefault("dsn", default_dsn)
        return traced(build_storage(name, registry=registry, handle_signals=False, credential=credential, **options))

    return Entry("storage", build, storage_options)


def _cache(backend: Any) -> Entry:
    where = f"infrastructure.cache.config (cache-{backend})"

    def build(config: Mapping[str, Any], registry: str, credential: Credential, traced: Traced) -> Plugin:
        settings = CacheSettings.from_config(backend, config, where)
        return traced(build_cache(settings, registry=registry, handle_signals=False, credential=credential))

    return Entry("cache", build, lambda config, _where: CacheSettings.from_config(backend, config, where))


def _bus(backend: str) -> Entry:
    where = f"infrastructure.messageBus.config (message-bus-{backend})"

    def build(config: Mapping[str, Any], registry: str, credential: Credential, traced: Traced) -> Plugin:
        settings = bus_settings(backend, config, where)
        return traced(build_bus(settings, registry=registry, handle_signals=False, credential=credential))

    return Entry("messageBus", build, lambda config, _where: bus_settings(backend, config, where))


def _files(kind: str) -> Entry:
    def build(config: Mapping[str, Any], registry: str, credential: Credential, traced: Traced) -> Runnable:
        return EmbeddedFiles(kind, config, registry=registry, credential=credential, traced=traced)

    return Entry("files", build, lambda config, where: files_config(kind, config, where))


CATALOGUE: dict[str, Entry] = {
    # The embedded default keeps nothing on disk, like the rest of `make run`; a deployment names a file.
    "storage-sqlite": _storage("storage-sqlite", ":memory:"),
    "storage-postgres": _storage("storage-postgres", None),
    "storage-mysql": _storage("storage-mysql", None),
    "cache-memory": _cache("memory"),
    "cache-redis": _cache("redis"),
    "cache-memcached": _cache("memcached"),
    # files-local without `root`: a temporary directory, removed when `upf run` ends.
    "files-local": _files("files-local"),
    "files-s3": _files("files-s3"),
    "files-gcs": _files("files-gcs"),
    "message-bus-memory": _bus("memory"),
    "message-bus-nats": _bus("nats"),
    "message-bus-rabbitmq": _bus("rabbitmq"),
    "message-bus-redis": _bus("redis"),
}


def check_deployment(deployment: Deployment) -> None:
    """Check each chosen plugin's config before anything starts; ValueError naming the key."""
    for key, choice in deployment.infrastructure.items():
        entry = CATALOGUE.get(choice.plugin)
        if entry is not None:
            entry.check(choice.config, f"infrastructure.{key}.config ({choice.plugin})")


def known_plugins() -> dict[str, str]:
    """Every plugin name a deployment may choose -> the interface key it implements."""
    return {name: entry.interface for name, entry in CATALOGUE.items()}


@contextlib.asynccontextmanager
async def run_infrastructure(
    deployment: Deployment, registry: str, credential: Credential, traced: Traced = untraced
) -> AsyncIterator[dict[str, Plugin | Runnable]]:
    """Start the chosen plugins that this process can run (interface key -> plugin), serving until the
    block ends; then stop them, the last started first. A plugin that fails to start stops start-up.
    `traced` is applied to each plugin before it starts (plugins/sdk/tracing.py)."""
    plugins: dict[str, Plugin | Runnable] = {}
    tasks: dict[str, asyncio.Task[None]] = {}
    try:
        for key, choice in deployment.infrastructure.items():
            entry = CATALOGUE.get(choice.plugin)
            if entry is None:
                continue
            plugin = entry.build(choice.config, registry, credential, traced)
            plugins[key], tasks[key] = plugin, asyncio.create_task(plugin.run(), name=choice.plugin)
            await wait_started(choice.plugin, plugin.started, tasks[key], _START_TIMEOUT)
            logger.info("infrastructure: %s for %s", choice.plugin, key)
        yield plugins
    finally:
        for key in reversed(list(tasks)):
            await plugins[key].stop()
            with contextlib.suppress(Exception):
                await tasks[key]


async def wait_started(name: str, started: asyncio.Event, task: asyncio.Task[None], timeout: float) -> None:
    """Wait until `started` is set by the plugin that `task` runs; RuntimeError, saying why, if the task
    ends first (its error) or `timeout` passes."""
    waiting = asyncio.create_task(started.wait())
    done, _ = await asyncio.wait({waiting, task}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    if waiting not in done:
        waiting.cancel()
        if task.done() and task.exception() is not None:
            raise RuntimeError(f"{name} did not start: {task.exception()}")
        raise RuntimeError(f"{name} did not start in {timeout:.0f} s")
