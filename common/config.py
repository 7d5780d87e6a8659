"""Configuration loading shared by every process: one YAML file plus `UPF_*` environment overrides.

An environment variable names a key path in upper snake case with `__` between levels, and its value is
read as YAML:

    UPF_HTTP_PORT=9000                          -> httpPort: 9000
    UPF_RATE_LIMITING__REQUESTS_PER_SECOND=50   -> rateLimiting.requestsPerSecond: 50
    UPF_CORS__ALLOW_ORIGINS='["https://app.example"]'

In the file, `${VAR}` in a value is replaced by the environment variable VAR, and `${VAR:-default}` by
`default` when VAR is unset (`$${` writes a literal `${`). An unset variable, an unknown key or an invalid
value stops start-up with a `ConfigError` that names the key and where it came from. Every settings
model derives from `Section`: camelCase keys, unknown keys refused, frozen once read.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, TypeVar

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationError
from pydantic.alias_generators import to_camel

from common.names import is_host_port

__all__ = [
    "CONFIG_ENV",
    "ENV_PREFIX",
    "ConfigError",
    "Endpoint",
    "HttpUrl",
    "Network",
    "RedisUrl",
    "Section",
    "fill_placeholders",
    "load_config",
]

CONFIG_ENV = "UPF_CONFIG"
ENV_PREFIX = "UPF_"

_Model = TypeVar("_Model", bound=BaseModel)
_PLACEHOLDER = re.compile(r"\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class ConfigError(Exception):
    """The configuration cannot be used; the message names the key and its source."""


class Section(BaseModel):
    """Base of every settings model: camelCase keys (`httpPort`), unknown keys refused, frozen."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)


def _check_endpoint(value: str) -> str:
    if not is_host_port(value):
        raise ValueError(f"{value!r} is not host:port")
    return value


Endpoint = Annotated[str, AfterValidator(_check_endpoint)]


def _check_network(value: str) -> str:
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise ValueError(f"{value!r} is not an IP address or CIDR") from None
    return value


Network = Annotated[str, AfterValidator(_check_network)]


def _check_redis_url(url: str) -> str:
    if not url.startswith(("redis://", "rediss://", "unix://")):
        raise ValueError(f"{url!r} is not a redis://, rediss:// or unix:// URL")
    return url


RedisUrl = Annotated[str, AfterValidator(_check_redis_url)]


def _check_url(value: str) -> str:
    if not value.startswith(("http://", "https://")):
        raise ValueError(f"{value!r} is not an http:// or https:// URL")
    return value


HttpUrl = Annotated[str, AfterValidator(_check_url)]


def fill_placeholders(value: Any, where: str, environ: Mapping[str, str]) -> Any:
    """`value` (parsed YAML) with `${VAR}` / `${VAR:-default}` in its strings filled from `environ`.

    Filled after parsing, so a variable's value is never read as YAML (a password holding `: ` or `#`
    stays one string). `where` prefixes the key path in the error for an unset variable.
    """
    if isinstance(value, str):

        def replace(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            if name is None:  # $${: a literal ${
                return "${"
            if name in environ:
                return environ[name]
            if default is not None:
                return default
            raise ConfigError(
                f"{where}: environment variable {name} is not set (write ${{{name}:-value}} for a default)"
            )

        return _PLACEHOLDER.sub(replace, value)
    if isinstance(value, dict):
        return {key: fill_placeholders(item, f"{where}.{key}", environ) for key, item in value.items()}
    if isinstance(value, list):
        return [fill_placeholders(item, f"{where}[{n}]", environ) for n, item in enumerate(value)]
    return value


def load_config(
    model: type[_Model],
    path: str | Path | None = None,
    environ: Mapping[str, str] | None = None,
    *,
    section: str | None = None,
) -> _Model:
    """Read the YAML file (`path`, else $UPF_CONFIG, else none), fill its placeholders, apply `UPF_*` overrides.

    `section`: the file may also hold the settings under this one top-level key, as the seed writes the
    auth plugin's (`auth: {provider: keycloak, ...}`); the `UPF_*` names stay relative to the model.
    """
    environ = os.environ if environ is None else environ
    source = str(path) if path is not None else environ.get(CONFIG_ENV) or None
    data: dict[str, Any] = {}
    prefix: tuple[str, ...] = ()
    if source is not None:
        data = _read_yaml(Path(source), environ)
        if section is not None and section in data and section not in model.model_fields:
            others = sorted(set(data) - {section})
            if others:
                raise ConfigError(
                    f"config file {source}: {others[0]}: unknown key (with a top-level {section}: section, "
                    f"every setting goes inside it)"
                )
            if not isinstance(data[section], dict):
                raise ConfigError(f"config file {source}: {section}: expected a mapping of settings")
            data, prefix = data[section], (section,)
    env_keys: dict[tuple[str, ...], str] = {}
    for name, raw in sorted(environ.items()):
        if not name.startswith(ENV_PREFIX) or name == CONFIG_ENV:
            continue
        keys = tuple(to_camel(part.lower()) for part in name[len(ENV_PREFIX) :].split("__"))
        if not all(keys):
            raise ConfigError(f"environment variable {name}: cannot be read as a key path")
        try:
            value = yaml.safe_load(raw) if raw else ""
        except yaml.YAMLError as exc:
            raise ConfigError(f"environment variable {name}: not valid YAML: {exc}") from None
        _set_path(data, keys, value, name)
        env_keys[keys] = name
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, source, env_keys, prefix)) from None


def _read_yaml(path: Path, environ: Mapping[str, str]) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"config file {path}: cannot be read: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path}: not UTF-8 text (byte {exc.start}: {exc.reason})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path}: not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: the top level must be a mapping of keys, not {type(data).__name__}")
    filled: dict[str, Any] = {
        key: fill_placeholders(value, f"config file {path}: {key}", environ) for key, value in data.items()
    }
    return filled


def _set_path(data: dict[str, Any], keys: tuple[str, ...], value: Any, origin: str) -> None:
    node = data
    for key in keys[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"environment variable {origin}: {key} is not a section")
        node = child
    node[keys[-1]] = value


def _describe(
    exc: ValidationError, source: str | None, env_keys: Mapping[tuple[str, ...], str], prefix: tuple[str, ...]
) -> str:
    lines = []
    for error in exc.errors():
        loc = tuple(str(part) for part in error["loc"])
        origin = next((name for keys, name in env_keys.items() if loc[: len(keys)] == keys), None)
        if source and not origin:  # the key as the file spells it, inside its section
            loc = prefix + loc
        key = ".".join(loc) or "(top level)"
        where = f"environment variable {origin}" if origin else f"config file {source}" if source else "defaults"
        message = error["msg"]
        if error["type"] == "extra_forbidden":
            message = "unknown key"
        elif error["type"] == "value_error":
            message = message.removeprefix("Value error, ")
        lines.append(f"{where}: {key}: {message}")
    return "invalid configuration:\n  " + "\n  ".join(lines)
