"""The registry's domain: instance records (what plugins told us), views (what we publish), changes.

A record is the registration of one running instance: its manifest, endpoint, lease, the phase the
plugin reported and the verdict of the health checks (`Check`). A view is what the registry derives
from all records together (dependencies included) and publishes with a revision: health, phase, reason
and `caused_by`. Records and views are stored as JSON so that every store (and every registry
replica sharing one) agrees on them byte for byte.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from enum import StrEnum
from functools import cached_property
from typing import Any, Literal, NamedTuple

from common.clock import Clock
from manifests import PluginManifest

__all__ = [
    "Change",
    "Check",
    "Clock",
    "Health",
    "InstanceRecord",
    "InstanceView",
    "Phase",
    "RegistryError",
    "Snapshot",
]


class Health(StrEnum):
    HEALTHY = "HEALTHY"
    DEGRADED = "DEGRADED"
    UNHEALTHY = "UNHEALTHY"


class Phase(StrEnum):
    REGISTERED = "REGISTERED"
    INITIALIZING = "INITIALIZING"
    CONNECTING = "CONNECTING"
    READY = "READY"
    DEGRADED = "DEGRADED"
    STOPPING = "STOPPING"


class RegistryError(Exception):
    """A request the registry cannot carry out; `code` is the gRPC status name the interceptor sends."""

    code = "INTERNAL"


@dataclass(frozen=True, slots=True)
class Check:
    """The health checks' verdict on one instance (its own health, dependencies aside)."""

    healthy: bool = False
    reason: str = "waiting for the first health check"
    ever_healthy: bool = False  # a new instance skips the recovery damping on its first pass

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


@dataclass(frozen=True)
class InstanceRecord:
    instance_id: str
    plugin_id: str
    manifest_json: str  # the validated manifest, as JSON with the manifest's camelCase keys
    endpoint: str
    lease_id: str
    lease_expires_at: float  # Clock seconds
    registered_at: float
    phase: Phase = Phase.READY  # as reported by the plugin
    check: Check = field(default_factory=Check)

    @cached_property
    def manifest(self) -> PluginManifest:
        return PluginManifest.model_validate_json(self.manifest_json)

    def to_fields(self) -> dict[str, str]:
        return {
            "instance_id": self.instance_id,
            "plugin_id": self.plugin_id,
            "manifest": self.manifest_json,
            "endpoint": self.endpoint,
            "lease_id": self.lease_id,
            "lease_expires_at": repr(self.lease_expires_at),
            "registered_at": repr(self.registered_at),
            "phase": self.phase.value,
            "check": self.check.to_json(),
        }

    @classmethod
    def from_fields(cls, fields: dict[str, str]) -> InstanceRecord:
        return cls(
            instance_id=fields["instance_id"],
            plugin_id=fields["plugin_id"],
            manifest_json=fields["manifest"],
            endpoint=fields["endpoint"],
            lease_id=fields["lease_id"],
            lease_expires_at=float(fields["lease_expires_at"]),
            registered_at=float(fields["registered_at"]),
            phase=Phase(fields["phase"]),
            check=Check(**json.loads(fields["check"])),
        )

    def with_(self, **changes: Any) -> InstanceRecord:
        return replace(self, **changes)


@dataclass(frozen=True, slots=True)
class InstanceView:
    """An instance's published status. Holds no timestamps, so equal states compare (and store) equal."""

    instance_id: str
    plugin_id: str
    plugin_version: str
    endpoint: str
    health: Health
    phase: Phase
    reason: str = ""
    caused_by: tuple[str, ...] = ()

    @property
    def routable(self) -> bool:
        """May receive new calls: Ready (or Degraded) and not UNHEALTHY."""
        return self.phase in (Phase.READY, Phase.DEGRADED) and self.health is not Health.UNHEALTHY

    def to_json(self) -> str:
        data = asdict(self)
        data["caused_by"] = list(self.caused_by)
        return json.dumps(data, sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> InstanceView:
        data = json.loads(text)
        return cls(
            **{
                **data,
                "health": Health(data["health"]),
                "phase": Phase(data["phase"]),
                "caused_by": tuple(data["caused_by"]),
            }
        )


@dataclass(frozen=True, slots=True)
class Change:
    """One published change. `view` is the new status, or the last one for a removal."""

    revision: int
    kind: Literal["updated", "removed"]
    view: InstanceView

    def to_json(self) -> str:
        return json.dumps({"revision": self.revision, "kind": self.kind, "view": json.loads(self.view.to_json())})

    @classmethod
    def from_json(cls, text: str) -> Change:
        data = json.loads(text)
        return cls(data["revision"], data["kind"], InstanceView.from_json(json.dumps(data["view"])))


class Snapshot(NamedTuple):
    """Every published view at `revision` of the history named `epoch`."""

    epoch: str
    revision: int
    views: list[InstanceView]
