"""create_app(settings): the one place the gateway's pipeline is assembled.

Outermost first, each for a reason:
  AccessLogMiddleware  (accessLog) one JSON line per HTTP request, with the status the client got
  ErrorMiddleware      whatever fails below answers in the client's protocol, never a stack trace
  CorsMiddleware       preflights answered before any work; every answer (errors too) readable by the page
  ShellMiddleware      (shell.enabled) the web shell at / and plugins' UI files at /plugins/<id>/ui/: public
                       files, served before auth and limits; every other path passes on (gateway/shell.py)
  TranscodeMiddleware  REST routes from plugins' google.api.http annotations, under /api/: each served as a
                       call of its method by the one call path, which authenticates and limits it once
                       (gateway/middleware/transcode.py); the gateway's own endpoints win
  AuthMiddleware       (auth.enabled) a verified token on every other REST request except public paths
                       (gateway/auth/)
  RateLimitMiddleware  (rateLimiting.enabled) refuses REST requests before any work; after auth, for `token` keys
  router               the gRPC-Web paths first (the service segment holds a dot), then REST endpoints
                       (a WebSocket upgrade on those paths is the grpc-websockets bridge, gateway/websocket/;
                       /api/mux is upf-mux.v1, many calls on one WebSocket, gateway/websocket/MUX.md)
Every gRPC call, whichever codec it came in (gRPC-Web, native gRPC, grpc-websockets, upf-mux.v1),
is admitted and placed by one call path (gateway/proxy/: ProxyConfig, built once here), which asks the
same Authenticator and limiter; the identity goes to plugins as x-upf-user-* metadata, the trace
context as traceparent (gateway/telemetry/: spans exported with OTLP when tracing.otlpEndpoint is set).

Traffic control: rate limits (per client, and per method from the manifests: gateway/ratelimit/calls.py),
circuit breakers per replica (shared as hints through Redis with circuitBreaker.shareVia), retries of
idempotent calls within a budget (gateway/upstream/retry.py); GET /metrics and /api/admin/traffic.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import logging
from collections import Counter
from collections.abc import AsyncIterator, Callable

import grpc
from starlette.applications import Starlette
from starlette.convertors import Convertor, register_url_convertor
from starlette.middleware import Middleware
from starlette.requests import Request as StarletteRequest
from starlette.responses import Response
from starlette.routing import BaseRoute, Match, Route, WebSocketRoute
from starlette.types import Scope

from common.auth.revocations import Revocations
from common.logs import configure_logging
from gateway.admin import TrafficAdmin, admin_access, allow_from
from gateway.auth.setup import AuthSetup
from gateway.connect.endpoint import ConnectEndpoint
from gateway.connect.openapi import OpenApiEndpoint
from gateway.connect.router import CallRouter
from gateway.descriptors import DescriptorCatalog
from gateway.descriptors.locate import replica_locator
from gateway.edge.guard import process_guard
from gateway.edge.identity_headers import configure as configure_identity_headers
from gateway.errors import GatewayError
from gateway.events import LiveEvents
from gateway.grpcweb.endpoint import GrpcWebEndpoint
from gateway.health import Readiness, healthz
from gateway.ingress.server import IngressServer
from gateway.lifecycle import Components
from gateway.metrics import TrafficMetrics
from gateway.middleware.access_log import AccessLogMiddleware
from gateway.middleware.auth import AuthMiddleware
from gateway.middleware.cors import CorsMiddleware
from gateway.middleware.errors import ErrorMiddleware
from gateway.middleware.ratelimit import RateLimitMiddleware
from gateway.middleware.transcode import TranscodeMiddleware
from gateway.proxy import ProxyConfig
from gateway.ratelimit import identify_from_settings
from gateway.ratelimit.calls import CallLimiter
from gateway.ratelimit.keys import TrustedProxies
from gateway.reflection import ServerReflection
from gateway.settings import GatewaySettings, load_settings
from gateway.shell import DEFAULT_SHELL_DIR, PluginUi, ShellFiles, ShellMiddleware, api_not_found
from gateway.telemetry import CallTelemetry
from gateway.telemetry.access_log import enable_access_log
from gateway.telemetry.latency import LatencyHistograms
from gateway.telemetry.setup import TraceExport, gateway_tracer
from gateway.transcode.endpoint import RestEndpoint
from gateway.transcode.routes import RestRoutes
from gateway.upstream.breaker import BreakerPolicy, BreakerState
from gateway.upstream.breaker_share import BreakerHints
from gateway.upstream.policies import MethodPolicies, split_call
from gateway.upstream.pool import UpstreamPool
from gateway.upstream.registry_routes import RegistryRoutes, manifests_response
from gateway.upstream.retry import Retries
from gateway.websocket import GrpcWebSocketEndpoint, OpenSockets
from gateway.websocket.mux import MuxEndpoint

__all__ = ["create_app", "create_app_from_environment"]

logger = logging.getLogger(__name__)


class _ServiceConvertor(Convertor[str]):
    # A fully qualified gRPC service: at least one dot, so REST paths (/api/manifests) never match.
    regex = r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)+"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


class _MethodConvertor(_ServiceConvertor):
    regex = r"[A-Za-z_][A-Za-z0-9_]*"


_NO_MANIFESTS = b'{"plugins":[],"stale":false}'
_NO_MANIFESTS_ETAG = '"empty"'

register_url_convertor("grpc_service", _ServiceConvertor())
register_url_convertor("grpc_method", _MethodConvertor())


def _log_transition(name: str, previous: BreakerState, state: BreakerState) -> None:
    level = logging.WARNING if state is BreakerState.OPEN else logging.INFO
    logger.log(level, "circuit breaker %s: %s -> %s", name, previous.value, state.value)


def _exposed(pool: UpstreamPool) -> list[str]:
    """The services a client may call now (internal ones are the gateway's and the plugins' own)."""
    exposed = []
    for service in pool.services:
        try:
            pool.route(service)
        except GatewayError:
            continue
        exposed.append(service)
    return exposed


def _owned_by(routes: list[BaseRoute]) -> Callable[[Scope], bool]:
    """Whether one of the gateway's own routes takes a request (with this method or another)."""
    return lambda scope: any(route.matches(scope)[0] is not Match.NONE for route in routes)


def _version() -> str:
    try:
        return importlib.metadata.version("upf")
    except importlib.metadata.PackageNotFoundError:
        return "0"


def create_app(settings: GatewaySettings, *, revocations: Revocations | None = None) -> Starlette:
    """The gateway; `revocations` shares one in-process store with an embedded auth plugin (`upf run`)."""
    breaker = settings.circuit_breaker
    upstreams = settings.upstreams
    if settings.auth_plugin_url is not None and settings.auth.service not in upstreams:
        upstreams = {**upstreams, settings.auth.service: [settings.auth_plugin_url]}
    hints: BreakerHints | None = None
    metrics: TrafficMetrics | None = None

    def on_transition(name: str, previous: BreakerState, state: BreakerState) -> None:
        _log_transition(name, previous, state)
        if metrics is not None:
            metrics.breaker_moved(name, previous, state)
        if hints is not None:
            hints.transition(name, previous, state)

    pool = UpstreamPool(
        upstreams,
        max_message_bytes=settings.max_message_bytes,
        breakers=BreakerPolicy(
            failure_threshold=breaker.failure_threshold,
            reset_timeout=breaker.reset_timeout,
            half_open_probes=breaker.half_open_probes,
            failure_codes=frozenset(grpc.StatusCode[name] for name in breaker.failure_codes),
        )
        if breaker.enabled
        else None,
        on_transition=on_transition,
        balancing=settings.load_balancing,
    )
    if breaker.enabled and breaker.share_via == "redis":
        hints = BreakerHints(
            pool, url=breaker.redis_url, prefix=breaker.key_prefix, reset_timeout=breaker.reset_timeout
        )
    # The running parts, started in the order added (see the lifespan) and closed in reverse.
    components = Components()
    readiness = Readiness(components)
    configure_identity_headers(settings.edge.identity_headers)  # for the in-band metadata readers
    # Per-method policies (requiredPermission, rateLimit, timeout, idempotent) from the manifests.
    policies = MethodPolicies()
    # Rate-limit decisions and store errors, counted for /metrics; one limiter for every entry point.
    # Per-method limits come only from manifests, so only with a registry.
    ratelimit_counters: Counter[str] = Counter()
    limits = settings.rate_limiting
    limited = limits.enabled or (limits.method_limits and settings.registry_url is not None)
    limiter = CallLimiter.from_settings(limits, policies=policies, counters=ratelimit_counters) if limited else None
    identify = identify_from_settings(limits)
    retries = Retries(settings.retries) if settings.retries.enabled else None
    websockets = OpenSockets(grace=settings.websocket.drain_grace)
    latency = LatencyHistograms()
    metrics = TrafficMetrics(pool, limiter, retries, latency=latency, sockets=websockets)
    # Spans (tracing.otlpEndpoint), access lines and latency of every call (gateway/telemetry/).
    tracing = gateway_tracer(settings.tracing)
    proxies = TrustedProxies(limits.trusted_proxies, limits.trusted_hops, limits.ipv6_subnet)
    if settings.access_log:
        enable_access_log()
    telemetry = CallTelemetry(
        tracer=tracing[0] if tracing is not None else None,
        log=settings.access_log,
        client=proxies.address,
        latency=latency,
    )
    admin = TrafficAdmin(
        pool,
        limiter=limiter,
        retries=retries,
        hints=hints,
        # From admin.allowFrom, and with auth on, for a caller holding the permission too.
        authorize=admin_access(allow_from(settings.admin.allow_from), settings.auth.enabled)
        if settings.admin.enabled
        else None,
    )
    # Routes from the registry's health stream, merged with the static `upstreams:` (static wins).
    registry_routes = (
        RegistryRoutes(settings.registry_url, pool, refresh_interval=settings.route_refresh_interval, policies=policies)
        if settings.registry_url
        else None
    )
    auth = AuthSetup(settings, pool, policies, revocations=revocations) if settings.auth.enabled else None
    authenticator = auth.authenticator if auth is not None else None
    # With auth on, a client's token stays at the gateway unless configured otherwise: plugins get
    # the verified identity instead.
    forward_authorization = auth is None or settings.auth.forward_token
    # Every gRPC call, whichever of the four codecs it arrives in, is admitted and placed with these.
    proxy = ProxyConfig(
        pool,
        max_message_bytes=settings.max_message_bytes,
        max_timeout=settings.max_timeout,
        forward_cookies=settings.forward_cookies,
        forward_authorization=forward_authorization,
        policies=policies,
        authenticator=authenticator,
        limiter=limiter,
        identify=identify,
        exempt_paths=frozenset(limits.exempt_paths),
        retries=retries,
        telemetry=telemetry,
    )
    # Connect (JSON and binary) on the same paths; JSON learns each method's schema from the plugin.
    descriptors = DescriptorCatalog(
        replica_locator(pool, registry_routes.version_of if registry_routes is not None else None)
    )
    # Server reflection on the native port: every exposed service, described from the same catalog.
    reflection = ServerReflection(lambda: _exposed(pool), descriptors.service)
    ingress = (
        IngressServer(
            proxy,
            host=settings.host,
            port=settings.grpc_port,
            guard=process_guard(settings.edge),
            local=reflection.methods(),
        )
        if settings.grpc_port
        else None
    )
    grpc_web = GrpcWebEndpoint(proxy)
    calls = CallRouter(grpc_web, ConnectEndpoint(proxy, descriptors))
    openapi = OpenApiEndpoint(lambda: _exposed(pool), descriptors.service, version=_version())
    # REST routes from the same descriptors: the google.api.http annotations of the routed services.
    rest_routes = RestRoutes(lambda: _exposed(pool), descriptors.service)
    grpc_websockets = GrpcWebSocketEndpoint(
        proxy,
        allow_origins=settings.cors.allow_origins,
        sockets=websockets,
        header_timeout=settings.websocket.header_timeout,
    )
    mux = settings.websocket.mux
    mux_endpoint = MuxEndpoint(
        proxy,
        allow_origins=settings.cors.allow_origins,
        sockets=websockets,
        max_streams=mux.max_streams,
        stream_window=mux.stream_window,
        connection_window=mux.connection_window,
    )

    # Live events (/api/events): sockets drained with the others; the bus closed after them.
    events = (
        LiveEvents(
            settings.events,
            cors_origins=settings.cors.allow_origins,
            sockets=websockets,
            still_valid=auth.verifier.still_valid if auth is not None else None,
            registry_url=settings.registry_url,
            endpoints=_endpoints_of(registry_routes) if registry_routes is not None else None,
            host=settings.host,
        )
        if settings.events.enabled
        else None
    )

    # The shell's files, and plugins' UI files fetched from where their manifests say (ui.baseUrl).
    plugin_ui = PluginUi(registry_routes.ui_base_url) if registry_routes is not None else None

    async def drain() -> None:
        # Run by gateway/serve.py before uvicorn's shutdown and so before the lifespan's: uvicorn
        # would close every WebSocket with 1012 first, cutting calls in flight.
        readiness.ready, readiness.reason = False, "shutting down"
        await websockets.drain()

    async def leave_rotation() -> None:
        # Run by gateway/serve.py on SIGTERM before `drain`, with the ports still open: /readyz fails
        # for shutdownDelay seconds while calls are still served, so that the proxy in front stops
        # sending new ones before the gateway closes its ports.
        readiness.ready, readiness.reason = False, "shutting down"
        await asyncio.sleep(settings.shutdown_delay)

    # Start order; shutdown runs it backwards. Each name is its section of /readyz (if it has a status).
    components.add("tracing", TraceExport(tracing[1]) if tracing is not None else None)  # the last spans go out last
    components.add("upstreams", pool)  # closed (nearly) last: every call has ended by then
    components.add("descriptors", descriptors)
    components.add("pluginUi", plugin_ui)
    components.add("rateLimiter", limiter)
    components.add("breakerHints", hints)
    components.add("registry", registry_routes)  # waits briefly for the first routes table
    components.add("auth", auth)  # after the routes: the built-in issuer's keys come from the auth plugin
    components.add("events", events)  # a bus that is down is retried in the background: see /readyz
    components.add("ingress", ingress)  # native gRPC: listening last, closed first (running calls finish)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with components.running():
            readiness.ready = True
            try:
                yield
            finally:
                readiness.ready, readiness.reason = False, "shutting down"

    async def manifests(request: StarletteRequest) -> Response:
        if registry_routes is not None:
            return await registry_routes.manifests(request)
        return manifests_response(request, _NO_MANIFESTS, _NO_MANIFESTS_ETAG)  # no registry: no UI plugins

    # gRPC-Web first: it is nearly all the traffic, and its paths (a dotted service segment) never
    # collide with a REST path.
    routes = [
        Route("/{service:grpc_service}/{method:grpc_method}", calls),
        Route("/api/{service:grpc_service}/{method:grpc_method}", calls),
        # The same paths upgraded to a WebSocket: grpc-websockets, for client-streaming and bidi calls.
        WebSocketRoute("/{service:grpc_service}/{method:grpc_method}", grpc_websockets),
        WebSocketRoute("/api/{service:grpc_service}/{method:grpc_method}", grpc_websockets),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readiness.readyz, methods=["GET"]),
        Route("/api/manifests", manifests, methods=["GET"]),
        Route("/api/openapi.json", openapi.respond, methods=["GET"]),
        *(events.routes() if events is not None else []),
        Route("/api/admin/traffic", admin.endpoint, methods=["GET"]),
        Route("/metrics", metrics.endpoint, methods=["GET"]),
    ]
    if auth is not None:
        routes += auth.endpoints.routes()
    if mux.enabled:
        routes.append(WebSocketRoute("/api/mux", mux_endpoint))
    middleware = [
        *([Middleware(AccessLogMiddleware, client=proxies.address)] if settings.access_log else []),
        Middleware(ErrorMiddleware),
        Middleware(CorsMiddleware, settings=settings.cors),
    ]
    if settings.shell.enabled:
        files = ShellFiles(settings.shell.dir or DEFAULT_SHELL_DIR)
        middleware.append(Middleware(ShellMiddleware, files=files, plugin_ui=plugin_ui))
    middleware.append(
        Middleware(TranscodeMiddleware, routes=rest_routes, endpoint=RestEndpoint(proxy), owned=_owned_by(routes))
    )
    if authenticator is not None:
        # WebSocket calls carry their token in their first message (grpc-websockets) or in each
        # call's metadata (upf-mux.v1), as a browser cannot set headers on an upgrade.
        middleware.append(
            Middleware(
                AuthMiddleware,
                authenticator=authenticator,
                authenticates_in_band=lambda path: path == "/api/mux" or split_call(path) is not None,
            )
        )
    if limiter is not None:
        middleware.append(
            Middleware(RateLimitMiddleware, limiter=limiter, identify=identify, exempt_paths=limits.exempt_paths)
        )
    app = Starlette(routes=routes, middleware=middleware, lifespan=lifespan)
    # No route at all: an /api/ path answers a JSON 404 like the rest of the API (a known path with
    # another method still gets the router's 405).
    app.router.default = api_not_found(app.router.default)
    # What is read from outside: gateway/serve.py's shutdown hooks, and the tests' handles.
    app.state.drain = drain  # awaited once at shutdown, before the server closes its connections
    app.state.leave_rotation = leave_rotation  # awaited before drain, while the ports are still open
    app.state.access_log = settings.access_log  # uvicorn's WebSocket handshake lines follow it (serve.py)
    app.state.pool = pool
    app.state.events = events
    app.state.ratelimit_counters = ratelimit_counters
    return app


def create_app_from_environment() -> Starlette:
    """Factory for `uvicorn --factory` and worker processes: settings from $UPF_CONFIG and UPF_* variables."""
    settings = load_settings()
    configure_logging(settings.log_level)
    return create_app(settings)


def _endpoints_of(routes: RegistryRoutes) -> Callable[[str], list[str]]:
    """service -> the endpoints the registry routes it to now (for the events' IMessageBus plugin)."""
    return lambda service: list(routes.routes().get(service, []))
