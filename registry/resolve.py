"""Dependency resolution: from every instance record, each instance's health, phase and reason.

A required interface is satisfied by an instance of another plugin that provides it in the required
semver range and is itself usable (Ready or Degraded, and not UNHEALTHY). Usability depends on the
providers' own requirements, so `evaluate` computes the least fixpoint: start with no instance usable,
derive every view, repeat with the instances found usable until nothing changes. Members of a
dependency cycle with no way out therefore never become Ready (each waits for the other), and
`cycles_through` names the path, e.g. `a -(IB)-> b -(IA)-> a`.

`explain` gives the decision for each candidate provider: chosen, out of range, unhealthy, not Ready,
in a cycle, or usable but not preferred (highest interface version first, then plugin id).
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from manifests import RequiredInterface, Version, parse_version, satisfies
from registry.model import Health, InstanceRecord, InstanceView, Phase

__all__ = ["CandidateReport", "Cycle", "Explanation", "RequirementReport", "cycles_through", "evaluate", "explain"]


@dataclass(frozen=True, slots=True)
class Cycle:
    path: tuple[str, ...]  # plugin ids, the first repeated at the end
    interfaces: tuple[str, ...]  # the interface on each edge

    @property
    def description(self) -> str:
        text = self.path[0]
        for interface, plugin in zip(self.interfaces, self.path[1:], strict=True):
            text += f" -({interface})-> {plugin}"
        return text


@dataclass(frozen=True, slots=True)
class CandidateReport:
    plugin_id: str
    instance_id: str
    interface_version: str
    chosen: bool
    reason: str


@dataclass(frozen=True, slots=True)
class RequirementReport:
    requirement: RequiredInterface
    satisfied: bool
    summary: str
    candidates: tuple[CandidateReport, ...]


@dataclass(frozen=True, slots=True)
class Explanation:
    plugin_id: str
    requirements: tuple[RequirementReport, ...]
    cycles: tuple[Cycle, ...]
    instances: tuple[InstanceView, ...] = field(default=())


@dataclass(frozen=True, slots=True)
class _Offer:
    record: InstanceRecord
    version: str  # of the interface


def _offers(records: Iterable[InstanceRecord], interface: str, consumer: str) -> list[_Offer]:
    # A plugin never satisfies its own requirement: that would hide a missing provider.
    return [
        _Offer(record, provided.version)
        for record in records
        if record.plugin_id != consumer
        for provided in record.manifest.provides
        if provided.name == interface
    ]


def _latest(records: Sequence[InstanceRecord], plugin_id: str) -> InstanceRecord | None:
    mine = [r for r in records if r.plugin_id == plugin_id]
    return max(mine, key=lambda r: (r.registered_at, r.instance_id)) if mine else None


def _edges(records: Sequence[InstanceRecord]) -> dict[str, dict[str, str]]:
    """plugin -> {provider plugin: interface} over required (not optional) interfaces, in range."""
    graph: dict[str, dict[str, str]] = {}
    for plugin_id in sorted({r.plugin_id for r in records}):
        latest = _latest(records, plugin_id)
        edges = graph.setdefault(plugin_id, {})
        for requirement in latest.manifest.requires if latest is not None else ():
            if requirement.optional:
                continue
            for offer in _offers(records, requirement.interface, plugin_id):
                if satisfies(offer.version, requirement.version):
                    edges.setdefault(offer.record.plugin_id, requirement.interface)
    return graph


def cycles_through(records: Sequence[InstanceRecord], plugin_id: str) -> list[Cycle]:
    """The shortest cycle of required dependencies through each of the plugin's providers."""
    graph = _edges(records)
    cycles: list[Cycle] = []
    seen: set[tuple[str, ...]] = set()
    for first in sorted(graph.get(plugin_id, {})):
        # Breadth-first from the provider back to the plugin: the shortest way round.
        parents: dict[str, str] = {first: plugin_id}
        queue = deque([first])
        while queue:
            node = queue.popleft()
            if node == plugin_id:
                break
            for nxt in sorted(graph.get(node, {})):
                if nxt not in parents:
                    parents[nxt] = node
                    queue.append(nxt)
        if plugin_id not in parents:
            continue
        path = [plugin_id]
        node = plugin_id
        while True:
            node = parents[node]
            path.append(node)
            if node == plugin_id:
                break
        path.reverse()
        key = tuple(path)
        if key in seen:
            continue
        seen.add(key)
        interfaces = tuple(graph[a][b] for a, b in itertools.pairwise(path))
        cycles.append(Cycle(key, interfaces))
    return cycles


def _rank(offer: _Offer) -> tuple[Version, str]:
    return parse_version(offer.version), offer.record.plugin_id


def _missing_reason(requirement: RequiredInterface, offers: list[_Offer], cycles: list[Cycle]) -> str:
    what = f"{requirement.interface} {requirement.version}"
    if not offers:
        return f"{what}: no plugin provides {requirement.interface}"
    in_range = [o for o in offers if satisfies(o.version, requirement.version)]
    if not in_range:
        found = ", ".join(sorted({f"{o.record.plugin_id} {o.version}" for o in offers}))
        return f"{what}: no provider in range (registered: {found})"
    looped = [c for c in cycles if c.path[1] in {o.record.plugin_id for o in in_range}]
    if looped:
        return f"{what}: dependency cycle {looped[0].description}"
    return f"{what}: no provider is healthy and Ready"


def _view(record: InstanceRecord, records: Sequence[InstanceRecord], usable: set[str]) -> InstanceView:
    missing_required: list[tuple[str, str]] = []
    missing_optional: list[tuple[str, str]] = []
    cycles: list[Cycle] | None = None
    for requirement in record.manifest.requires:
        offers = _offers(records, requirement.interface, record.plugin_id)
        if any(o.record.instance_id in usable and satisfies(o.version, requirement.version) for o in offers):
            continue
        if cycles is None:
            cycles = cycles_through(records, record.plugin_id)
        reason = _missing_reason(requirement, offers, cycles)
        (missing_optional if requirement.optional else missing_required).append((requirement.interface, reason))

    reasons: list[str] = []
    if not record.check.healthy:
        reasons.append(record.check.reason)
    if missing_required:
        reasons.append("required " + "; required ".join(reason for _, reason in missing_required))
    if missing_optional:
        reasons.append("optional " + "; optional ".join(reason for _, reason in missing_optional))
    caused_by = tuple(interface for interface, _ in missing_required + missing_optional)

    if not record.check.healthy or missing_required:
        health = Health.UNHEALTHY
    elif missing_optional:
        health = Health.DEGRADED
    else:
        health = Health.HEALTHY

    phase: Phase
    if record.phase in (Phase.STOPPING, Phase.INITIALIZING, Phase.CONNECTING):
        phase = record.phase  # the plugin's own word wins: it knows it is not serving yet, or any more
        reasons.insert(0, f"the plugin reports {phase.value}")
    elif not record.check.ever_healthy:
        phase = Phase.REGISTERED
    elif missing_required:
        phase = Phase.CONNECTING
    elif missing_optional:
        phase = Phase.DEGRADED
    else:
        phase = Phase.READY
    return InstanceView(
        instance_id=record.instance_id,
        plugin_id=record.plugin_id,
        plugin_version=record.manifest.version,
        endpoint=record.endpoint,
        health=health,
        phase=phase,
        reason="; ".join(reasons),
        caused_by=caused_by,
    )


def evaluate(records: Sequence[InstanceRecord]) -> dict[str, InstanceView]:
    """Every instance's view, dependencies resolved (see the module docstring)."""
    usable: set[str] = set()
    for _ in range(len(records) + 2):
        views = {r.instance_id: _view(r, records, usable) for r in records}
        now_usable = {instance_id for instance_id, view in views.items() if view.routable}
        if now_usable == usable:
            return views
        usable = now_usable
    return views  # pragma: no cover - the usable set only grows, so the loop ends before this


def explain(records: Sequence[InstanceRecord], plugin_id: str) -> Explanation | None:
    """Why each requirement of the plugin (its most recently registered manifest) resolved as it did."""
    latest = _latest(records, plugin_id)
    if latest is None:
        return None
    views = evaluate(records)
    cycles = cycles_through(records, plugin_id)
    reports = []
    for requirement in latest.manifest.requires:
        offers = sorted(_offers(records, requirement.interface, plugin_id), key=_rank, reverse=True)
        good = [o for o in offers if satisfies(o.version, requirement.version) and views[o.record.instance_id].routable]
        best = good[0] if good else None
        candidates = []
        for offer in offers:
            view = views[offer.record.instance_id]
            in_cycle = next((c for c in cycles if c.path[1] == offer.record.plugin_id), None)
            chosen = False
            if not satisfies(offer.version, requirement.version):
                reason = f"version {offer.version} does not satisfy {requirement.version}"
            elif best is not None and view.routable:
                chosen = (offer.record.plugin_id, offer.version) == (best.record.plugin_id, best.version)
                if chosen:
                    reason = "chosen: the highest version in range that is healthy and Ready"
                else:
                    reason = f"healthy and Ready, but {best.record.plugin_id} {best.version} is preferred"
            elif view.health is Health.UNHEALTHY:
                reason = f"UNHEALTHY: {view.reason}"
            else:
                reason = f"not Ready (phase {view.phase.value}{': ' + view.reason if view.reason else ''})"
            if in_cycle is not None and not chosen:
                reason += f"; dependency cycle {in_cycle.description}"
            candidates.append(
                CandidateReport(offer.record.plugin_id, offer.record.instance_id, offer.version, chosen, reason)
            )
        if best is not None:
            count = sum(c.chosen for c in candidates)
            summary = f"resolved to {best.record.plugin_id} {best.version} ({count} instance(s))"
        else:
            why = _missing_reason(requirement, offers, cycles)
            consequence = "runs DEGRADED without it" if requirement.optional else "is not Ready"
            summary = f"not satisfied: {why}; {plugin_id} {consequence}"
        reports.append(RequirementReport(requirement, best is not None, summary, tuple(candidates)))
    mine = tuple(v for v in views.values() if v.plugin_id == plugin_id)
    return Explanation(plugin_id, tuple(reports), tuple(cycles), mine)
