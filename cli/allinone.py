"""`upf run`: the whole platform in one process, on embedded defaults.

The registry (memory store) on registryUrl (default 127.0.0.1:50052), the auth plugin (custom
provider, an SQLite store in memory, a demo user), the demo plugin, the infrastructure plugins
(storage-sqlite in memory, cache-memory, files-local and message-bus-memory, or what
`--deployment FILE` chooses) and the orders plugin on the plugin SDK registering with it, and the
gateway routing by it and verifying tokens: the same parts and protocols as the Procfile's separate
processes, so what works here works there. Nothing else needs to run.

The gateway and the auth plugin share one in-process revocation store: a logout is seen at once. With
tracing.otlpEndpoint set, every plugin of the process sends its spans there too, under its own id.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import signal

from cli.deployment import Deployment
from cli.infrastructure import run_infrastructure, wait_started
from common.auth.revocations import MemoryRevocations
from gateway.serve import serve_gateway
from gateway.settings import GatewayAuthSettings, GatewaySettings, IssuerSettings
from plugins.auth.plugin import AuthPlugin, build as build_auth
from plugins.auth.settings import AuthSettings, CustomSettings, JwtSettings
from plugins.demo.plugin import build as build_demo
from plugins.orders.embedded import embedded_orders
from plugins.sdk.tracing import traced_by
from registry.credentials import RegistrationCredentials
from registry.server import serve as serve_registry
from registry.settings import RegistrationSettings, RegistrySettings

__all__ = ["DEFAULT_REGISTRY", "DEMO_USER", "run_all"]

logger = logging.getLogger(__name__)

DEFAULT_REGISTRY = "127.0.0.1:50052"
# For local use only: README shows these so that `make run` can be tried at once.
DEMO_USER = {"username": "demo", "password": "demo-password", "email": "demo@upf.local", "roles": ["user"]}
# The auth plugin's default roles, plus the orders plugin's permissions for the demo user.
DEMO_ROLES = {"admin": ["*"], "user": ["demo:read", "orders:read", "orders:write"]}
_AUTH_START_TIMEOUT = 30.0


def embedded_auth(settings: GatewaySettings, issuer: str) -> GatewaySettings:
    """The gateway's settings with auth on and the embedded plugin's issuer trusted, unless the
    configuration says otherwise (an `auth` section of its own is kept as it is)."""
    if "auth" in settings.model_fields_set:
        return settings
    auth = GatewayAuthSettings(enabled=True, issuers=[IssuerSettings(issuer=issuer)])
    return settings.model_copy(update={"auth": auth})


def embedded_events(settings: GatewaySettings, registration: RegistrationCredentials) -> GatewaySettings:
    """With `events.bus: plugin`, the gateway's registration credential from this run's secret."""
    events = settings.events
    if events.bus != "plugin" or events.registration_credential:
        return settings
    credential = registration.for_plugin(events.plugin_id)
    return settings.model_copy(update={"events": events.model_copy(update={"registration_credential": credential})})


async def run_all(settings: GatewaySettings, deployment: Deployment | None = None) -> None:
    """Run until the gateway stops. `deployment` chooses the infrastructure plugins (cli/deployment.py);
    none: the embedded ones (storage-sqlite in memory, cache-memory, files-local, message-bus-memory).

    A SIGTERM or SIGINT before the gateway serves (from then on the gateway handles them) cancels this
    coroutine: everything started so far stops as it would at the end, its temporary files included.
    """
    loop, starting = asyncio.get_running_loop(), asyncio.current_task()
    if starting is not None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, starting.cancel)
    registry_url = settings.registry_url or DEFAULT_REGISTRY
    host, _, port = registry_url.rpartition(":")
    registry_stopped = asyncio.Event()
    # The platform's own registration secret, for this run: the embedded plugins get their ids' credentials.
    secret = secrets.token_hex(32)
    registration = RegistrationCredentials(secret.encode())
    registry = asyncio.create_task(
        serve_registry(
            RegistrySettings(
                host=host,
                port=int(port),
                log_level=settings.log_level,
                registration=RegistrationSettings(secret=secret),
            ),
            stop=registry_stopped,
        )
    )
    issuer = f"http://{settings.host}:{settings.http_port}"
    revocations = MemoryRevocations()
    auth = build_auth(
        AuthSettings(
            registry_url=registry_url,
            jwt=JwtSettings(issuer=issuer),
            custom=CustomSettings(sqlite_path=":memory:"),
            roles=DEMO_ROLES,
        ),
        revocations=revocations,
        handle_signals=False,
        credential=registration.for_plugin,
    )
    # The plugins' signals are the gateway's: they stop when the gateway has stopped. Their spans go
    # where the gateway's go, each under its own plugin id.
    tracing = settings.tracing
    traced = traced_by(tracing.otlp_endpoint, sample_ratio=tracing.sample_ratio, schedule_delay=tracing.export_interval)
    traced(auth.plugin)
    demo = traced(build_demo(registry=registry_url, handle_signals=False, credential=registration.for_plugin))
    auth_task = asyncio.create_task(auth.run())
    demo_task = asyncio.create_task(demo.run())
    try:
        async with (
            run_infrastructure(deployment or Deployment.embedded(), registry_url, registration.for_plugin, traced),
            embedded_orders(registry_url, registration.for_plugin, traced),
        ):
            await _seed_demo_user(auth, auth_task)
            gateway_settings = embedded_events(embedded_auth(settings, issuer), registration)
            await serve_gateway(
                gateway_settings.model_copy(update={"registry_url": registry_url, "workers": 1}),
                revocations=revocations,
            )
    finally:
        await demo.stop()
        await auth.stop()
        for task in (demo_task, auth_task):
            with contextlib.suppress(Exception):
                await task
        registry_stopped.set()
        with contextlib.suppress(Exception):
            await registry


async def _seed_demo_user(auth: AuthPlugin, auth_task: asyncio.Task[None]) -> None:
    await wait_started("the auth plugin", auth.ready, auth_task, _AUTH_START_TIMEOUT)
    ensure_user = getattr(auth.provider, "ensure_user", None)
    if ensure_user is not None:
        await ensure_user(
            DEMO_USER["username"], DEMO_USER["password"], DEMO_USER["email"], DEMO_USER["roles"], name="Demo User"
        )
        logger.info(
            "demo user %r (password %r) ready: for local use only", *(DEMO_USER[k] for k in ("username", "password"))
        )
