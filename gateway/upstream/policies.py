"""Per-method policies from plugin manifests (requiredPermission, rateLimit, timeout, idempotent).

The table is rebuilt whenever the registry's manifests change (RegistryRoutes calls `update`) and read
on every call, so a lookup is one dict access. A method missing from a manifest's policies takes its
interface's "*" policy; a service with no policies at all has none (None).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import ValidationError

from manifests.model import ALL_METHODS, MethodPolicy

__all__ = ["MethodPolicies", "cap_timeout", "split_call"]

logger = logging.getLogger(__name__)


class MethodPolicies:
    def __init__(self) -> None:
        self._methods: dict[tuple[str, str], MethodPolicy] = {}
        self._defaults: dict[str, MethodPolicy] = {}

    def get(self, service: str, method: str) -> MethodPolicy | None:
        policy = self._methods.get((service, method))
        return policy if policy is not None else self._defaults.get(service)

    def update(self, manifests: Iterable[Mapping[str, Any]]) -> None:
        """Replace the table with the policies of `manifests` (JSON-shaped, as the registry serves them)."""
        methods: dict[tuple[str, str], MethodPolicy] = {}
        defaults: dict[str, MethodPolicy] = {}
        for manifest in manifests:
            for provided in manifest.get("provides") or []:
                if not isinstance(provided, Mapping):
                    continue
                policies = _parse(manifest.get("id"), provided.get("policies"))
                default = policies.pop(ALL_METHODS, None)
                merged = {name: _merge(default, own) for name, own in policies.items()}
                for service in provided.get("grpcServices") or []:
                    if not isinstance(service, str):
                        continue
                    if default is not None:
                        defaults[service] = default
                    for name, policy in merged.items():
                        methods[(service, name)] = policy
        self._methods, self._defaults = methods, defaults

    def __len__(self) -> int:
        return len(self._methods) + len(self._defaults)


def _parse(plugin: object, raw: object) -> dict[str, MethodPolicy]:
    if not isinstance(raw, Mapping):
        return {}
    parsed: dict[str, MethodPolicy] = {}
    for name, value in raw.items():
        try:
            parsed[str(name)] = MethodPolicy.model_validate(value)
        except ValidationError as error:
            # The registry validated the manifest; a policy this gateway cannot read (a newer
            # manifest version) is skipped, not fatal for the plugin's other methods.
            logger.warning("plugin %s: policy for %s ignored: %s", plugin, name, error.errors()[0]["msg"])
    return parsed


def _merge(default: MethodPolicy | None, own: MethodPolicy) -> MethodPolicy:
    if default is None:
        return own
    return default.model_copy(update={key: getattr(own, key) for key in own.model_fields_set})


def cap_timeout(requested: float | None, *caps: float | None) -> float | None:
    """The deadline a call gets: what the client asked for, held to every cap that is set
    (maxTimeout, the method's manifest `timeout`); None when nothing bounds it."""
    timeout = requested
    for cap in caps:
        if cap is not None:
            timeout = cap if timeout is None else min(timeout, cap)
    return timeout


def split_call(path: str) -> tuple[str, str] | None:
    """(service, method) of a gRPC path, `/pkg.Service/Method` or `/api/pkg.Service/Method`; else None."""
    parts = path.split("/")
    if len(parts) == 4 and parts[1] == "api":
        del parts[1]
    if len(parts) == 3 and "." in parts[1] and parts[2]:
        return parts[1], parts[2]
    return None
