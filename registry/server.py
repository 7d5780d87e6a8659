"""`upf registry`: the Registry service on grpc.aio, with grpc.health.v1 and reflection for itself.

    build_registry(settings, store, clock) -> (PluginRegistry, HealthMonitor)
    serve(settings)                        -> runs until SIGINT / SIGTERM, then stops gracefully

One interceptor turns the domain errors of registry/errors.py into gRPC statuses with their message,
so RPC methods never deal with status codes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection
from upf.registry.v1 import registry_pb2, registry_pb2_grpc

from registry.core import PluginRegistry
from registry.credentials import RegistrationCredentials, secret_from_file
from registry.health import GrpcHealthChecker, HealthMonitor
from registry.identity import IdentityIssuer
from registry.model import Clock, RegistryError
from registry.service import RegistryService
from registry.settings import RegistrationSettings, RegistrySettings
from registry.store.base import PluginStore
from registry.store.memory import MemoryPluginStore
from registry.store.redis import RedisPluginStore

__all__ = ["DomainErrorInterceptor", "build_store", "run_registry", "serve"]

logger = logging.getLogger(__name__)

SERVICE_NAME = registry_pb2.DESCRIPTOR.services_by_name["Registry"].full_name


class DomainErrorInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Aborts with the error's status and message when a method raises a RegistryError."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        # grpc-stubs types handlers for the synchronous server; here the behaviours are coroutines.
        handler: Any = await continuation(handler_call_details)
        if handler is None:
            return handler
        if handler.unary_unary is not None:
            unary = handler.unary_unary

            async def unary_unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
                try:
                    return await unary(request, context)
                except RegistryError as exc:
                    await _abort(context, exc)

            return grpc.unary_unary_rpc_method_handler(
                unary_unary, handler.request_deserializer, handler.response_serializer
            )
        if handler.unary_stream is not None:
            stream = handler.unary_stream

            async def unary_stream(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
                try:
                    async for reply in stream(request, context):
                        yield reply
                except RegistryError as exc:
                    await _abort(context, exc)

            return grpc.unary_stream_rpc_method_handler(
                unary_stream, handler.request_deserializer, handler.response_serializer
            )
        return handler


async def _abort(context: grpc.aio.ServicerContext[Any, Any], exc: RegistryError) -> None:
    await context.abort(getattr(grpc.StatusCode, exc.code), str(exc))


def registration_credentials(settings: RegistrationSettings) -> RegistrationCredentials | None:
    if settings.open:
        logger.warning("registration is open: any process that reaches the registry may register a plugin id")
        return None
    if settings.secret:
        return RegistrationCredentials(settings.secret.encode())
    try:
        return RegistrationCredentials(secret_from_file(Path(settings.secret_file)))
    except (OSError, ValueError) as exc:
        raise SystemExit(f"upf: registration.secretFile {settings.secret_file}: {exc}") from None


def build_store(settings: RegistrySettings) -> PluginStore:
    if settings.store == "redis":
        return RedisPluginStore.from_url(settings.redis_url, prefix=settings.key_prefix, history=settings.history)
    return MemoryPluginStore(history=settings.history)


async def serve(
    settings: RegistrySettings,
    *,
    store: PluginStore | None = None,
    clock: Clock = time.time,
    stop: asyncio.Event | None = None,
) -> None:
    """Serve until `stop` is set (by default: on SIGINT or SIGTERM)."""
    store = store if store is not None else build_store(settings)
    registry = PluginRegistry(
        store, clock, lease_ttl=settings.lease_ttl, credentials=registration_credentials(settings.registration)
    )
    checker = GrpcHealthChecker()
    monitor = HealthMonitor(registry, checker, settings.health)

    server = grpc.aio.server(interceptors=[DomainErrorInterceptor()])
    identity = await IdentityIssuer.from_store(store, ttl=settings.identity_token_ttl, clock=clock)
    registry_pb2_grpc.add_RegistryServicer_to_server(RegistryService(registry, monitor, identity), server)
    own_health = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(own_health, server)
    reflection.enable_server_reflection(
        [SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME], server
    )
    port = server.add_insecure_port(f"{settings.host}:{settings.port}")
    await server.start()
    for name in ("", SERVICE_NAME):
        await own_health.set(name, health_pb2.HealthCheckResponse.SERVING)
    # Tests and supervisors read the bound port from this line (port 0 picks a free one).
    print(f"registry listening on {settings.host}:{port} (store: {settings.store})", file=sys.stderr, flush=True)

    if stop is None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
    monitoring = asyncio.create_task(monitor.run(), name="health monitor")
    try:
        await stop.wait()
    finally:
        logger.info("registry stopping")
        for name in ("", SERVICE_NAME):
            await own_health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        monitoring.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await monitoring
        await server.stop(grace=2.0)
        await checker.close()
        await store.close()


def run_registry(settings: RegistrySettings) -> None:
    asyncio.run(serve(settings))
