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

    interval: float = Field(default=5.0, gt=0, description="seconds between checks of one instance")
    timeout: float = Field(default=2.0, gt=0, description="seconds a check may take before it counts as failed")
    failures_before_unhealthy: int = Field(
        default=3,
        ge=1,
        description="Consecutive failed checks before a HEALTHY instance becomes UNHEALTHY (damps flapping).",
    )
    successes_before_healthy: int = Field(
        default=2,
        ge=1,
        description=(
            "Consecutive passing checks before an UNHEALTHY instance is HEALTHY again. A new instance is "
            "HEALTHY on its first pass: the damping is for recoveries, not for start-up."
        ),
    )


class RegistrationSettings(_Section):
    """Who may register a plugin id (registry/credentials.py)."""

    secret: str = Field(
        default="", description="The secret each plugin id's credential derives from; empty: read secretFile."
    )
    secret_file: str = Field(
        default=".upf/registration.secret",
        description=(
            "Read, or created with a random secret when missing; plugins started from the same folder read it too."
        ),
    )
    open: bool = Field(
        default=False,
        description=(
            "Accept registrations without a credential: only where every process that reaches the registry is "
            "trusted (the services of one plugin id still belong to it alone)."
        ),
    )


class RegistrySettings(_Section):
    host: str = Field(default="127.0.0.1", description="Address to listen on.")
    port: int = Field(default=50052, ge=0, le=65535, description="0 picks a free port (printed at start-up)")
    log_level: Literal["critical", "error", "warning", "info", "debug"] = Field(
        default="info", description="critical | error | warning | info | debug."
    )
    store: Literal["memory", "redis"] = Field(
        default="memory",
        description=('Where registrations live: this process ("memory"; lost on restart), or Redis (shared, durable).'),
    )
    redis_url: RedisUrl = Field(default="redis://127.0.0.1:6379/0", description="The Redis of the redis store.")
    key_prefix: str = Field(default="upf:registry", min_length=1, description="Redis keys are <prefix>:<name>")
    lease_ttl: float = Field(default=15.0, gt=0, description="seconds an instance stays registered without renewing")
    history: int = Field(default=1000, ge=1, description="changes kept for WatchHealth to resume from")
    identity_token_ttl: float = Field(
        default=300.0,
        ge=10,
        description=(
            "Seconds an identity token (Register, RenewLease) stays valid; every renewal brings a new one, so "
            "this only bounds how long a plugin cut off from the registry can still prove who it is."
        ),
    )
    health: HealthSettings = Field(default_factory=HealthSettings)
    registration: RegistrationSettings = Field(default_factory=RegistrationSettings)


def load_registry_settings(
    path: str | Path | None = None, environ: Mapping[str, str] | None = None
) -> RegistrySettings:
    """Read the YAML file (`path`, else $UPF_CONFIG, else none) and apply `UPF_*` overrides."""
    return load_config(RegistrySettings, path, environ)
