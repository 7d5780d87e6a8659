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

__all__ = ["DEFAULTS", "INTERFACES", "Choice", "Deployment", "DeploymentError", "load_deployment", "parse_deployment"]

#: The deployment key of each infrastructure interface, and the interface its plugins provide.
INTERFACES = {"storage": "IStorage", "cache": "ICache", "files": "IFiles", "messageBus": "IMessageBus"}

#: What runs when the file says nothing of an interface (no server needed).
DEFAULTS = {
    "storage": "storage-sqlite",
    "cache": "cache-memory",
    "files": "files-local",
    "messageBus": "message-bus-memory",
}


class DeploymentError(ValueError):
    """A deployment file that cannot be used; the message names the file and the key."""


@dataclass(frozen=True, slots=True)
class Choice:
    plugin: str  # e.g. storage-postgres
    config: Mapping[str, Any] = field(default_factory=dict)  # the plugin's own settings, placeholders filled


@dataclass(frozen=True, slots=True)
class Deployment:
    # interface key (storage, cache, ...) -> the chosen plugin; every key of INTERFACES is present.
    infrastructure: Mapping[str, Choice]

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
    unknown = sorted(set(data) - {"infrastructure"})
    if unknown:
        raise DeploymentError(f"{source}: unknown key {unknown[0]!r}; the file has one section, 'infrastructure'")
    section = data.get("infrastructure") or {}
    if not isinstance(section, dict):
        raise DeploymentError(f"{source}: infrastructure: expected a mapping of {', '.join(INTERFACES)}")
    chosen = dict(DEFAULTS)
    configs: dict[str, Mapping[str, Any]] = {}
    for key, entry in section.items():
        where = f"{source}: infrastructure.{key}"
        if key not in INTERFACES:
            raise DeploymentError(f"{where}: unknown interface; use one of {', '.join(INTERFACES)}")
        if not isinstance(entry, dict) or not isinstance(entry.get("plugin"), str):
            raise DeploymentError(f"{where}.plugin: name the plugin, e.g. plugin: {DEFAULTS[key]}")
        extra = sorted(set(entry) - {"plugin", "config"})
        if extra:
            raise DeploymentError(f"{where}: unknown key {extra[0]!r}; an entry has 'plugin' and 'config'")
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
    return Deployment({key: Choice(plugin, configs.get(key, {})) for key, plugin in chosen.items()})


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
