"""The registry's operations, in domain terms; registry/service.py translates them to and from proto.

Every operation that changes a record ends with `refresh()`, which re-derives every instance's view
(registry/resolve.py) and publishes those that changed, so that WatchHealth, ResolveEndpoint and
ListPlugins all read the same published state.
"""

from __future__ import annotations

import asyncio
import logging
import re
import uuid
from collections.abc import AsyncGenerator
from dataclasses import dataclass

from common.names import is_host_port
from manifests import ManifestError, PluginManifest, SemverError, parse_manifest, parse_range, parse_version, satisfies
from registry.credentials import RegistrationCredentials
from registry.errors import InstanceTaken, InvalidRequest, ServiceTaken, UnknownLease, UnknownPlugin
from registry.model import Clock, InstanceRecord, InstanceView, Phase
from registry.resolve import Explanation, evaluate, explain
from registry.store.base import PluginStore

__all__ = ["PluginRegistry", "PluginSummary", "ProviderGroup", "WatchEvent"]

logger = logging.getLogger(__name__)

_INSTANCE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")


@dataclass(frozen=True, slots=True)
class ProviderGroup:
    plugin_id: str
    plugin_version: str
    interface_version: str
    instances: tuple[InstanceView, ...]


@dataclass(frozen=True, slots=True)
class PluginSummary:
    manifest: PluginManifest  # of the most recently registered instance
    manifest_json: str
    instances: tuple[InstanceView, ...]


@dataclass(frozen=True, slots=True)
class WatchEvent:
    epoch: str  # the history `revision` belongs to
    revision: int
    kind: str  # "snapshot", "updated" or "removed"
    views: tuple[InstanceView, ...]
    reset: bool = False


def _check_ownership(manifest: PluginManifest, records: list[InstanceRecord]) -> None:
    """A gRPC service belongs to the plugin id whose instances serve it: the gateway routes by
    service, so a second id listing it would receive a share of another plugin's calls."""
    claimed = {service for provided in manifest.provides for service in provided.grpc_services}
    for record in records:
        if record.plugin_id == manifest.id:
            continue
        taken = sorted(claimed.intersection(s for p in record.manifest.provides for s in p.grpc_services))
        if taken:
            raise ServiceTaken(
                f"{', '.join(taken)} {'is' if len(taken) == 1 else 'are'} served by plugin {record.plugin_id}; "
                f"a gRPC service has one owning plugin id, so {manifest.id} cannot register it"
            )


class PluginRegistry:
    def __init__(
        self,
        store: PluginStore,
        clock: Clock,
        *,
        lease_ttl: float,
        credentials: RegistrationCredentials | None = None,
    ) -> None:
        self.store = store
        self.clock = clock
        self.lease_ttl = lease_ttl
        self.credentials = credentials  # None: registration is open (registration.open)
        # One refresh at a time in this process: two interleaved ones could publish an older state last.
        self._refreshing = asyncio.Lock()

    async def register(
        self,
        manifest_text: str,
        instance_id: str,
        endpoint: str,
        phase: Phase = Phase.READY,
        *,
        credential: str = "",
    ) -> tuple[InstanceRecord, InstanceView]:
        manifest = _parse(manifest_text)
        if self.credentials is not None:
            self.credentials.check(manifest.id, credential)
        if not is_host_port(endpoint):
            raise InvalidRequest(f'endpoint: "{endpoint}" is not host:port (e.g. 10.0.0.7:50061)')
        if not instance_id:
            instance_id = f"{manifest.id}-{uuid.uuid4().hex[:8]}"
        elif not _INSTANCE_ID.match(instance_id):
            raise InvalidRequest(
                f'instance_id: "{instance_id}" must be 1-128 letters, digits, ".", "_", ":" or "-", '
                "starting with a letter or digit"
            )
        records = await self.store.all()
        _check_ownership(manifest, records)
        existing = next((r for r in records if r.instance_id == instance_id), None)
        if existing is not None and existing.plugin_id != manifest.id:
            raise InstanceTaken(
                f'instance_id "{instance_id}" is registered by plugin {existing.plugin_id}, not {manifest.id}; '
                "use a unique instance id"
            )
        now = self.clock()
        record = InstanceRecord(
            instance_id=instance_id,
            plugin_id=manifest.id,
            manifest_json=manifest.model_dump_json(by_alias=True, exclude_none=True),
            endpoint=endpoint,
            lease_id=uuid.uuid4().hex,
            lease_expires_at=now + self.lease_ttl,
            registered_at=now,
            phase=phase,
        )
        # A re-registration (a restarted instance) starts over: its health is checked afresh.
        await self.store.put(record)
        logger.info("registered %s (%s %s) at %s", instance_id, manifest.id, manifest.version, endpoint)
        views = await self.refresh()
        return record, views[instance_id]

    async def _lease(self, lease_id: str) -> str:
        instance_id = await self.store.instance_for_lease(lease_id) if lease_id else None
        if instance_id is None:
            raise UnknownLease(f'lease "{lease_id}" is not known (it expired or was never granted); register again')
        return instance_id

    async def renew(self, lease_id: str) -> float:
        instance_id = await self._lease(lease_id)
        if not await self.store.set_lease(instance_id, self.clock() + self.lease_ttl):
            raise UnknownLease(f'lease "{lease_id}" ended while being renewed; register again')
        return self.lease_ttl

    async def lease_holder(self, lease_id: str) -> InstanceRecord:
        """The registration a lease belongs to; UnknownLease when it has ended."""
        record = await self.store.get(await self._lease(lease_id))
        if record is None:
            raise UnknownLease(f'lease "{lease_id}" ended; register again')
        return record

    async def set_phase(self, lease_id: str, phase: Phase) -> InstanceView:
        instance_id = await self._lease(lease_id)
        if phase in (Phase.REGISTERED, Phase.DEGRADED):
            raise InvalidRequest(
                f"phase: {phase.value} is decided by the registry; report INITIALIZING, CONNECTING, READY or STOPPING"
            )
        if not await self.store.set_phase(instance_id, phase):
            raise UnknownLease(f'lease "{lease_id}" ended; register again')
        return (await self.refresh())[instance_id]

    async def unregister(self, lease_id: str) -> None:
        instance_id = await self._lease(lease_id)
        await self.store.remove(instance_id)
        logger.info("unregistered %s", instance_id)
        await self.refresh()

    async def expire_leases(self) -> list[str]:
        """Remove instances whose lease ran out; returns their ids."""
        now = self.clock()
        expired = [r.instance_id for r in await self.store.all() if r.lease_expires_at <= now]
        for instance_id in expired:
            if await self.store.remove(instance_id):
                logger.warning("lease of %s expired: removed", instance_id)
        return expired

    async def refresh(self) -> dict[str, InstanceView]:
        """Derive every view from the records and publish the ones that changed."""
        async with self._refreshing:
            records = await self.store.all()
            views = evaluate(records)
            for view in (await self.store.snapshot()).views:
                if view.instance_id not in views:
                    await self.store.publish(view.instance_id, None)
            for instance_id, view in views.items():
                await self.store.publish(instance_id, view)
            return views

    async def providers(self, interface: str, range_text: str) -> list[ProviderGroup]:
        try:
            parse_range(range_text or "*")
        except SemverError as exc:
            raise InvalidRequest(f"range: {exc}") from None
        records = await self.store.all()
        by_id = {v.instance_id: v for v in (await self.store.snapshot()).views}
        groups: dict[tuple[str, str, str], list[InstanceView]] = {}
        for record in records:
            for provided in record.manifest.provides:
                if provided.name == interface and satisfies(provided.version, range_text or "*"):
                    key = (record.plugin_id, record.manifest.version, provided.version)
                    view = by_id.get(record.instance_id)
                    if view is not None:
                        groups.setdefault(key, []).append(view)
        ordered = sorted(groups.items(), key=lambda kv: (_Descending(kv[0][2]), kv[0][0], _Descending(kv[0][1])))
        return [ProviderGroup(p, v, i, tuple(views)) for (p, v, i), views in ordered]

    async def resolve(self, target: str) -> tuple[list[InstanceView], str]:
        """Routable instances of a plugin id or a gRPC service, or none and why."""
        records = await self.store.all()
        matching = {
            r.instance_id
            for r in records
            if r.plugin_id == target or any(target in p.grpc_services for p in r.manifest.provides)
        }
        if not matching:
            raise UnknownPlugin(f'no registered plugin has the id or serves the gRPC service "{target}"')
        mine = [v for v in (await self.store.snapshot()).views if v.instance_id in matching]
        routable = [v for v in mine if v.routable]
        if routable:
            return routable, ""
        states = "; ".join(f"{v.instance_id}: {v.health.value}, {v.phase.value} ({v.reason})" for v in mine)
        return [], f"no instance of {target} may take calls: {states or 'none published yet'}"

    async def plugins(self) -> tuple[str, int, list[PluginSummary]]:
        """Every plugin, with the epoch and revision of the instance statuses listed."""
        records = await self.store.all()
        epoch, revision, views = await self.store.snapshot()
        summaries = []
        for plugin_id in sorted({r.plugin_id for r in records}):
            latest = max((r for r in records if r.plugin_id == plugin_id), key=lambda r: r.registered_at)
            mine = tuple(v for v in views if v.plugin_id == plugin_id)
            summaries.append(PluginSummary(latest.manifest, latest.manifest_json, mine))
        return epoch, revision, summaries

    async def explain(self, plugin_id: str) -> Explanation:
        explanation = explain(await self.store.all(), plugin_id)
        if explanation is None:
            raise UnknownPlugin(f'no instance of plugin "{plugin_id}" is registered')
        return explanation

    async def watch(
        self, since_revision: int, since_epoch: str = "", *, poll: float = 1.0
    ) -> AsyncGenerator[WatchEvent, None]:
        """A snapshot (or, resuming, the changes after `since_revision` of `since_epoch`), then every
        change, forever. Without `since_epoch` the revision is taken to be of the current history."""
        epoch, revision = since_epoch or await self.store.epoch(), since_revision
        changes = await self.store.changes_since(epoch, since_revision) if since_revision > 0 else None
        if changes is None:
            epoch, revision, views = await self.store.snapshot()
            yield WatchEvent(epoch, revision, "snapshot", tuple(views), reset=since_revision > 0)
            changes = []
        while True:
            for change in changes:
                yield WatchEvent(epoch, change.revision, change.kind, (change.view,))
                revision = change.revision
            await self.store.wait(epoch, revision, poll)
            changes = await self.store.changes_since(epoch, revision)
            if changes is None:
                # The watcher fell further behind than the history reaches, or the history itself
                # was lost (a flushed Redis store): start it over.
                epoch, revision, views = await self.store.snapshot()
                yield WatchEvent(epoch, revision, "snapshot", tuple(views), reset=True)
                changes = []


class _Descending:
    """Sorts versions highest first."""

    __slots__ = ("key",)

    def __init__(self, text: str) -> None:
        self.key = parse_version(text)

    def __lt__(self, other: _Descending) -> bool:
        return other.key < self.key

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Descending) and self.key == other.key

    __hash__ = None  # type: ignore[assignment]


def _parse(text: str) -> PluginManifest:
    if not text.strip():
        raise InvalidRequest("manifest: empty; send the text of the plugin's manifest.json or manifest.yaml")
    try:
        return parse_manifest(text, "manifest", json_format=text.lstrip().startswith("{"))
    except ManifestError as exc:
        raise InvalidRequest(f"invalid manifest:\n{exc}") from None
