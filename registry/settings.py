"""Registry configuration: a YAML file plus `UPF_*` environment overrides, read like the gateway's.

    host: 127.0.0.1
    port: 50052
    store: memory                   # or redis, shared by several registry replicas
    redisUrl: redis://127.0.0.1:6379/0
    keyPrefix: upf:registry
    leaseTtl: 15                    # seconds an instance stays registered without renewing
    identityTokenTtl: 300           # seconds a plugin's identity token is valid (renewing the lease renews it)
    health: {interval: 5, timeout: 2, failuresBeforeUnhealthy: 3, successesBeforeHealthy: 2}
    registration: {secret: "", secretFile: .upf/registration.secret, open: false}

`UPF_PORT=50060`, `UPF_HEALTH__INTERVAL=0.5`, ...: the same rules as the gateway's
(common/config.py), so a bad key stops start-up with a message that names it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from pydantic import Field

from common.config import RedisUrl, Section as _Section, load_config

__all__ = ["HealthSettings", "RegistrationSettings", "RegistrySettings", "load_registry_settings"]


class HealthSettings(_Section):
    """Active grpc.health.v1 checks of every instance, with Consul-style hysteresis."""

    interval: float = Field(default=5.0, gt=0)  # seconds between checks of one instance
    timeout: float = Field(default=2.0, gt=0)  # seconds a check may take before it counts as failed
    # Consecutive failed checks before a HEALTHY instance becomes UNHEALTHY (damps flapping).
    failures_before_unhealthy: int = Field(default=3, ge=1)
    # Consecutive passing checks before an UNHEALTHY instance is HEALTHY again. A new instance is
    # HEALTHY on its first pass: the damping is for recoveries, not for start-up.
    successes_before_healthy: int = Field(default=2, ge=1)


class RegistrationSettings(_Section):
    """Who may register a plugin id (registry/credentials.py)."""

    # The secret each plugin id's credential derives from; empty: read secretFile.
    secret: str = ""
    # Read, or created with a random secret when missing; plugins started from the same folder read it too.
    secret_file: str = ".upf/registration.secret"
    # Accept registrations without a credential: only where every process that reaches the registry
    # is trusted (the services of one plugin id still belong to it alone).
    open: bool = False


class RegistrySettings(_Section):
    host: str = "127.0.0.1"
    port: int = Field(default=50052, ge=0, le=65535)  # 0 picks a free port (printed at start-up)
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"
    # Where registrations live: this process ("memory"; lost on restart), or Redis (shared, durable).
    store: Literal["memory", "redis"] = "memory"
    redis_url: RedisUrl = "redis://127.0.0.1:6379/0"
    key_prefix: str = Field(default="upf:registry", min_length=1)  # Redis keys are <prefix>:<name>
    lease_ttl: float = Field(default=15.0, gt=0)  # seconds an instance stays registered without renewing
    history: int = Field(default=1000, ge=1)  # changes kept for WatchHealth to resume from
    # Seconds an identity token (Register, RenewLease) stays valid; every renewal brings a new one, so
    # this only bounds how long a plugin cut off from the registry can still prove who it is.
    identity_token_ttl: float = Field(default=300.0, ge=10)
    health: HealthSettings = Field(default_factory=HealthSettings)
    registration: RegistrationSettings = Field(default_factory=RegistrationSettings)


def load_registry_settings(
    path: str | Path | None = None, environ: Mapping[str, str] | None = None
) -> RegistrySettings:
    """Read the YAML file (`path`, else $UPF_CONFIG, else none) and apply `UPF_*` overrides."""
    return load_config(RegistrySettings, path, environ)
