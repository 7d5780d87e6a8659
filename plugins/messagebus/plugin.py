"""The message-bus plugins as processes: `upf plugin message-bus-memory|-nats|-rabbitmq|-redis`.

Each registers its own manifest (manifests/message-bus-<backend>.yaml) and serves
upf.messagebus.v1.MessageBus over its backend. Callers are identified by the registry-signed token
every SDK channel carries; their plugin id is the namespace of their durables and queue groups.
The broker is reached lazily: the plugin starts and registers while its broker is down, answers
UNAVAILABLE meanwhile, and carries on once the broker is back.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from upf.messagebus.v1 import messagebus_pb2_grpc

from plugins.messagebus.backend import Backend
from plugins.messagebus.service import MessageBusService, Namespacer
from plugins.sdk import Plugin, Timings, run_plugin
from plugins.sdk.credentials import Credential
from plugins.sdk.identity import RegistryCallers

__all__ = [
    "BACKENDS",
    "BusSettings",
    "build",
    "main",
    "make_backend",
    "manifest_of",
    "settings_from_config",
    "settings_from_env",
]

BACKENDS = ("memory", "nats", "rabbitmq", "redis")
_MANIFESTS = Path(__file__).with_name("manifests")
# (environment variable of the broker URL, its default, the default prefix of names in the broker)
_DEFAULTS = {
    "memory": ("", "", ""),
    "nats": ("UPF_NATS_URL", "nats://127.0.0.1:4222", "upf.bus"),
    "rabbitmq": ("UPF_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/", "upf.bus"),
    "redis": ("UPF_REDIS_URL", "redis://127.0.0.1:6379/0", "upf:bus"),
}


@dataclass(frozen=True, slots=True)
class BusSettings:
    backend: str
    url: str = ""  # the broker's URL ("" for memory)
    prefix: str = ""  # names this bus makes in the broker start with it (subjects, streams, keys)


def settings_from_env(backend: str, url: str | None = None, prefix: str | None = None) -> BusSettings:
    """Flags first, then $UPF_<BROKER>_URL and $UPF_BUS_PREFIX, then the defaults."""
    variable, default_url, default_prefix = _DEFAULTS[backend]
    url = url or (os.environ.get(variable) if variable else None) or default_url
    return BusSettings(backend, url, prefix or os.environ.get("UPF_BUS_PREFIX") or default_prefix)


def settings_from_config(backend: str, config: Mapping[str, Any], where: str = "config") -> BusSettings:
    """From a deployment file's `config` for message-bus-<backend> (`url`, `prefix`; for NATS also the
    seed's `servers: [url]` and `jetstream: {enabled: true}`); ValueError naming the key. What it leaves
    out comes from the environment and the defaults, as for the CLI."""
    keys = {"prefix"} if backend == "memory" else {"url", "prefix"}
    if backend == "nats":
        keys |= {"servers", "jetstream"}
    unknown = sorted(set(config) - keys)
    if unknown:
        accepted = ", ".join(sorted(keys))
        raise ValueError(f"{where}.{unknown[0]}: not a setting of message-bus-{backend}; use {accepted}")
    config = dict(config)
    if "servers" in config:
        servers = config.pop("servers")
        if not isinstance(servers, list) or len(servers) != 1 or "url" in config:
            raise ValueError(f"{where}.servers: one NATS server URL (or `url` instead)")
        config["url"] = servers[0]
    # The bus keeps messages (durables, replay, redelivery) in JetStream: it cannot be turned off.
    if "jetstream" in config and config.pop("jetstream") != {"enabled": True}:
        raise ValueError(f"{where}.jetstream: must be {{enabled: true}}; the bus needs JetStream")
    for key in {"url", "prefix"} & set(config):
        if not isinstance(config[key], str) or not config[key]:
            raise ValueError(f"{where}.{key}: a non-empty string")
    return settings_from_env(backend, config.get("url"), config.get("prefix"))


def manifest_of(backend: str) -> Path:
    return _MANIFESTS / f"message-bus-{backend}.yaml"


def make_backend(settings: BusSettings) -> Backend:
    # Imported on demand: a memory bus does not load three broker clients.
    if settings.backend == "memory":
        from plugins.messagebus.memory_bus import MemoryBus

        return MemoryBus()
    if settings.backend == "nats":
        from plugins.messagebus.nats_bus import NatsBus

        return NatsBus(settings.url, prefix=settings.prefix)
    if settings.backend == "rabbitmq":
        from plugins.messagebus.rabbitmq_bus import RabbitBus

        return RabbitBus(settings.url, prefix=settings.prefix)
    if settings.backend == "redis":
        from plugins.messagebus.redis_bus import RedisBus

        return RedisBus(settings.url, prefix=settings.prefix)
    raise ValueError(f"unknown message bus backend {settings.backend!r}; one of {', '.join(BACKENDS)}")


def build(
    settings: BusSettings,
    *,
    registry: str = "127.0.0.1:50052",
    host: str = "127.0.0.1",
    port: int = 0,
    instance_id: str | None = None,
    manifest: str | Path | None = None,
    drain_grace: float = 10.0,
    timings: Timings | None = None,
    handle_signals: bool = True,
    credential: Credential | None = None,
    backend: Backend | None = None,
    namespace_of: Namespacer | None = None,
) -> Plugin:
    """The plugin; callers are known by the identity token the registry at `registry` signed for them
    (`namespace_of` replaces that, in tests)."""
    service = MessageBusService(backend or make_backend(settings), namespace_of or RegistryCallers(registry))
    return Plugin(
        manifest or manifest_of(settings.backend),
        [(messagebus_pb2_grpc.add_MessageBusServicer_to_server, service)],
        handle_signals=handle_signals,
        registry=registry,
        host=host,
        port=port,
        instance_id=instance_id,
        timings=timings or Timings(drain_grace=drain_grace),
        credential=credential,
    )


def main(settings: BusSettings, **options: object) -> int:
    """Run until SIGTERM/SIGINT; the exit status."""

    def make() -> Plugin:
        return build(settings, **options)  # type: ignore[arg-type]  # build's keywords, from the CLI

    return run_plugin(make)
