"""Routes from the plugin registry: a routing table kept current from WatchHealth, and /api/manifests.

One background task per gateway process (started in the app lifespan when `registryUrl` is set):

  connect: ListPlugins (every manifest and instance status, at revision R of epoch E), then
           WatchHealth(since_revision=R, since_epoch=E): each change after R, as it happens.
  broken stream or unreachable registry: reconnect with backoff and start again from ListPlugins,
           which brings the manifests up to date and tells that the registry answers again.
  every routeRefreshInterval: ListPlugins again (manifests can change without any health change,
           and a lost update must not linger); an instance of a plugin whose manifest is not known
           yet triggers one at once.

A service is routed to the endpoints of instances that are READY or DEGRADED (phase) and HEALTHY or
DEGRADED (health), per the plugin manifest's `provides[].grpcServices`. A STOPPING instance leaves
the table, so it gets no new calls; calls already on it run to their end (the pool closes a client
only once its last call has reported). While the registry is unreachable the last known table keeps
serving, and /api/manifests answers the last known list marked `"stale": true`.

The table is always at a position (revision, epoch) of the registry's history. A revision is only
compared with revisions of the same epoch: a list or a snapshot of another epoch (a registry with
the memory store restarted, or its Redis data was lost) replaces the table whatever its revision,
and the registry answers a WatchHealth resumed from another epoch with a snapshot, never with
changes. So the table never mixes two histories, whichever of the list and the watch comes first.

A new history starts empty: the registry has heard from no instance yet, though they all still run
and will register again as soon as their next renewal finds the lease unknown. Until then the
instances that were routable in the previous history stay routed ("carried"), each until the new
history lists it (same instance id or endpoint) routable or not taking calls, and none longer than
the registry's lease TTL (ListPlugins' lease_ttl_seconds) after the new history was first seen: an
instance that has not registered again by then is gone. A carried instance that has died meanwhile
costs no call: its refused connection sends the call to another replica (gateway/proxy/attempts.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
from collections.abc import Mapping
from typing import Any

import grpc
from starlette.requests import Request
from starlette.responses import Response
from upf.registry.v1 import registry_pb2 as pb, registry_pb2_grpc

from gateway.shell import plugin_ui_path
from gateway.upstream.policies import MethodPolicies
from gateway.upstream.pool import UpstreamPool
from manifests import is_exposed

__all__ = ["RegistryRoutes", "routable"]

logger = logging.getLogger(__name__)

_ROUTABLE_PHASES = frozenset({pb.PHASE_READY, pb.PHASE_DEGRADED})
_ROUTABLE_HEALTH = frozenset({pb.HEALTH_STATE_HEALTHY, pb.HEALTH_STATE_DEGRADED})
_BACKOFF_INITIAL = 0.1  # seconds before the first reconnection attempt
_BACKOFF_MAX = 2.0  # short: a restarted registry should be followed within a couple of seconds
_CALL_TIMEOUT = 5.0  # for ListPlugins
_FIRST_TABLE_WAIT = 2.0  # seconds `start` waits for the registry's first table
_DEFAULT_LEASE_TTL = 15.0  # seconds, for a registry that does not say (the registry's own default)


def routable(status: pb.InstanceStatus) -> bool:
    """Whether an instance may receive new calls."""
    return status.phase in _ROUTABLE_PHASES and status.health in _ROUTABLE_HEALTH


def _target(url: str) -> str:
    # registryUrl may be written as a URL (grpc://host:port) or as grpc's host:port.
    for scheme in ("grpc://", "http://", "dns:///"):
        if url.startswith(scheme):
            return url[len(scheme) :].rstrip("/")
    return url


def _health_name(value: int) -> str:
    return pb.HealthState.Name(value).removeprefix("HEALTH_STATE_")  # type: ignore[arg-type]


def _phase_name(value: int) -> str:
    return pb.Phase.Name(value).removeprefix("PHASE_")  # type: ignore[arg-type]


class _Plugin:
    __slots__ = ("internal", "manifest", "services")

    def __init__(self, manifest: dict[str, Any]) -> None:
        self.manifest = manifest
        exposed: dict[str, None] = {}
        internal: dict[str, None] = {}
        for provided in manifest.get("provides") or []:
            into = exposed if is_exposed(manifest.get("type"), provided.get("exposed")) else internal
            into.update(dict.fromkeys(s for s in provided.get("grpcServices") or [] if isinstance(s, str)))
        self.services = tuple({**exposed, **internal})  # routed
        self.internal = tuple(s for s in internal if s not in exposed)  # for the gateway's own calls only


class RegistryRoutes:
    """The registry's view of plugins, fed into an UpstreamPool and served as /api/manifests."""

    def __init__(
        self,
        registry_url: str,
        pool: UpstreamPool,
        *,
        refresh_interval: float,
        policies: MethodPolicies | None = None,
    ) -> None:
        self.registry_url = registry_url
        self.pool = pool
        self.policies = policies if policies is not None else MethodPolicies()
        self.refresh_interval = refresh_interval
        self.reachable = False
        self.error = "not connected yet"
        self.revision = 0
        self.epoch = ""  # the history `revision` is of ("" until the first list)
        self._plugins: dict[str, _Plugin] = {}
        # UI plugins that had been registered and are no longer (all instances gone): still listed
        # by /api/manifests, as UNHEALTHY with no instance, so the shell greys them out instead of
        # dropping them; never routed. Kept while this process runs, or until they come back.
        self._departed: dict[str, _Plugin] = {}
        self._instances: dict[str, pb.InstanceStatus] = {}
        # Instances of the previous history the current one has not heard from yet (module docstring).
        self._carried: dict[str, tuple[pb.InstanceStatus, _Plugin]] = {}
        self._carry_timer: asyncio.TimerHandle | None = None
        self._lease_ttl = _DEFAULT_LEASE_TTL
        self._channel: grpc.aio.Channel | None = None
        self._stub: registry_pb2_grpc.RegistryAsyncStub | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._refresh_now = asyncio.Event()
        self._connected = asyncio.Event()
        self._manifests: tuple[bytes, str] | None = None  # body and ETag, until the data changes

    # --- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        # Keepalive: a registry host that vanishes without closing the connection is noticed too.
        self._channel = grpc.aio.insecure_channel(
            _target(self.registry_url),
            options=[("grpc.keepalive_time_ms", 10_000), ("grpc.keepalive_timeout_ms", 5_000)],
        )
        self._stub = registry_pb2_grpc.RegistryStub(self._channel)
        self._tasks = [
            asyncio.create_task(self._watch_forever(), name="registry-watch"),
            asyncio.create_task(self._refresh_forever(), name="registry-refresh"),
        ]
        # Briefly: a gateway that starts next to a running registry should not answer "unknown
        # service" for its plugins; one that cannot reach it starts anyway (static routes serve).
        await self.wait_connected(_FIRST_TABLE_WAIT)

    async def wait_connected(self, timeout: float) -> bool:
        """Wait (at most `timeout` s) for the first table, so a starting gateway does not answer
        "unknown service" for plugins that are already registered."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._connected.wait(), timeout)
        return self._connected.is_set()

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        if self._carry_timer is not None:
            self._carry_timer.cancel()
            self._carry_timer = None
        if self._channel is not None:
            await self._channel.close(None)
            self._channel = None

    def status(self) -> dict[str, Any]:
        """For /readyz: the gateway stays ready without the registry, but says so."""
        return {
            "url": self.registry_url,
            "reachable": self.reachable,
            "revision": self.revision,
            "epoch": self.epoch,
            "plugins": len(self._plugins),
            "instances": len(self._instances),
            "carried": len(self._carried),
            **({} if self.reachable else {"error": self.error}),
        }

    # --- the two loops -------------------------------------------------------------------------

    async def _watch_forever(self) -> None:
        backoff = _BACKOFF_INITIAL
        while True:
            try:
                await self._list()
                assert self._stub is not None
                resume = pb.WatchHealthRequest(since_revision=self.revision, since_epoch=self.epoch)
                call = self._stub.WatchHealth(resume)
                async for event in call:
                    self._apply(event)
                    backoff = _BACKOFF_INITIAL
                self._lost("the health stream ended")
            except grpc.aio.AioRpcError as exc:
                self._lost(f"{exc.code().name}: {exc.details()}")
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, _BACKOFF_MAX)

    async def _refresh_forever(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._refresh_now.wait(), self.refresh_interval)
            self._refresh_now.clear()
            if not self.reachable:
                continue  # the watch loop is reconnecting, and lists first when it does
            try:
                await self._list()
            except grpc.aio.AioRpcError as exc:
                # The watch stream notices too and reconnects; until then, keep the table.
                logger.warning("registry %s: ListPlugins failed: %s", self.registry_url, exc.details())

    def _lost(self, reason: str) -> None:
        if self.reachable:
            logger.warning("registry %s unreachable (%s); keeping the last known routes", self.registry_url, reason)
        self.reachable, self.error = False, reason
        self._manifests = None  # now stale

    # --- state ---------------------------------------------------------------------------------

    async def _list(self) -> None:
        assert self._stub is not None
        reply = await self._stub.ListPlugins(pb.ListPluginsRequest(), timeout=_CALL_TIMEOUT)
        plugins: dict[str, _Plugin] = {}
        for plugin in reply.plugins:
            try:
                manifest = json.loads(plugin.manifest_json)
            except ValueError:
                manifest = {}
            if not isinstance(manifest, dict):
                manifest = {}
            manifest.setdefault("id", plugin.plugin_id)
            manifest.setdefault("version", plugin.version)
            manifest.setdefault("name", plugin.name)
            plugins[plugin.plugin_id] = _Plugin(manifest)
        for plugin_id, known in self._plugins.items():
            if plugin_id not in plugins and _has_ui(known.manifest):
                self._departed[plugin_id] = known
        for plugin_id in plugins:
            self._departed.pop(plugin_id, None)
        self._lease_ttl = reply.lease_ttl_seconds or _DEFAULT_LEASE_TTL
        # The list is a snapshot at its revision: it replaces the instances unless the watch has
        # already applied later changes of the same history (then only the manifests are news).
        if reply.epoch != self.epoch or reply.revision >= self.revision:
            if reply.epoch != self.epoch:
                self._carry_over()
            self._instances = {status.instance_id: status for plugin in reply.plugins for status in plugin.instances}
            self.revision, self.epoch = reply.revision, reply.epoch
        self._plugins = plugins
        self.policies.update(
            [
                *(plugin.manifest for plugin in plugins.values()),
                *(plugin.manifest for _, plugin in self._carried.values()),
            ]
        )
        if not self.reachable:
            logger.info(
                "registry %s: connected at revision %d (epoch %s)", self.registry_url, reply.revision, reply.epoch
            )
        self.reachable, self.error = True, ""
        self._changed()
        self._connected.set()

    def _apply(self, event: pb.WatchHealthResponse) -> None:
        if event.kind == pb.WatchHealthResponse.KIND_SNAPSHOT:
            if event.epoch != self.epoch:
                self._carry_over()
            self._instances = {status.instance_id: status for status in event.instances}
            self.epoch = event.epoch
        elif event.epoch != self.epoch:
            # A change of the history the stream resumed from, after a list of a newer one replaced
            # the table (the store was lost meanwhile): this stream's next event is a snapshot.
            return
        elif event.revision <= self.revision:
            return  # already part of the list this stream resumed from
        elif event.kind == pb.WatchHealthResponse.KIND_REMOVED:
            for status in event.instances:
                self._instances.pop(status.instance_id, None)
        else:
            for status in event.instances:
                self._instances[status.instance_id] = status
        self.revision = event.revision
        known = {plugin_id: plugin.manifest.get("version") for plugin_id, plugin in self._plugins.items()}
        if event.kind != pb.WatchHealthResponse.KIND_REMOVED and any(
            known.get(status.plugin_id) != status.plugin_version for status in event.instances
        ):
            self._refresh_now.set()  # a plugin (or version) whose manifest this gateway has not read yet
        self._changed()

    # --- instances carried over from the previous history -------------------------------------

    def _carry_over(self) -> None:
        """A new history is about to replace the table: keep what was routable in the old one."""
        if not self.epoch:
            return  # nothing known yet
        for status in self._instances.values():
            plugin = self._plugins.get(status.plugin_id)
            if plugin is not None and routable(status):
                self._carried[status.instance_id] = status, plugin
        if not self._carried:
            return
        logger.warning(
            "registry %s started a new history; routing %d instance(s) of the previous one until they "
            "register again, for at most %g s",
            self.registry_url,
            len(self._carried),
            self._lease_ttl,
        )
        if self._carry_timer is not None:
            self._carry_timer.cancel()
        self._carry_timer = asyncio.get_running_loop().call_later(self._lease_ttl, self._end_carry)

    def _end_carry(self) -> None:
        self._carry_timer = None
        if self._carried:
            gone = ", ".join(sorted(self._carried))
            logger.warning(
                "registry %s: not registered again within the lease TTL, unrouted: %s", self.registry_url, gone
            )
            self._carried = {}
            self._changed()

    def _heard_from(self) -> None:
        """Drop the carried instances the current history has a word on: routable (it routes them
        itself), or in a phase that takes no calls. One it lists as not yet checked stays carried."""
        if not self._carried:
            return
        heard = {
            key
            for status in self._instances.values()
            if routable(status) or status.phase not in _ROUTABLE_PHASES
            for key in (status.instance_id, status.endpoint)
        }
        for instance_id, (status, _plugin) in list(self._carried.items()):
            if instance_id in heard or status.endpoint in heard:
                del self._carried[instance_id]

    def _routed(self) -> list[tuple[pb.InstanceStatus, _Plugin]]:
        """Every routable instance with its plugin: the current history's, then the carried ones."""
        routed = []
        for status in self._instances.values():
            plugin = self._plugins.get(status.plugin_id)
            if plugin is not None and routable(status):
                routed.append((status, plugin))
        return [*routed, *self._carried.values()]

    def _changed(self) -> None:
        self._manifests = None
        self._heard_from()
        plugins = [*self._plugins.values(), *(plugin for _status, plugin in self._carried.values())]
        internal = {service for plugin in plugins for service in plugin.internal}
        routes: dict[str, list[str]] = {}
        for status, plugin in sorted(self._routed(), key=lambda routed: (routed[0].endpoint, routed[0].instance_id)):
            for service in plugin.services:
                endpoints = routes.setdefault(service, [])
                if status.endpoint not in endpoints:
                    endpoints.append(status.endpoint)
        registered = {service for plugin in plugins for service in plugin.services}
        self.pool.update(routes, internal=internal, registered=registered)

    def version_of(self, service: str) -> str | None:
        """The manifest version of the plugin that serves `service` (None: no registered plugin does):
        what the gateway's descriptors of that service are kept for."""
        carried = {status.plugin_id: plugin for status, plugin in self._carried.values()}
        for plugin_id, plugin in {**carried, **self._plugins}.items():
            if service in plugin.services:
                return f"{plugin_id}@{plugin.manifest.get('version', '')}"
        return None

    def routes(self) -> Mapping[str, list[str]]:
        """The registry's routes as they stand (before static ones override), for tests and debugging."""
        routes: dict[str, list[str]] = {}
        for status, plugin in self._routed():
            for service in plugin.services:
                routes.setdefault(service, []).append(status.endpoint)
        return routes

    # --- GET /api/manifests --------------------------------------------------------------------

    def manifests_body(self) -> tuple[bytes, str]:
        """The response body (the seed's shape, UI plugins only, with status) and its ETag."""
        if self._manifests is None:
            by_plugin: dict[str, list[pb.InstanceStatus]] = {}
            carried = {status.plugin_id: plugin for status, plugin in self._carried.values()}
            for status in [*self._instances.values(), *(status for status, _plugin in self._carried.values())]:
                by_plugin.setdefault(status.plugin_id, []).append(status)
            listed = {**self._departed, **carried, **self._plugins}
            entries = [
                _entry(plugin.manifest, by_plugin.get(plugin_id, []))
                for plugin_id, plugin in sorted(listed.items())
                if _has_ui(plugin.manifest)
            ]
            body = json.dumps(
                {"plugins": entries, "stale": not self.reachable}, separators=(",", ":"), sort_keys=False
            ).encode()
            self._manifests = body, f'"{hashlib.sha256(body).hexdigest()[:32]}"'
        return self._manifests

    async def manifests(self, request: Request) -> Response:
        return manifests_response(request, *self.manifests_body())

    def ui_base_url(self, plugin_id: str) -> str | None:
        """Where a registered plugin serves its UI files (manifest ui.baseUrl), for gateway/shell.py."""
        plugin = self._plugins.get(plugin_id)
        ui = plugin.manifest.get("ui") if plugin is not None else None
        base = ui.get("baseUrl") if isinstance(ui, dict) else None
        return base if isinstance(base, str) else None


def _has_ui(manifest: Mapping[str, Any]) -> bool:
    ui = manifest.get("ui")
    return isinstance(ui, dict) and ui.get("enabled", True) is not False


def _entry(manifest: Mapping[str, Any], instances: list[pb.InstanceStatus]) -> dict[str, Any]:
    ui = dict(manifest["ui"])
    ui.pop("enabled", None)
    modules = ui.get("exposedModules") or []
    # The seed's shape lists module names; the details (path, type) stay available beside them.
    ui["exposedModules"] = [module["name"] if isinstance(module, dict) else module for module in modules]
    ui["modules"] = modules
    plugin_id = str(manifest.get("id", ""))
    ui.setdefault("remoteName", plugin_id.replace("-", "_"))
    # Files the plugin serves itself reach the browser through the gateway (same origin, no plugin
    # address exposed): the remote entry becomes a path under /plugins/<id>/ui/.
    base = ui.pop("baseUrl", None)
    remote_entry = ui.get("remoteEntry")
    if isinstance(base, str) and isinstance(remote_entry, str):
        if remote_entry.startswith(base.rstrip("/") + "/"):
            remote_entry = remote_entry[len(base.rstrip("/")) :]
        if remote_entry.startswith("/"):
            ui["remoteEntry"] = plugin_ui_path(plugin_id) + remote_entry.lstrip("/")
    entry: dict[str, Any] = {
        key: manifest[key] for key in ("id", "version", "name", "description", "type") if key in manifest
    }
    entry["ui"] = ui
    entry["status"] = _status(instances)
    return entry


def _status(instances: list[pb.InstanceStatus]) -> dict[str, Any]:
    """The plugin's status: that of its best instance (routable first, then the healthiest)."""
    ready = [status for status in instances if routable(status)]
    if not instances:
        return {"health": "UNHEALTHY", "phase": "UNSPECIFIED", "instances": 0, "ready": 0, "reason": "no instance"}
    best = min(instances, key=lambda s: (not routable(s), s.health or 99, s.instance_id))
    status: dict[str, Any] = {
        "health": _health_name(best.health),
        "phase": _phase_name(best.phase),
        "instances": len(instances),
        "ready": len(ready),
    }
    if best.reason:
        status["reason"] = best.reason
    return status


def manifests_response(request: Request, body: bytes, etag: str) -> Response:
    headers = {"etag": etag, "cache-control": "no-cache"}
    if _matches(request.headers.get("if-none-match"), etag):
        return Response(status_code=304, headers=headers)
    return Response(body, media_type="application/json", headers=headers)


def _matches(if_none_match: str | None, etag: str) -> bool:
    if not if_none_match:
        return False
    tags = [tag.strip().removeprefix("W/") for tag in if_none_match.split(",")]
    return "*" in tags or etag in tags
