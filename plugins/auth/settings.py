"""Auth plugin configuration: a YAML file plus `UPF_*` overrides, read like the gateway's (common/config.py).

The seed's shape, with the settings at the top of the file or, as the seed writes them, inside one
top-level `auth:` section; `${VAR}` in a value is filled from the environment (common/config.py):

    provider: custom                 # custom | keycloak | auth0
    jwt: {issuer: http://127.0.0.1:8080, audience: upf-api, algorithm: EdDSA, leeway: 30,
          keyRotationInterval: 86400, keyPublishAhead: 600,
          publicKeyUrl: https://auth.example.com/.well-known/jwks.json}
    session: {accessTokenTTL: 3600, refreshTokenTTL: 604800}
    custom: {store: sqlite, sqlitePath: .upf/auth.db, passwordHash: {timeCost: 3, memoryCost: 65536, parallelism: 4}}
    keycloak: {serverUrl: https://keycloak.example.com, realm: upf, clientId: upf-gateway,
               clientSecret: "${KEYCLOAK_SECRET}"}
    auth0: {domain: tenant.eu.auth0.com, clientId: ..., clientSecret: ...}
    revocation: {store: redis, redisUrl: redis://127.0.0.1:6379/0, keyPrefix: upf:auth}
    roles: {admin: ["*"], user: ["demo:read"]}   # role -> permissions
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator

from common.auth.settings import RevocationSettings
from common.config import HttpUrl, Section as _Section, load_config

__all__ = [
    "Auth0Settings",
    "AuthSettings",
    "CustomSettings",
    "JwtSettings",
    "KeycloakSettings",
    "PasswordHashSettings",
    "RevocationSettings",
    "SessionSettings",
    "load_auth_settings",
]


class JwtSettings(_Section):
    issuer: str = Field(
        default="http://127.0.0.1:8080",
        description=(
            "`iss` of the tokens the custom provider signs (the gateway's public URL is a good choice); for "
            "keycloak and auth0 the issuer comes from their discovery document and this is ignored."
        ),
    )
    audience: str = Field(
        default="upf-api", description="`aud` of the tokens signed, and required of the tokens accepted"
    )
    algorithm: Literal["RS256", "EdDSA"] = Field(
        default="EdDSA", description="signing algorithm of the custom provider"
    )
    leeway: float = Field(default=30.0, ge=0, description="seconds of clock skew tolerated on exp / nbf / iat")
    key_rotation_interval: float = Field(default=86400.0, gt=0, description="seconds a signing key is used")
    key_publish_ahead: float = Field(
        default=600.0,
        ge=0,
        description=(
            "Seconds the next signing key is in the JWKS (GetJwks) before it signs. Keep it at least the "
            "gateways' auth.jwksMaxAge (300 s by default): every gateway then holds the key before it meets a "
            "token signed with it, and never depends on an unknown-kid refetch."
        ),
    )
    public_key_url: HttpUrl | None = Field(
        default=None,
        description=(
            "The issuer's public keys (a JWKS URL). keycloak and auth0: fetched from here instead of the "
            "jwks_uri of their discovery document (a mirror, or an address reachable from inside). custom "
            "signs with its own keys and publishes them itself (GetJwks, served by every gateway at "
            "/.well-known/jwks.json), so it does not read this: like `issuer` for the other providers, the "
            "key is accepted so that one file can switch `provider`."
        ),
    )

    @model_validator(mode="after")
    def _publish_within_interval(self) -> JwtSettings:
        if self.key_publish_ahead >= self.key_rotation_interval:
            raise ValueError(
                f"keyPublishAhead ({self.key_publish_ahead:g} s) must be less than keyRotationInterval "
                f"({self.key_rotation_interval:g} s): the next key is published that long before the "
                "current one's interval ends"
            )
        return self


class SessionSettings(_Section):
    access_token_ttl: int = Field(
        default=3600, gt=0, alias="accessTokenTTL", description="Seconds an access token is valid."
    )
    refresh_token_ttl: int = Field(
        default=604800,
        gt=0,
        alias="refreshTokenTTL",
        description="Seconds a refresh token is valid (each refresh brings a new one).",
    )


class PasswordHashSettings(_Section):
    time_cost: int = Field(
        default=3,
        ge=1,
        description=(
            "argon2id parameters (RFC 9106's second recommendation by default: 64 MiB, 3 passes, 4 lanes). "
            "Stored hashes made with other parameters are rehashed at the user's next successful login."
        ),
    )
    memory_cost: int = Field(default=65536, ge=8, description="KiB")
    parallelism: int = Field(default=4, ge=1, description="argon2id lanes.")
    max_concurrent: int | None = Field(
        default=None,
        ge=1,
        description=(
            "Password checks at once (none: as many as the cores allow, cores / parallelism, at least 1); "
            "a login beyond these and maxQueued is refused at once (RESOURCE_EXHAUSTED)."
        ),
    )
    max_queued: int = Field(default=4, ge=0, description="Password checks that may wait for one of maxConcurrent.")
    max_queue_wait: float = Field(
        default=3.0,
        gt=0,
        description="Seconds a password check may wait for a slot; then the login is refused (RESOURCE_EXHAUSTED).",
    )


class CustomSettings(_Section):
    store: Literal["sqlite", "postgres"] = Field(
        default="sqlite",
        description="Users, roles, refresh tokens and signing keys: an SQLite file (embedded default) or PostgreSQL.",
    )
    sqlite_path: str = Field(default=".upf/auth.db", description='":memory:" for a throw-away store')
    postgres_url: str = Field(
        default="postgresql://127.0.0.1:5432/upf", description="The PostgreSQL database of the postgres store."
    )
    postgres_pool_size: int = Field(default=10, ge=1, description="Connections to PostgreSQL.")
    password_hash: PasswordHashSettings = Field(default_factory=PasswordHashSettings)
    maintenance_interval: float = Field(
        default=60.0,
        gt=0,
        description=(
            "Seconds between housekeeping rounds: rotate the signing key when due, drop keys whose tokens "
            "have all expired, delete expired refresh tokens."
        ),
    )
    key_passphrase: SecretStr | None = Field(
        default=None,
        min_length=12,
        description=(
            "Encrypts the signing keys' private parts in the store (PKCS#8, the best scheme cryptography "
            "offers), so a copy of the database alone signs nothing. Give it through the environment "
            "(UPF_CUSTOM__KEY_PASSPHRASE), not the file. Keys stored without one still load."
        ),
    )


class KeycloakSettings(_Section):
    server_url: str = Field(
        default="", description="e.g. https://keycloak.example.com; the issuer is <serverUrl>/realms/<realm>"
    )
    realm: str = Field(default="upf", description="The realm whose users sign in.")
    client_id: str = Field(default="upf-gateway", description="The gateway's client in the realm.")
    client_secret: str = Field(
        default="", description="Its secret (give it through the environment or a ${VAR} placeholder)."
    )


class Auth0Settings(_Section):
    domain: str = Field(default="", description="e.g. tenant.eu.auth0.com, or a full https:// URL")
    client_id: str = Field(default="", description="The Auth0 application's client id.")
    client_secret: str = Field(
        default="",
        description="The Auth0 application's client secret (give it through the environment or a ${VAR} placeholder).",
    )
    roles_claim: str = Field(default="https://upf/roles", description="Auth0 puts roles in a namespaced custom claim")


class AuthSettings(_Section):
    host: str = Field(default="127.0.0.1", description="Address to listen on.")
    port: int = Field(default=0, ge=0, le=65535, description="0 picks a free port (the registry tells the gateway)")
    registry_url: str = Field(default="127.0.0.1:50052", description="host:port of the plugin registry.")
    registration_credential: str = Field(
        default="",
        description=(
            "This plugin id's registration credential (`upf registry --credential-for auth-plugin`); empty: "
            "the SDK looks for the registry's secret file (plugins/sdk/credentials.py)."
        ),
    )
    provider: Literal["custom", "keycloak", "auth0"] = Field(
        default="custom",
        description="Who owns the users: custom (this plugin's store) | keycloak | auth0 (an OpenID Connect issuer).",
    )
    jwt: JwtSettings = Field(default_factory=JwtSettings)
    session: SessionSettings = Field(default_factory=SessionSettings)
    custom: CustomSettings = Field(default_factory=CustomSettings)
    keycloak: KeycloakSettings = Field(default_factory=KeycloakSettings)
    auth0: Auth0Settings = Field(default_factory=Auth0Settings)
    revocation: RevocationSettings = Field(default_factory=RevocationSettings)
    roles: dict[str, list[str]] = Field(
        default_factory=lambda: {"admin": ["*"], "user": ["demo:read"]},
        description='Role -> permissions. "*" grants every permission; "orders:*" every permission in "orders".',
    )


def load_auth_settings(path: str | Path | None = None, environ: Mapping[str, str] | None = None) -> AuthSettings:
    return load_config(AuthSettings, path, environ, section="auth")
