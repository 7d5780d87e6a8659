"""The auth plugin as a process on the plugin SDK: `upf plugin auth --config auth.yaml`.

It serves upf.auth.v1.Auth (with health and reflection), registers plugins/auth/manifest.yaml with
the registry and renews its lease. `upf run` embeds the same thing, handing it the gateway's
revocation store so that a logout is refused by the gateway at once:

    auth = build(settings, revocations=shared, handle_signals=False)
    task = asyncio.create_task(auth.run())
    await auth.ready.wait()
    await auth.provider.ensure_user("demo", "demo", "demo@example.org", ["user"])   # custom provider only
    ...
    await auth.stop()
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from upf.auth.v1 import auth_pb2_grpc

from common.auth.revocations import Revocations
from manifests import ManifestError
from plugins.auth.provider import Provider
from plugins.auth.providers import ProviderUnavailable, make_provider, make_revocations
from plugins.auth.service import AuthService
from plugins.auth.settings import AuthSettings
from plugins.auth.store.base import StoreUnavailable
from plugins.sdk import Plugin, RegistrationRejected, Timings
from plugins.sdk.credentials import Credential

__all__ = ["MANIFEST", "AuthPlugin", "build", "main"]

MANIFEST = Path(__file__).with_name("manifest.yaml")


class AuthPlugin:
    """The provider, its revocation store and the SDK plugin serving them, started and stopped together."""

    def __init__(self, plugin: Plugin, provider: Provider, revocations: Revocations, *, owns_revocations: bool) -> None:
        self.plugin = plugin
        self.provider = provider
        self.revocations = revocations
        self._owns_revocations = owns_revocations
        self.ready = asyncio.Event()  # set once the provider has started and the server is serving

    async def run(self) -> None:
        """Start the provider, then serve until SIGTERM/SIGINT or `stop()`; everything is closed on the way out."""
        try:
            if self._owns_revocations:
                await self.revocations.start()
            await self.provider.start()
            serving = asyncio.create_task(self.plugin.run())
            started = asyncio.create_task(self.plugin.started.wait())
            await asyncio.wait({serving, started}, return_when=asyncio.FIRST_COMPLETED)
            if self.plugin.started.is_set():
                self.ready.set()
            started.cancel()
            await serving
        finally:
            await self.provider.close()
            if self._owns_revocations:
                await self.revocations.close()

    async def stop(self) -> None:
        await self.plugin.stop()


def build(
    settings: AuthSettings,
    *,
    revocations: Revocations | None = None,
    provider: Provider | None = None,
    instance_id: str | None = None,
    manifest: str | Path = MANIFEST,
    drain_grace: float = 10.0,
    handle_signals: bool = True,
    timings: Timings | None = None,
    credential: Credential | None = None,
) -> AuthPlugin:
    """The plugin for `settings`; a revocation store passed in is shared (started and closed by its owner)."""
    owns = revocations is None
    revocations = revocations if revocations is not None else make_revocations(settings.revocation)
    provider = provider if provider is not None else make_provider(settings, revocations)
    plugin = Plugin(
        manifest,
        [(auth_pb2_grpc.add_AuthServicer_to_server, AuthService(provider))],
        handle_signals=handle_signals,
        registry=settings.registry_url,
        host=settings.host,
        port=settings.port,
        instance_id=instance_id,
        timings=timings or Timings(drain_grace=drain_grace),
        credential=credential if credential is not None else settings.registration_credential or None,
    )
    return AuthPlugin(plugin, provider, revocations, owns_revocations=owns)


def main(
    settings: AuthSettings,
    *,
    instance_id: str | None = None,
    manifest: str | Path = MANIFEST,
    drain_grace: float = 10.0,
) -> int:
    """Run until SIGTERM/SIGINT; the exit status (0 after a graceful stop, 1 when it cannot start)."""
    try:
        auth = build(settings, instance_id=instance_id, manifest=manifest, drain_grace=drain_grace)
    except ManifestError as exc:
        print(f"upf: invalid manifest:\n{exc}", file=sys.stderr)
        return 1
    except (ProviderUnavailable, OSError) as exc:
        print(f"upf: {exc}", file=sys.stderr)
        return 1
    try:
        asyncio.run(auth.run())
    except (StoreUnavailable, RegistrationRejected, OSError) as exc:
        print(f"upf: {exc}", file=sys.stderr)
        return 1
    return 0
