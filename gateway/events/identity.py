"""The gateway's caller identity towards plugins: registered with the registry like a plugin.

Infrastructure plugins serve only callers with an identity token the registry signed (upf-caller-token,
see proto/upf/registry/v1/registry.proto), and the registry signs tokens for registered instances. So
a gateway that subscribes to the IMessageBus plugin for /api/events registers an instance of its own
plugin id (`events.pluginId`, default upf-gateway), with a manifest that provides nothing (so nothing is
routed to it), under the registration credential the operator gave it (`events.registrationCredential`,
from `upf registry --credential-for upf-gateway`). It renews the lease, which brings fresh tokens,
and unregisters when it stops. The registry health-checks every instance, so the gateway serves
grpc.health.v1 alone on a port of its own (on `host`, a free port).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from upf.registry.v1 import registry_pb2 as pb, registry_pb2_grpc

__all__ = ["CALLER_TOKEN_METADATA", "GatewayIdentity", "IdentityNotReady"]

logger = logging.getLogger(__name__)

CALLER_TOKEN_METADATA = "upf-caller-token"
_CALL_TIMEOUT = 5.0
_BACKOFF_MAX = 2.0


class IdentityNotReady(Exception):
    """The gateway is not registered (yet): no token to call plugins with."""


class GatewayIdentity:
    def __init__(self, registry: str, *, plugin_id: str, credential: str, host: str = "127.0.0.1") -> None:
        # registryUrl may be written as a URL (grpc://host:port) or as grpc's host:port.
        for scheme in ("grpc://", "http://", "dns:///"):
            registry = registry.removeprefix(scheme)
        self._registry = registry.rstrip("/")
        self._plugin_id = plugin_id
        self._credential = credential
        # A gateway listening on every interface still answers health checks on loopback.
        self._host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
        self._token = ""
        self._has_token = asyncio.Event()
        self._lease = ""
        self.error = "not registered yet"
        self._server: grpc.aio.Server | None = None
        self._channel: grpc.aio.Channel | None = None
        self._task: asyncio.Task[None] | None = None

    def manifest(self) -> str:
        return json.dumps(
            {
                "id": self._plugin_id,
                "version": "1.0.0",
                "name": "UPF gateway",
                "description": "The gateway's own identity, for its subscription to IMessageBus (/api/events).",
                "type": "infrastructure",
            }
        )

    async def start(self) -> None:
        self._server = grpc.aio.server()
        health = HealthServicer()
        await health.set("", health_pb2.HealthCheckResponse.SERVING)
        health_pb2_grpc.add_HealthServicer_to_server(health, self._server)
        port = self._server.add_insecure_port(f"{self._host}:0")
        await self._server.start()
        self._channel = grpc.aio.insecure_channel(self._registry)
        self._task = asyncio.create_task(self._keep(f"{self._host}:{port}"), name="gateway-identity")

    async def token(self, timeout: float) -> str:
        """The current identity token; IdentityNotReady when there is none within `timeout` seconds."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._has_token.wait(), timeout)
        if not self._token:
            raise IdentityNotReady(f"the gateway has no identity from the registry: {self.error}")
        return self._token

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._lease and self._channel is not None:
            with contextlib.suppress(grpc.aio.AioRpcError):
                stub = registry_pb2_grpc.RegistryStub(self._channel)
                await stub.Unregister(pb.UnregisterRequest(lease_id=self._lease), timeout=_CALL_TIMEOUT)
        if self._channel is not None:
            await self._channel.close(None)
        if self._server is not None:
            await self._server.stop(None)

    async def _keep(self, endpoint: str) -> None:
        assert self._channel is not None
        stub = registry_pb2_grpc.RegistryStub(self._channel)
        backoff = 0.1
        while True:
            try:
                if not self._lease:
                    reply = await stub.Register(
                        pb.RegisterRequest(manifest=self.manifest(), endpoint=endpoint, credential=self._credential),
                        timeout=_CALL_TIMEOUT,
                    )
                    self._lease, ttl, token = reply.lease_id, reply.ttl_seconds, reply.identity_token
                    logger.info("events: the gateway is registered as %s", self._plugin_id)
                else:
                    renewed = await stub.RenewLease(pb.RenewLeaseRequest(lease_id=self._lease), timeout=_CALL_TIMEOUT)
                    ttl, token = renewed.ttl_seconds, renewed.identity_token
                self._token, self.error, backoff = token, "", 0.1
                self._has_token.set()
                await asyncio.sleep(max(ttl / 3, 0.1))  # renew well within the lease
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.NOT_FOUND:
                    self._lease = ""  # the lease ran out (or the registry restarted): register again
                    continue
                self.error = f"registering as {self._plugin_id}: {exc.code().name}: {exc.details()}"
                if exc.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
                    logger.error("events: %s (set events.registrationCredential)", self.error)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, _BACKOFF_MAX)
