"""`Plugin`: a Python plugin's whole life, from its manifest to a graceful exit.

    plugin = Plugin("plugins/orders/manifest.yaml", [(add_OrdersServicer_to_server, OrdersService())],
                    registry="127.0.0.1:50052", port=0)
    await plugin.run()          # until SIGTERM/SIGINT (or `await plugin.stop()`)

`run()` serves the servicers on common.rpc.Server (grpc.aio's server API on the HTTP/2 core the gateway
uses, several times cheaper per call: common/rpc/server.py) with grpc.health.v1 and server reflection, registers
with the registry (the endpoint is host:the port actually bound) and keeps the lease, and lets the
servicers reach their dependencies with `await plugin.channel("IStorage")`. On SIGTERM it follows the
registry's shutdown contract: SetPhase STOPPING (no new calls are routed to it), health NOT_SERVING,
drain in-flight calls for up to `Timings.drain_grace` seconds, Unregister, return.

With a `tracer_provider` (run_plugin makes one from OTEL_EXPORTER_OTLP_ENDPOINT: sdk/tracing.py) every
call gets a span that continues the caller's trace, and calls to dependencies carry it on.

The registry is not needed to start: a plugin keeps serving and retries while the registry is down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection
from upf.registry.v1 import registry_pb2 as pb, registry_pb2_grpc

from common.rpc.channel import Channel, MetadataHook
from common.rpc.server import Server
from manifests import ManifestError, PluginManifest, Problem, parse_manifest
from plugins.sdk.cache import CacheClient
from plugins.sdk.credentials import Credential, registration_credential
from plugins.sdk.files import FilesClient
from plugins.sdk.grants import owner_metadata
from plugins.sdk.identity import caller_token_hook
from plugins.sdk.lease import Backoff, LeaseKeeper, RegistrationRejected
from plugins.sdk.messagebus import MessageBusClient
from plugins.sdk.resolve import Resolver
from plugins.sdk.storage import StorageClient
from plugins.sdk.tracing import TracingInterceptor, trace_context_hook, tracer_provider_from_environment

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

__all__ = ["Plugin", "ServicerSpec", "Timings", "load_manifest_text", "run_plugin"]

logger = logging.getLogger(__name__)

# (the generated add_XServicer_to_server function, the servicer instance)
ServicerSpec = tuple[Callable[[Any, grpc.aio.Server], None], object]

_HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
_WILDCARDS = ("", "0.0.0.0", "::", "[::]")


@dataclass(frozen=True, slots=True)
class Timings:
    """How often and how long; tests shorten them, production keeps the defaults."""

    renew_fraction: float = 1 / 3  # renew every ttl * this (the registry's advice is ttl / 3)
    backoff_initial: float = 0.1  # first retry delay while the registry is unreachable
    backoff_max: float = 5.0  # retries never wait longer than this
    resolve_cache_ttl: float = 2.0  # seconds a dependency's endpoints are reused before asking again
    drain_grace: float = 10.0  # seconds in-flight calls get to finish on shutdown
    # Seconds between announcing STOPPING and refusing new calls: the registry's watchers (the
    # gateway) need a moment to stop routing here, or calls already on their way would be refused.
    stop_notice: float = 1.0
    call_timeout: float = 5.0  # deadline of each call to the registry
    shutdown_call_timeout: float = 2.0  # shorter on the way out: an absent registry must not hold up exit


def load_manifest_text(path: str | Path) -> tuple[str, PluginManifest]:
    """The manifest's text (sent to the registry as is) and its validated model; ManifestError if invalid."""
    raw = Path(path).read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        # The same wording as manifests.load_manifest, which this mirrors to keep the text it read.
        problem = Problem("", f"not UTF-8 text (byte {exc.start}); save the file as UTF-8")
        raise ManifestError(str(path), [problem]) from None
    return text, parse_manifest(text, str(path), json_format=Path(path).suffix.lower() == ".json")


class Plugin:
    def __init__(
        self,
        manifest_path: str | Path,
        servicers: Sequence[ServicerSpec],
        *,
        registry: str = "127.0.0.1:50052",
        host: str = "127.0.0.1",
        port: int = 0,
        instance_id: str | None = None,
        advertise_host: str | None = None,
        timings: Timings = Timings(),
        registry_stub: registry_pb2_grpc.RegistryAsyncStub | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
        handle_signals: bool = True,
        credential: Credential | None = None,
        tracer_provider: TracerProvider | None = None,
    ) -> None:
        # Loaded now, so that a broken manifest stops the plugin before it opens a port.
        self.manifest_text, self.manifest = load_manifest_text(manifest_path)
        self.manifest_path = str(manifest_path)
        self._servicers = list(servicers)
        self._registry_target = registry
        self._host = host
        self._port = port
        # A wildcard address is not somewhere others can connect to; advertise this machine's name.
        self._advertise_host = advertise_host or (socket.gethostname() if host in _WILDCARDS else host)
        self.instance_id = instance_id or f"{self.manifest.id}-{secrets.token_hex(4)}"
        self.timings = timings
        self._injected_stub = registry_stub
        self._sleep = sleep
        self._clock = clock
        self._handle_signals = handle_signals
        # The registration credential (or a function of the plugin id that gives it); None: found at
        # each attempt (credentials.py).
        self._credential = credential
        self.tracer_provider = tracer_provider  # None: no spans (read when the plugin starts)
        self.services = [s for provided in self.manifest.provides for s in provided.grpc_services]
        self.port: int | None = None  # the port bound, once started
        self.health = HealthServicer()
        self.keeper: LeaseKeeper | None = None
        self._server: Server | None = None
        self._stub: registry_pb2_grpc.RegistryAsyncStub | None = None
        self._registry_channel: grpc.aio.Channel | None = None
        self._resolver: Resolver | None = None
        self._stopping = asyncio.Event()
        self.started = asyncio.Event()  # set once serving; `channel()` and `endpoint` work from then on

    @property
    def endpoint(self) -> str:
        if self.port is None:
            raise RuntimeError("the plugin has not started yet")
        return f"{self._advertise_host}:{self.port}"

    async def run(self) -> None:
        """Serve until SIGTERM/SIGINT or `stop()`, then shut down gracefully. Raises RegistrationRejected."""
        keeper_task = await self.start()
        loop = asyncio.get_running_loop()
        signals = (signal.SIGTERM, signal.SIGINT) if self._handle_signals else ()
        for sig in signals:
            loop.add_signal_handler(sig, self._stopping.set)
        stop_task = asyncio.create_task(self._stopping.wait())
        try:
            await asyncio.wait({keeper_task, stop_task}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop_task.cancel()
            await self._shutdown(keeper_task)
            for sig in signals:
                loop.remove_signal_handler(sig)
        if keeper_task.done() and not keeper_task.cancelled() and keeper_task.exception() is not None:
            raise keeper_task.exception()  # type: ignore[misc]  # checked just above: not None

    async def stop(self) -> None:
        """Ask `run()` to shut down (what SIGTERM does)."""
        self._stopping.set()

    async def start(self) -> asyncio.Task[None]:
        """Start serving and registering; returns the task that keeps the lease."""
        provider = self.tracer_provider
        tracing = [TracingInterceptor(provider.get_tracer("upf.plugin"))] if provider is not None else []
        server = self._server = Server(interceptors=tracing)
        for add, servicer in self._servicers:
            add(servicer, server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection([*self.services, _HEALTH_SERVICE, reflection.SERVICE_NAME], server)
        self.port = server.add_insecure_port(f"{self._host}:{self._port}")  # OSError: the port is taken
        await server.start()
        for name in ("", *self.services):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        logger.info("%s %s listening on %s:%d", self.manifest.id, self.manifest.version, self._host, self.port)

        stub = self._stub = self._injected_stub
        if stub is None:
            self._registry_channel = grpc.aio.insecure_channel(self._registry_target)
            stub = self._stub = registry_pb2_grpc.RegistryStub(self._registry_channel)
        ranges = {r.interface: r.version for r in self.manifest.requires}
        hooks: list[MetadataHook] = [caller_token_hook(self.identity_token)]
        if provider is not None:
            hooks.append(trace_context_hook())
        # Calls to dependencies go through common.rpc.Channel (a fraction of grpc.aio's CPU per call);
        # the registry channel stays grpc.aio.
        self._resolver = Resolver(
            stub, ranges, cache_ttl=self.timings.resolve_cache_ttl, clock=self._clock,
            call_timeout=self.timings.call_timeout,
            connect=lambda endpoint: Channel(endpoint, metadata_hooks=hooks),
        )  # fmt: skip
        request = pb.RegisterRequest(
            manifest=self.manifest_text, instance_id=self.instance_id, endpoint=self.endpoint, phase=pb.PHASE_READY
        )
        self.keeper = LeaseKeeper(
            stub,
            request,
            backoff=Backoff(self.timings.backoff_initial, self.timings.backoff_max),
            sleep=self._sleep,
            renew_fraction=self.timings.renew_fraction,
            call_timeout=self.timings.call_timeout,
            credential=self._registration_credential,
        )
        task = asyncio.create_task(self.keeper.run(), name=f"lease of {self.instance_id}")
        self.started.set()
        return task

    def _registration_credential(self) -> str:
        if isinstance(self._credential, str):
            return self._credential
        if self._credential is not None:
            return self._credential(self.manifest.id)
        return registration_credential(self.manifest.id)

    def identity_token(self) -> str:
        """This instance's identity token from the registry ("" until first registered); every call on
        a `channel()` carries it, so the callee knows which plugin calls."""
        return self.keeper.identity_token if self.keeper is not None else ""

    async def channel(self, interface: str) -> grpc.aio.Channel:
        """A channel to a healthy provider of a required interface; DependencyUnavailable if none.
        Its calls carry this plugin's identity token (plugins/sdk/identity.py)."""
        resolver = self._require_resolver()
        await self._identity_known()
        return await resolver.channel(interface)

    async def storage(self, *, owner: str | None = None) -> StorageClient:
        """A client of the IStorage provider (the manifest must require IStorage); DependencyUnavailable if none.
        `owner`: work on that plugin's collections instead, as far as its manifest grants (plugins/sdk/grants.py)."""
        return StorageClient(await self.channel("IStorage"), metadata=owner_metadata(owner))

    async def message_bus(self) -> MessageBusClient:
        """A client of the IMessageBus provider (the manifest must require IMessageBus)."""
        return MessageBusClient(await self.channel("IMessageBus"))

    async def channel_to(self, target: str) -> grpc.aio.Channel:
        """A channel to a plugin id or fully qualified gRPC service; DependencyUnavailable if none."""
        resolver = self._require_resolver()
        await self._identity_known()
        return await resolver.channel_to(target)

    async def _identity_known(self) -> None:
        # Right after start-up the first registration may still be on its way, and a call without the
        # identity token it brings is refused by every infrastructure plugin: wait for it, a little.
        if self.keeper is not None and not self.keeper.identity_token:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.keeper.registered.wait(), self.timings.call_timeout)

    async def cache(self, *, owner: str | None = None) -> CacheClient:
        """A client of the ICache provider; the manifest should require ICache. Keys live in this plugin's
        namespace: the provider knows the plugin from the identity token its channel carries. `owner`: work
        on that plugin's keys instead, as far as its manifest grants (plugins/sdk/grants.py)."""
        return CacheClient(await self.channel("ICache"), owner=owner)

    async def files(self, *, owner: str | None = None) -> FilesClient:
        """A typed client of IFiles (plugins/sdk/files.py); the manifest must require IFiles. `owner`: work
        on that plugin's files instead, as far as its manifest grants (plugins/sdk/grants.py)."""
        return FilesClient(await self.channel("IFiles"), owner=owner)

    def invalidate(self, interface_or_target: str) -> None:
        """Resolve again on the next `channel()`, e.g. after a call failed with UNAVAILABLE."""
        self._require_resolver().invalidate(interface_or_target)

    def _require_resolver(self) -> Resolver:
        if self._resolver is None:
            raise RuntimeError("the plugin has not started yet")
        return self._resolver

    async def _shutdown(self, keeper_task: asyncio.Task[None]) -> None:
        keeper_task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await keeper_task  # its failure, if any, is re-raised by run()
        assert self.keeper is not None
        assert self._server is not None
        assert self._resolver is not None
        assert self._stub is not None
        lease, timeout, stub = self.keeper.lease_id, self.timings.shutdown_call_timeout, self._stub
        logger.info("stopping %s: in-flight calls get up to %.1f s", self.instance_id, self.timings.drain_grace)
        if lease is not None:
            await _quietly(stub.SetPhase(pb.SetPhaseRequest(lease_id=lease, phase=pb.PHASE_STOPPING), timeout=timeout))
            await self._sleep(self.timings.stop_notice)
        for name in ("", *self.services):
            await self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        # New calls are refused from here on; running ones get the grace period to finish.
        await self._server.stop(self.timings.drain_grace)
        if lease is not None:
            await _quietly(stub.Unregister(pb.UnregisterRequest(lease_id=lease), timeout=timeout))
        await self._resolver.close()
        if self._registry_channel is not None:
            await self._registry_channel.close(None)
        if self.tracer_provider is not None:
            await asyncio.to_thread(self.tracer_provider.shutdown)  # the last spans are sent before the exit
        logger.info("%s stopped", self.instance_id)


async def _quietly(call: Awaitable[object]) -> None:
    # On the way out a registry that cannot be reached is not an error worth failing for: the lease
    # runs out by itself and the health checks fail, so the registry learns of the exit anyway.
    try:
        await call
    except grpc.aio.AioRpcError as exc:
        logger.warning("registry call during shutdown failed: %s: %s", exc.code().name, exc.details())


def run_plugin(build: Callable[[], Plugin]) -> int:
    """Build and run a plugin in its own event loop; the exit status, with errors a person can act on."""
    try:
        plugin = build()
    except ManifestError as exc:
        print(f"upf: invalid manifest:\n{exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"upf: cannot read the manifest {exc.filename}: {exc.strerror}", file=sys.stderr)
        return 2
    if plugin.tracer_provider is None:
        plugin.tracer_provider = tracer_provider_from_environment(plugin.manifest.id, plugin.instance_id)
    try:
        asyncio.run(plugin.run())
    except (RegistrationRejected, OSError) as exc:
        print(f"upf: {exc}", file=sys.stderr)
        return 1
    return 0
