"""The deployment file: which implementation of each infrastructure interface `upf run` starts.

The seed's `deployment.yaml`, as written there:

    infrastructure:
      storage:
        plugin: storage-postgres
        config:
          connectionString: ${DATABASE_URL}
          maxConnections: 20
      cache:
        plugin: cache-redis
        config: {url: ${REDIS_URL}, keyPrefix: 'upf:'}

Beside the seed's form, replica counts: `replicas` in an infrastructure entry, and two sections of
their own for the gateway and the platform's plugins (auth, demo, orders); 1 when left out (the
gateway: the count docker/ is written for, two).

    gateway:
      replicas: 2
    plugins:
      auth: {replicas: 2}
    infrastructure:
      storage:
        plugin: storage-postgres
        replicas: 2
        config: {...}

`upf deploy render` writes them (compose `deploy.replicas` and a gateway-N service per gateway
replica, Kubernetes `spec.replicas`). `upf run --deployment` runs one of each on its one machine
and says so when the file asks for more: several copies of a plugin in one process would only share
its CPU, and several gateways would need ports of their own and a proxy in front.

`${VAR}` is replaced by the environment variable VAR (`${VAR:-default}` when it may be unset), as in
every config file (common/config.py); an unset variable, an unknown interface or plugin, or a plugin
that does not implement the interface it is chosen for stops start-up with a message naming the key.
An interface the file leaves out gets its embedded default (storage-sqlite in memory, cache-memory,
...), as with no file at all.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from common.config import ConfigError, fill_placeholders

__all__ = [
    "DEFAULTS",
    "INTERFACES",
    "PLATFORM_PLUGIN_NAMES",
    "Choice",
    "Deployment",
    "DeploymentError",
    "load_deployment",
    "parse_deployment",
]

#: The deployment key of each infrastructure interface, and the interface its plugins provide.
INTERFACES = {"storage": "IStorage", "cache": "ICache", "files": "IFiles", "messageBus": "IMessageBus"}

#: What runs when the file says nothing of an interface (no server needed).
DEFAULTS = {
    "storage": "storage-sqlite",
    "cache": "cache-memory",
    "files": "files-local",
    "messageBus": "message-bus-memory",
}


#: The platform's own plugins, which run in every deployment (their replica counts: the `plugins` section).
PLATFORM_PLUGIN_NAMES = ("auth", "demo", "orders")
_SECTIONS = ("gateway", "plugins", "infrastructure")


class DeploymentError(ValueError):
    """A deployment file that cannot be used; the message names the file and the key."""


@dataclass(frozen=True, slots=True)
class Choice:
    plugin: str  # e.g. storage-postgres
    config: Mapping[str, Any] = field(default_factory=dict)  # the plugin's own settings, placeholders filled
    replicas: int = 1


@dataclass(frozen=True, slots=True)
class Deployment:
    # interface key (storage, cache, ...) -> the chosen plugin; every key of INTERFACES is present.
    infrastructure: Mapping[str, Choice]
    gateway_replicas: int | None = None  # None: as docker/'s hand-written files have it
    plugin_replicas: Mapping[str, int] = field(default_factory=dict)  # auth, demo, orders -> count; 1 if absent

    def more_than_one(self) -> list[str]:
        """What the file asks to run more than once, e.g. ["gateway x2", "storage-postgres x3"]."""
        counts = [("gateway", self.gateway_replicas or 1), *self.plugin_replicas.items()]
        counts += [(choice.plugin, choice.replicas) for choice in self.infrastructure.values()]
        return [f"{name} x{count}" for name, count in counts if count > 1]

    @classmethod
    def embedded(cls) -> Deployment:
        return cls({key: Choice(plugin) for key, plugin in DEFAULTS.items()})


def parse_deployment(
    data: Any, source: str, known: Mapping[str, str], environ: Mapping[str, str] | None = None
) -> Deployment:
    """`known`: every plugin name `upf run` can start -> the interface key it implements."""
    environ = os.environ if environ is None else environ
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise DeploymentError(f"{source}: expected a mapping with an 'infrastructure' section")
    unknown = sorted(set(data) - set(_SECTIONS))
    if unknown:
        raise DeploymentError(f"{source}: unknown key {unknown[0]!r}; the file's sections are {', '.join(_SECTIONS)}")
    gateway = data.get("gateway") or {}
    if not isinstance(gateway, dict) or set(gateway) - {"replicas"}:
        raise DeploymentError(f"{source}: gateway: expected a mapping with 'replicas', e.g. gateway: {{replicas: 2}}")
    gateway_replicas = _replicas(gateway, f"{source}: gateway") if "replicas" in gateway else None
    plugins = data.get("plugins") or {}
    if not isinstance(plugins, dict):
        raise DeploymentError(f"{source}: plugins: expected a mapping of {', '.join(PLATFORM_PLUGIN_NAMES)}")
    plugin_replicas: dict[str, int] = {}
    for name, entry in plugins.items():
        where = f"{source}: plugins.{name}"
        if name not in PLATFORM_PLUGIN_NAMES:
            raise DeploymentError(f"{where}: unknown plugin; the platform's are {', '.join(PLATFORM_PLUGIN_NAMES)}")
        if not isinstance(entry, dict) or set(entry) - {"replicas"}:
            raise DeploymentError(f"{where}: expected a mapping with 'replicas', e.g. {name}: {{replicas: 2}}")
        plugin_replicas[name] = _replicas(entry, where)
    section = data.get("infrastructure") or {}
    if not isinstance(section, dict):
        raise DeploymentError(f"{source}: infrastructure: expected a mapping of {', '.join(INTERFACES)}")
    chosen = dict(DEFAULTS)
    configs: dict[str, Mapping[str, Any]] = {}
    replicas: dict[str, int] = {}
    for key, entry in section.items():
        where = f"{source}: infrastructure.{key}"
        if key not in INTERFACES:
            raise DeploymentError(f"{where}: unknown interface; use one of {', '.join(INTERFACES)}")
        if not isinstance(entry, dict) or not isinstance(entry.get("plugin"), str):
            raise DeploymentError(f"{where}.plugin: name the plugin, e.g. plugin: {DEFAULTS[key]}")
        extra = sorted(set(entry) - {"plugin", "config", "replicas"})
        if extra:
            raise DeploymentError(f"{where}: unknown key {extra[0]!r}; an entry has 'plugin', 'replicas' and 'config'")
        replicas[key] = _replicas(entry, where)
        plugin = entry["plugin"]
        if plugin not in known:
            options = sorted(name for name, implements in known.items() if implements == key)
            choices = ", ".join(options) or "none can be chosen in a deployment file yet"
            raise DeploymentError(f"{where}.plugin: unknown plugin {plugin!r}; for {key}: {choices}")
        if known[plugin] != key:
            raise DeploymentError(
                f"{where}.plugin: {plugin} implements {INTERFACES[known[plugin]]}, not {INTERFACES[key]}"
            )
        config = entry.get("config") or {}
        if not isinstance(config, dict):
            raise DeploymentError(f"{where}.config: expected a mapping of the plugin's settings")
        chosen[key] = plugin
        try:
            configs[key] = fill_placeholders(config, f"{where}.config", environ)
        except ConfigError as exc:
            raise DeploymentError(str(exc)) from None
    return Deployment(
        {key: Choice(plugin, configs.get(key, {}), replicas.get(key, 1)) for key, plugin in chosen.items()},
        gateway_replicas,
        plugin_replicas,
    )


def _replicas(entry: Mapping[str, Any], where: str) -> int:
    count = entry.get("replicas", 1)
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise DeploymentError(f"{where}.replicas: expected a whole number of at least 1, not {count!r}")
    return count


def load_deployment(path: str | Path, known: Mapping[str, str], environ: Mapping[str, str] | None = None) -> Deployment:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise DeploymentError(f"{path}: cannot read the deployment file: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise DeploymentError(f"{path}: not valid YAML: {exc}") from None
    return parse_deployment(data, str(path), known, environ)
