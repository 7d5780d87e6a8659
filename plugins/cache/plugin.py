"""The cache plugins as processes: `upf plugin cache-memory | cache-redis | cache-memcached`.

Each registers its own manifest (plugins/cache/manifests/) with the registry and serves
upf.cache.v1.Cache over one CacheService; only the backend differs. Backend addresses come from the
command line or UPF_CACHE_* variables (see CacheSettings.from_env).

A registered cache plugin keeps each caller's keys in the namespace of the caller's plugin id, taken
from the identity token the registry signed for it (plugins/sdk/identity.py), which `Plugin.channel()`
sends on every call: a call without a valid token is refused (UNAUTHENTICATED), and a caller cannot
name another's namespace. Embedding CacheService elsewhere may pass another `namespace_of`.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

from upf.cache.v1 import cache_pb2_grpc

from plugins.cache.backend import CacheBackend, Limits
from plugins.cache.backends.memcached import MemcachedBackend
from plugins.cache.backends.memory import MemoryBackend
from plugins.cache.backends.redis import RedisBackend
from plugins.cache.service import CacheService, NamespaceOf
from plugins.sdk import Plugin, Timings, run_plugin
from plugins.sdk.credentials import Credential
from plugins.sdk.grants import RegistryGrants, Sharing
from plugins.sdk.identity import RegistryCallers

__all__ = ["BACKENDS", "CacheSettings", "build", "main", "make_backend", "manifest_of"]

Backend = Literal["memory", "redis", "memcached"]
BACKENDS: tuple[Backend, ...] = ("memory", "redis", "memcached")
MANIFESTS = Path(__file__).with_name("manifests")
N = TypeVar("N", int, float)
_CONFIG_KEYS = {"redis": ("url",), "memcached": ("servers", "address")}  # beyond the common ones


def manifest_of(backend: Backend) -> Path:
    return MANIFESTS / f"cache-{backend}.yaml"


@dataclass(frozen=True, slots=True)
class CacheSettings:
    backend: Backend = "memory"
    redis_url: str = "redis://127.0.0.1:6379/0"  # cache-redis
    memcached: str = "127.0.0.1:11211"  # cache-memcached: host:port
    key_prefix: str = "upf:cache"  # cache-redis and cache-memcached: every key starts with it
    timeout: float = 2.0  # seconds a backend call may take before it answers UNAVAILABLE
    # At most the default: the plugin's gRPC server and its callers' channels keep gRPC's 4 MiB messages.
    max_value_bytes: int = Limits().max_value_bytes

    def __post_init__(self) -> None:
        if not 0 < self.max_value_bytes <= Limits().max_value_bytes:
            raise ValueError(
                f"max value bytes {self.max_value_bytes}: between 1 and {Limits().max_value_bytes}, which keeps "
                "a value and its key within gRPC's 4 MiB message"
            )
        if self.timeout <= 0:
            raise ValueError(f"timeout {self.timeout}: must be more than 0 seconds")
        host, _, port = self.memcached.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"memcached address {self.memcached!r}: write host:port, e.g. 127.0.0.1:11211")
        if not self.redis_url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(f"Redis URL {self.redis_url!r}: write redis://host:port/db (or rediss://, unix://)")
        if not 0 < len(self.key_prefix) <= 100 or not all(0x21 <= ord(c) <= 0x7E for c in self.key_prefix):
            # memcached keys are printable ASCII without spaces; Redis takes the same rule for one meaning.
            raise ValueError(f"key prefix {self.key_prefix!r}: 1-100 printable ASCII characters, no spaces")

    @classmethod
    def from_env(cls, backend: Backend, env: Mapping[str, str] | None = None) -> CacheSettings:
        """UPF_CACHE_REDIS_URL, UPF_CACHE_MEMCACHED, UPF_CACHE_KEY_PREFIX, UPF_CACHE_TIMEOUT and
        UPF_CACHE_MAX_VALUE_BYTES over the defaults; ValueError naming the variable that is wrong."""
        env = os.environ if env is None else env
        base = cls(backend=backend)
        return cls(
            backend=backend,
            redis_url=env.get("UPF_CACHE_REDIS_URL", base.redis_url),
            memcached=env.get("UPF_CACHE_MEMCACHED", base.memcached),
            key_prefix=env.get("UPF_CACHE_KEY_PREFIX", base.key_prefix),
            timeout=_number(env, "UPF_CACHE_TIMEOUT", float, base.timeout),
            max_value_bytes=_number(env, "UPF_CACHE_MAX_VALUE_BYTES", int, base.max_value_bytes),
        )

    @classmethod
    def from_config(cls, backend: Backend, config: Mapping[str, Any], where: str = "config") -> CacheSettings:
        """From a deployment file's `config` for this plugin (the seed's keys: `url` for Redis, `servers`
        or `address` for memcached, `keyPrefix`, `timeout`, `maxValueBytes`); ValueError naming the key."""
        keys = {"keyPrefix", "timeout", "maxValueBytes", *_CONFIG_KEYS.get(backend, ())}
        unknown = sorted(set(config) - keys)
        if unknown:
            raise ValueError(f"{where}.{unknown[0]}: not a setting of cache-{backend}; use {', '.join(sorted(keys))}")
        base = cls(backend=backend)
        servers = config.get("servers", [config["address"]] if "address" in config else [base.memcached])
        if not isinstance(servers, list) or len(servers) != 1 or not isinstance(servers[0], str):
            raise ValueError(f"{where}.servers: one memcached as host:port (several servers are not supported)")
        try:
            return cls(
                backend=backend,
                redis_url=str(config.get("url", base.redis_url)),
                memcached=servers[0],
                # The seed writes keyPrefix: 'upf:'; our keys add their own separator.
                key_prefix=str(config.get("keyPrefix", base.key_prefix)).rstrip(":") or base.key_prefix,
                timeout=float(config.get("timeout", base.timeout)),
                max_value_bytes=int(config.get("maxValueBytes", base.max_value_bytes)),
            )
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{where}: {exc}") from None


def _number(env: Mapping[str, str], name: str, kind: Callable[[str], N], default: N) -> N:
    text = env.get(name)
    if text is None:
        return default
    try:
        return kind(text)
    except ValueError:
        raise ValueError(f"{name}={text!r} is not a number") from None


def make_backend(settings: CacheSettings, *, origin: str, clock: Callable[[], float] = time.monotonic) -> CacheBackend:
    if settings.backend == "redis":
        return RedisBackend(settings.redis_url, prefix=settings.key_prefix, origin=origin, timeout=settings.timeout)
    if settings.backend == "memcached":
        return MemcachedBackend(
            settings.memcached,
            prefix=settings.key_prefix,
            origin=origin,
            timeout=settings.timeout,
            max_value_bytes=settings.max_value_bytes,
        )
    return MemoryBackend(origin=origin, clock=clock)


def build(
    settings: CacheSettings,
    *,
    registry: str = "127.0.0.1:50052",
    host: str = "127.0.0.1",
    port: int = 0,
    instance_id: str | None = None,
    manifest: str | Path | None = None,
    drain_grace: float = 10.0,
    handle_signals: bool = True,
    namespace_of: NamespaceOf | None = None,
    credential: Credential | None = None,
) -> Plugin:
    """The cache plugin for `settings`. Each caller's keys and locks live in the namespace of its plugin
    id, from the identity token the registry signed for it (`namespace_of` replaces that, in tests); a
    caller reaches another plugin's keys as far as that plugin's manifest grants, as the registry holds it."""
    if namespace_of is None:
        namespace_of = RegistryCallers(registry)
    instance_id = instance_id or f"cache-{settings.backend}-{secrets.token_hex(4)}"
    backend = make_backend(settings, origin=instance_id)
    service = CacheService(
        backend,
        namespace_of=namespace_of,
        limits=Limits(max_value_bytes=settings.max_value_bytes),
        sharing=Sharing("cache", RegistryGrants(registry)),
    )
    return Plugin(
        manifest or manifest_of(settings.backend),
        [(cache_pb2_grpc.add_CacheServicer_to_server, service)],
        handle_signals=handle_signals,
        registry=registry,
        host=host,
        port=port,
        instance_id=instance_id,
        timings=Timings(drain_grace=drain_grace),
        credential=credential,
    )


def main(
    settings: CacheSettings,
    *,
    registry: str = "127.0.0.1:50052",
    host: str = "127.0.0.1",
    port: int = 0,
    instance_id: str | None = None,
    manifest: str | Path | None = None,
    drain_grace: float = 10.0,
) -> int:
    """Run until SIGTERM/SIGINT; the exit status (0 after a graceful stop, 1 for an invalid manifest)."""
    return run_plugin(
        lambda: build(
            settings,
            registry=registry,
            host=host,
            port=port,
            instance_id=instance_id,
            manifest=manifest,
            drain_grace=drain_grace,
        )
    )
