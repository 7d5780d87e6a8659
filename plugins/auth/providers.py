"""Choosing the provider and the revocation store from the settings."""

from __future__ import annotations

import importlib
from typing import cast

from common.auth.revocations import MemoryRevocations, RedisRevocations, Revocations
from plugins.auth.provider import Provider
from plugins.auth.settings import AuthSettings, RevocationSettings

__all__ = ["ProviderUnavailable", "make_provider", "make_revocations"]


class ProviderUnavailable(Exception):
    """The configured provider cannot be loaded."""


def make_revocations(settings: RevocationSettings) -> Revocations:
    if settings.store == "redis":
        return RedisRevocations(settings.redis_url, settings.key_prefix)
    return MemoryRevocations()


def make_provider(settings: AuthSettings, revocations: Revocations) -> Provider:
    """The provider named by settings.provider: `custom` here, `keycloak` and `auth0` from plugins.auth.oidc."""
    if settings.provider == "custom":
        from plugins.auth.custom import CustomProvider

        return CustomProvider(settings, revocations)
    try:
        # Imported by name, only when configured: the OIDC provider is a module of its own.
        oidc = importlib.import_module("plugins.auth.oidc")
    except ModuleNotFoundError as exc:
        if exc.name != "plugins.auth.oidc":
            raise ProviderUnavailable(f"provider {settings.provider!r}: cannot import {exc.name}: {exc}") from None
        raise ProviderUnavailable(
            f"provider {settings.provider!r} needs plugins/auth/oidc.py (OidcProvider), which is not installed; "
            "use provider: custom"
        ) from None
    provider_class = getattr(oidc, "OidcProvider", None)
    if provider_class is None:
        raise ProviderUnavailable(f"provider {settings.provider!r}: plugins.auth.oidc has no OidcProvider")
    return cast(Provider, provider_class(settings, revocations))
