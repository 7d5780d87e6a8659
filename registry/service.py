"""RegistryService: the thin layer between upf.registry.v1 messages and PluginRegistry.

It raises domain errors only; the interceptor in registry/server.py turns them into gRPC statuses.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, TypeAlias

import grpc
from upf.registry.v1 import registry_pb2 as pb, registry_pb2_grpc

from registry.core import PluginRegistry
from registry.errors import InvalidRequest
from registry.health import HealthMonitor
from registry.identity import AUDIENCE, ISSUER, IdentityIssuer
from registry.model import Health, InstanceView, Phase

__all__ = ["RegistryService", "status_message"]

_Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"

_HEALTH = {
    Health.HEALTHY: pb.HEALTH_STATE_HEALTHY,
    Health.DEGRADED: pb.HEALTH_STATE_DEGRADED,
    Health.UNHEALTHY: pb.HEALTH_STATE_UNHEALTHY,
}
_PHASE = {phase: pb.Phase.Value(f"PHASE_{phase.value}") for phase in Phase}
_FROM_PHASE: dict[int, Phase] = {value: phase for phase, value in _PHASE.items()}
_KIND = {
    "snapshot": pb.WatchHealthResponse.KIND_SNAPSHOT,
    "updated": pb.WatchHealthResponse.KIND_UPDATED,
    "removed": pb.WatchHealthResponse.KIND_REMOVED,
}


def status_message(view: InstanceView) -> pb.InstanceStatus:
    return pb.InstanceStatus(
        instance_id=view.instance_id,
        plugin_id=view.plugin_id,
        plugin_version=view.plugin_version,
        endpoint=view.endpoint,
        health=_HEALTH[view.health],
        phase=_PHASE[view.phase],
        reason=view.reason,
        caused_by=list(view.caused_by),
    )


def _phase(value: int, *, default: Phase | None = None) -> Phase:
    if value == pb.PHASE_UNSPECIFIED and default is not None:
        return default
    if value not in _FROM_PHASE:
        raise InvalidRequest(f"phase: {value} is not a Phase; use PHASE_READY, PHASE_STOPPING, ...")
    return _FROM_PHASE[value]


class RegistryService(registry_pb2_grpc.RegistryServicer):
    def __init__(self, registry: PluginRegistry, monitor: HealthMonitor, identity: IdentityIssuer) -> None:
        self.registry = registry
        self.monitor = monitor
        self.identity = identity

    async def Register(self, request: pb.RegisterRequest, context: _Context) -> pb.RegisterResponse:
        record, view = await self.registry.register(
            request.manifest,
            request.instance_id,
            request.endpoint,
            _phase(request.phase, default=Phase.READY),
            credential=request.credential,
        )
        self.monitor.registered(record.instance_id, record.endpoint)
        return pb.RegisterResponse(
            instance_id=record.instance_id,
            lease_id=record.lease_id,
            ttl_seconds=self.registry.lease_ttl,
            status=status_message(view),
            identity_token=self.identity.issue(record.plugin_id, record.instance_id),
        )

    async def RenewLease(self, request: pb.RenewLeaseRequest, context: _Context) -> pb.RenewLeaseResponse:
        ttl = await self.registry.renew(request.lease_id)
        record = await self.registry.lease_holder(request.lease_id)
        return pb.RenewLeaseResponse(
            ttl_seconds=ttl, identity_token=self.identity.issue(record.plugin_id, record.instance_id)
        )

    async def GetIdentityKeys(
        self, request: pb.GetIdentityKeysRequest, context: _Context
    ) -> pb.GetIdentityKeysResponse:
        return pb.GetIdentityKeysResponse(jwks_json=self.identity.jwks_json, issuer=ISSUER, audience=AUDIENCE)

    async def SetPhase(self, request: pb.SetPhaseRequest, context: _Context) -> pb.SetPhaseResponse:
        view = await self.registry.set_phase(request.lease_id, _phase(request.phase))
        return pb.SetPhaseResponse(status=status_message(view))

    async def Unregister(self, request: pb.UnregisterRequest, context: _Context) -> pb.UnregisterResponse:
        await self.registry.unregister(request.lease_id)
        return pb.UnregisterResponse()

    async def GetProviders(self, request: pb.GetProvidersRequest, context: _Context) -> pb.GetProvidersResponse:
        if not request.interface:
            raise InvalidRequest("interface: empty; name the interface, e.g. IStorage")
        groups = await self.registry.providers(request.interface, request.range)
        return pb.GetProvidersResponse(
            providers=[
                pb.Provider(
                    plugin_id=g.plugin_id,
                    plugin_version=g.plugin_version,
                    interface_version=g.interface_version,
                    instances=[status_message(v) for v in g.instances],
                )
                for g in groups
            ]
        )

    async def ResolveEndpoint(
        self, request: pb.ResolveEndpointRequest, context: _Context
    ) -> pb.ResolveEndpointResponse:
        if not request.target:
            raise InvalidRequest("target: empty; give a plugin id or a fully qualified gRPC service")
        views, reason = await self.registry.resolve(request.target)
        return pb.ResolveEndpointResponse(endpoints=[status_message(v) for v in views], reason=reason)

    async def ListPlugins(self, request: pb.ListPluginsRequest, context: _Context) -> pb.ListPluginsResponse:
        epoch, revision, plugins = await self.registry.plugins()
        return pb.ListPluginsResponse(
            revision=revision,
            epoch=epoch,
            lease_ttl_seconds=self.registry.lease_ttl,
            plugins=[
                pb.Plugin(
                    plugin_id=p.manifest.id,
                    version=p.manifest.version,
                    name=p.manifest.name,
                    manifest_json=p.manifest_json,
                    instances=[status_message(v) for v in p.instances],
                )
                for p in plugins
            ],
        )

    async def WatchHealth(
        self, request: pb.WatchHealthRequest, context: _Context
    ) -> AsyncIterator[pb.WatchHealthResponse]:
        if request.since_revision < 0:
            raise InvalidRequest("since_revision: must be 0 (snapshot) or a revision seen earlier")
        async for event in self.registry.watch(request.since_revision, request.since_epoch):
            yield pb.WatchHealthResponse(
                revision=event.revision,
                kind=_KIND[event.kind],
                instances=[status_message(v) for v in event.views],
                reset=event.reset,
                epoch=event.epoch,
            )

    async def Explain(self, request: pb.ExplainRequest, context: _Context) -> pb.ExplainResponse:
        explanation = await self.registry.explain(request.plugin_id)
        return pb.ExplainResponse(
            plugin_id=explanation.plugin_id,
            requirements=[
                pb.Requirement(
                    interface=r.requirement.interface,
                    range=r.requirement.version,
                    optional=r.requirement.optional,
                    satisfied=r.satisfied,
                    summary=r.summary,
                    candidates=[
                        pb.Candidate(
                            plugin_id=c.plugin_id,
                            instance_id=c.instance_id,
                            interface_version=c.interface_version,
                            chosen=c.chosen,
                            reason=c.reason,
                        )
                        for c in r.candidates
                    ],
                )
                for r in explanation.requirements
            ],
            cycles=[pb.Cycle(path=list(c.path), description=c.description) for c in explanation.cycles],
            instances=[status_message(v) for v in explanation.instances],
        )
