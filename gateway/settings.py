"""Gateway configuration: one YAML file plus `UPF_*` environment overrides, parsed once at start-up.

Keys follow the seed's GatewayConfig (camelCase). An environment variable names a key path in upper
snake case with `__` between levels, and its value is read as YAML:

    UPF_HTTP_PORT=9000                          -> httpPort: 9000
    UPF_RATE_LIMITING__REQUESTS_PER_SECOND=50   -> rateLimiting.requestsPerSecond: 50
    UPF_CORS__ALLOW_ORIGINS='["https://app.example"]'

An unknown or invalid key stops start-up with a `ConfigError` that names the key and where it came from.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.alias_generators import to_camel

__all__ = [
    "CONFIG_ENV",
    "AdminSettings",
    "ConfigError",
    "CorsSettings",
    "EventsSettings",
    "GatewayAuthSettings",
    "GatewaySettings",
    "IssuerSettings",
    "MuxSettings",
    "RateLimitSettings",
    "RedisUrl",
    "RetrySettings",
    "WebSocketSettings",
    "load_config",
    "load_settings",
]

CONFIG_ENV = "UPF_CONFIG"
ENV_PREFIX = "UPF_"

StatusName = Literal[
    "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND", "ALREADY_EXISTS",
    "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE",
    "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED",
]  # fmt: skip
_SERVICE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+$")
_ENDPOINT = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):(\d{1,5})$")


_Model = TypeVar("_Model", bound=BaseModel)


class ConfigError(Exception):
    """The configuration cannot be used; the message names the key and its source."""


class _Section(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)


def _check_endpoint(value: str) -> str:
    match = _ENDPOINT.match(value)
    if not match or not 0 < int(match.group(2)) < 65536:
        raise ValueError(f"{value!r} is not host:port")
    return value


Endpoint = Annotated[str, AfterValidator(_check_endpoint)]


def _check_network(value: str) -> str:
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise ValueError(f"{value!r} is not an IP address or CIDR") from None
    return value


Network = Annotated[str, AfterValidator(_check_network)]


def _check_redis_url(url: str) -> str:
    if not url.startswith(("redis://", "rediss://", "unix://")):
        raise ValueError(f"{url!r} is not a redis://, rediss:// or unix:// URL")
    return url


RedisUrl = Annotated[str, AfterValidator(_check_redis_url)]


class RateLimitSettings(_Section):
    """A token bucket per client: `burstSize` requests at once, refilled at `requestsPerSecond`."""

    enabled: bool = False
    requests_per_second: float = Field(default=100.0, gt=0)  # refill rate, per client
    burst_size: int = Field(default=200, ge=1)  # bucket size: requests a rested client may send at once
    # Whom requests count against: the client address; the verified subject (auth sets it; `ip`
    # without one); or the `apiKeyHeader` value (`ip` without one).
    key_extractor: Literal["ip", "token", "apiKey"] = "ip"
    # Where the buckets live: this process ("memory": each worker process and replica counts on its
    # own), or Redis, shared by every worker and replica.
    store: Literal["memory", "redis"] = "memory"
    redis_url: RedisUrl = "redis://127.0.0.1:6379/0"  # redis://, rediss:// or unix://
    key_prefix: str = Field(default="upf:rl", min_length=1)  # Redis keys are <prefix>:<policy>:<identity>
    redis_timeout: float = Field(default=0.25, gt=0)  # seconds for Redis to connect or answer
    redis_max_connections: int = Field(default=64, ge=1)  # per gateway process; more requests wait
    # When Redis fails: "open" lets requests through, "closed" answers UNAVAILABLE / 503, "local"
    # limits each gateway process on its own to requestsPerSecond / replicas (and burstSize / replicas).
    failure_mode: Literal["open", "closed", "local"] = "local"
    # Gateway processes sharing Redis (replicas x workers): how the "local" fallback shares the limit,
    # and how much of a bucket one lease may take.
    replicas: int = Field(default=1, ge=1)
    # Redis store: each round trip may lease up to this many tokens beyond the waiting calls' own,
    # spent here without a round trip for up to leaseSeconds. 0: a round trip per decision, exact.
    # Leases never let more through than the bucket; a gateway's unspent lease may make another
    # refuse early (gateway/ratelimit/lease.py). Every gateway on one keyPrefix must agree.
    lease_tokens: int = Field(default=0, ge=0, le=10_000)
    lease_seconds: float = Field(default=1.0, gt=0, le=10)
    # X-Forwarded-For is believed only from these proxies (CIDRs or addresses) ...
    trusted_proxies: list[Network] = Field(default_factory=list)
    # ... and for at most this many hops (with no trustedProxies: from whichever proxy is in front).
    trusted_hops: int | None = Field(default=None, ge=0)
    ipv6_subnet: int = Field(default=64, ge=1, le=128)  # IPv6 clients share a bucket per prefix of this length
    api_key_header: str = Field(default="x-api-key", pattern=r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
    # Paths never limited, besides /healthz, /readyz and /metrics (which never are).
    exempt_paths: list[str] = Field(default_factory=list)
    # Per-method limits from the plugins' manifests (policies.rateLimit), on the same store and
    # failure mode, in addition to the per-client limit above (which `enabled` turns on).
    method_limits: bool = True

    @field_validator("exempt_paths")
    @classmethod
    def _check_paths(cls, paths: list[str]) -> list[str]:
        for path in paths:
            if not path.startswith("/"):
                raise ValueError(f"{path!r} is not a path (it must start with /)")
        return paths

    @model_validator(mode="after")
    def _leases_need_redis(self) -> RateLimitSettings:
        if self.lease_tokens and self.store != "redis":
            raise ValueError("leaseTokens applies to the Redis store only (store: redis)")
        return self


def _default_failure_codes() -> list[StatusName]:
    return ["UNAVAILABLE", "DEADLINE_EXCEEDED"]


class CircuitBreakerSettings(_Section):
    enabled: bool = True
    failure_threshold: int = Field(default=5, ge=1)  # consecutive failures before the breaker opens
    reset_timeout: float = Field(default=30.0, gt=0)  # seconds open before a half-open probe
    half_open_probes: int = Field(default=1, ge=1)  # probe calls at once while half-open
    # gRPC statuses that count as the replica's failure (transport errors always do). Client errors
    # such as INVALID_ARGUMENT or NOT_FOUND prove the replica is alive: never list them.
    failure_codes: list[StatusName] = Field(default_factory=_default_failure_codes)
    # "redis": a breaker that opens here tells the other gateways (SET with a TTL of resetTimeout,
    # and PUBLISH), which open theirs for that replica too; each still probes on its own clock.
    # A hint only: with Redis down every gateway goes on deciding alone.
    share_via: Literal["none", "redis"] = "none"
    redis_url: RedisUrl = "redis://127.0.0.1:6379/0"
    key_prefix: str = Field(default="upf:cb", min_length=1)


class RetrySettings(_Section):
    """Retries of calls the upstream refused before answering anything (UNAVAILABLE, connection
    refused or lost, GOAWAY), for methods whose manifest policy says `idempotent: true`, to another
    replica, within a budget: retries may add `budgetRatio` of the retryable calls over the last
    10 s, plus `minPerSecond` (so that a quiet service can still retry at all)."""

    enabled: bool = True
    budget_ratio: float = Field(default=0.2, ge=0, le=1)
    min_per_second: float = Field(default=1.0, ge=0)
    max_attempts: int = Field(default=2, ge=1, le=5)  # the first try included


def _loopback() -> list[str]:
    return ["127.0.0.1/32", "::1/128"]


class AdminSettings(_Section):
    """GET /api/admin/traffic: breaker, limiter and retry-budget state. Off unless enabled, and then
    only for clients in `allowFrom` (the connection's peer address; X-Forwarded-For is not read)."""

    enabled: bool = False
    allow_from: list[Network] = Field(default_factory=_loopback)


class ShellSettings(_Section):
    """The web shell at / and the plugins' UI files under /plugins/<id>/ui/ (gateway/shell.py)."""

    enabled: bool = True
    # The shell's build (npm run build in shell-web/); none: shell-web/dist next to this package.
    dir: Path | None = None


class CorsSettings(_Section):
    # Origins allowed to call from a browser, exactly as the browser sends them ("https://app.example"),
    # or "*" for any origin (then credentials are never allowed).
    allow_origins: list[str] = Field(default_factory=list)
    allow_credentials: bool = True
    max_age: int = Field(default=600, ge=0)  # seconds a browser may cache a preflight answer


class MuxSettings(_Section):
    # upf-mux.v1 on /api/mux (gateway/websocket/MUX.md): many gRPC calls on one WebSocket.
    enabled: bool = True
    max_streams: int = Field(default=100, ge=1)  # calls open at once on one socket; more get RESOURCE_EXHAUSTED
    # Request bytes a client may send on one call, and on all of a socket's calls together, before
    # the gateway gives credit back (it does once the upstream has taken them): what a slow upstream
    # can leave waiting in the gateway.
    stream_window: int = Field(default=256 * 1024, ge=1024, le=2**31 - 1)
    connection_window: int = Field(default=1024 * 1024, ge=1024, le=2**31 - 1)


class WebSocketSettings(_Section):
    # Seconds between the server's pings on an open WebSocket (so proxies with an idle timeout keep
    # it open, and dead peers are noticed), and how long a ping may wait for its pong before the
    # socket is closed. null turns either off.
    ping_interval: float | None = Field(default=20.0, gt=0)
    ping_timeout: float | None = Field(default=20.0, gt=0)
    # Seconds a shutdown lets grpc-websockets calls in flight finish before it cuts them (UNAVAILABLE,
    # close 1001); idle sockets are closed at once. uvicorn's graceful-shutdown timeout follows it.
    drain_grace: float = Field(default=10.0, ge=0)
    # Seconds a grpc-websockets socket may take to send its header block before it is closed (1008).
    header_timeout: float = Field(default=10.0, gt=0)
    mux: MuxSettings = Field(default_factory=MuxSettings)


Algorithm = Literal[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"
]  # fmt: skip  # asymmetric only: an HS* key would be a shared secret, and "none" is no signature


def _check_url(value: str) -> str:
    if not value.startswith(("http://", "https://")):
        raise ValueError(f"{value!r} is not an http:// or https:// URL")
    return value


HttpUrl = Annotated[str, AfterValidator(_check_url)]


def _default_algorithms() -> list[Algorithm]:
    return ["EdDSA", "RS256"]


class IssuerSettings(_Section):
    """One token issuer the gateway trusts; its tokens are verified with its own keys only."""

    issuer: str = Field(min_length=1)  # `iss` exactly as the issuer writes it
    audience: list[str] = Field(default_factory=lambda: ["upf-api"], min_length=1)  # `aud` must hold one
    # Pinned: a token whose header names another algorithm is refused before any key is looked at.
    algorithms: list[Algorithm] = Field(default_factory=_default_algorithms, min_length=1)
    # Where the keys come from: a JWKS URL; or the issuer's OpenID discovery document (`discovery:
    # true`); or, with neither, the auth plugin's GetJwks (the built-in `custom` provider).
    jwks_uri: HttpUrl | None = None
    discovery: bool = False
    # Claims (dotted paths into the token) that hold the roles, permissions and e-mail address:
    # Keycloak keeps roles in "realm_access.roles", Auth0 in a namespaced claim.
    roles_claim: str = "roles"
    permissions_claim: str = "permissions"
    email_claim: str = "email"


class RevocationStoreSettings(_Section):
    # Where revoked sessions and tokens are learnt: this process (`upf run`, where the auth plugin
    # shares it), or Redis, where every gateway replica sees a logout within a second.
    store: Literal["memory", "redis"] = "memory"
    redis_url: RedisUrl = "redis://127.0.0.1:6379/0"
    key_prefix: str = Field(default="upf:auth", min_length=1)


class GatewayAuthSettings(_Section):
    """JWT verification on every request except `publicPaths` (and the auth endpoints themselves)."""

    enabled: bool = False
    issuers: list[IssuerSettings] = Field(default_factory=list)
    leeway: float = Field(default=30.0, ge=0, le=300)  # seconds of clock skew tolerated on exp / nbf
    # Role -> permissions, added to the permissions a token carries (for issuers that only know roles).
    # "*" grants every permission, "orders:*" every permission in "orders".
    roles: dict[str, list[str]] = Field(default_factory=dict)
    # Pass the client's Authorization header on to plugins (off: they get the verified identity only).
    forward_token: bool = False
    jwks_max_age: float = Field(default=300.0, gt=0)  # seconds before keys are fetched again
    # An unknown `kid` refetches the keys at most this often per issuer (random kids cannot drive fetches).
    unknown_kid_cooldown: float = Field(default=30.0, ge=0)
    cache_size: int = Field(default=10_000, ge=0)  # verified tokens remembered; 0 verifies every time
    service: str = Field(default="upf.auth.v1.Auth", pattern=_SERVICE.pattern)  # the IAuth service
    revocation: RevocationStoreSettings = Field(default_factory=RevocationStoreSettings)

    @model_validator(mode="after")
    def _check_issuers(self) -> GatewayAuthSettings:
        if self.enabled and not self.issuers:
            raise ValueError("auth is enabled but no issuer is configured (auth.issuers)")
        seen = set()
        for issuer in self.issuers:
            if issuer.issuer in seen:
                raise ValueError(f"issuer {issuer.issuer!r} is listed twice")
            seen.add(issuer.issuer)
        return self


class EventsSettings(_Section):
    """Live events: the /api/events WebSocket and the bus behind it (gateway/events/)."""

    enabled: bool = False
    # "memory": this process only (events published here, kept in a ring); "nats": NATS JetStream,
    # shared by every gateway, resumable across reconnects and restarts.
    bus: Literal["memory", "nats"] = "memory"
    nats_url: str = "nats://127.0.0.1:4222"
    stream: str = Field(default="UPF_EVENTS", pattern=r"^[A-Za-z0-9_-]{1,64}$")  # JetStream stream, made if missing
    subject_prefix: str = Field(default="upf.events", pattern=r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$")
    storage: Literal["file", "memory"] = "file"  # the stream's storage, when the gateway creates it
    # Retention: events older than maxAge seconds, or beyond the newest maxMessages (and, for
    # JetStream, maxBytes), are dropped; a client resuming from before them gets event_id_too_old.
    max_age: float | None = Field(default=86400.0, gt=0)
    max_messages: int = Field(default=100_000, ge=1)
    max_bytes: int | None = Field(default=None, ge=1)
    consumer_heartbeat: float = Field(default=5.0, gt=0)  # JetStream consumers; 3 missed: replaced
    heartbeat_interval: float = Field(default=15.0, gt=0)  # seconds of silence before a heartbeat message
    queue_size: int = Field(default=256, ge=1)  # messages waiting per socket before it is cut (1013)
    max_topics_per_connection: int = Field(default=32, ge=1)
    # Origins allowed to open the socket from a browser; null: the same as cors.allowOrigins.
    allow_origins: list[str] | None = None
    publish: bool = False  # POST /api/events/{topic}, for plugins and tests until IMessageBus exists
    max_event_bytes: int = Field(default=1024 * 1024, ge=1)  # POST body limit

    @field_validator("nats_url")
    @classmethod
    def _check_nats_url(cls, url: str) -> str:
        if not url.startswith(("nats://", "tls://", "ws://", "wss://")):
            raise ValueError(f"{url!r} is not a nats://, tls://, ws:// or wss:// URL")
        return url


class GatewaySettings(_Section):
    host: str = "127.0.0.1"
    http_port: int = Field(default=8080, ge=0, le=65535)
    grpc_port: int = Field(default=50051, ge=0, le=65535)  # native gRPC ingress; 0 turns it off
    workers: int = Field(default=1, ge=1)
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"
    access_log: bool = True  # one log line per request (uvicorn's access log)
    # Seconds a stopping gateway (SIGTERM) keeps serving with /readyz failing before it drains and
    # closes its ports: the time a proxy's health check (Traefik, a Kubernetes readiness probe) needs
    # to stop sending it new calls. 0: drain at once (nothing in front, or the proxy is told otherwise).
    shutdown_delay: float = Field(default=0.0, ge=0, le=300)
    # Paths served without a token (a trailing * matches any rest); a valid token there still counts.
    # /healthz, /readyz, /.well-known/jwks.json, /api/auth/login and /api/auth/refresh always are.
    public_paths: list[str] = Field(default_factory=lambda: ["/api/manifests", "/metrics"])
    # host:port of the auth plugin, for a gateway without a registry (with one, the plugin is found there).
    auth_plugin_url: Endpoint | None = None
    auth: GatewayAuthSettings = Field(default_factory=GatewayAuthSettings)
    registry_url: str | None = None
    route_refresh_interval: float = Field(default=30.0, gt=0)
    # How a service's replicas share its calls: in turn, or the power of two choices (of two replicas
    # at random, the one with fewer calls in flight; spreads load better when calls differ in cost).
    load_balancing: Literal["round_robin", "p2c"] = "p2c"
    rate_limiting: RateLimitSettings = Field(default_factory=RateLimitSettings)
    circuit_breaker: CircuitBreakerSettings = Field(default_factory=CircuitBreakerSettings)
    cors: CorsSettings = Field(default_factory=CorsSettings)
    websocket: WebSocketSettings = Field(default_factory=WebSocketSettings)
    events: EventsSettings = Field(default_factory=EventsSettings)
    retries: RetrySettings = Field(default_factory=RetrySettings)
    admin: AdminSettings = Field(default_factory=AdminSettings)
    shell: ShellSettings = Field(default_factory=ShellSettings)
    # Largest message accepted from a client and from an upstream, in bytes (gRPC's default is 4 MiB).
    max_message_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    # Upper bound, in seconds, on any deadline a client asks for with grpc-timeout; none by default.
    max_timeout: float | None = Field(default=None, gt=0)
    # Forward the Cookie header to plugins as metadata (off: cookies are the browser's, not the plugin's).
    forward_cookies: bool = False
    # Fully qualified gRPC service -> endpoints, for plugins that do not register with the registry.
    # Merged with the registry's routes; a service listed here and registered too keeps these endpoints.
    upstreams: dict[str, list[Endpoint]] = Field(default_factory=dict)

    @field_validator("upstreams")
    @classmethod
    def _check_upstreams(cls, upstreams: dict[str, list[str]]) -> dict[str, list[str]]:
        for service, endpoints in upstreams.items():
            if not _SERVICE.match(service):
                raise ValueError(f"{service!r} is not a fully qualified gRPC service (package.Service)")
            if not endpoints:
                raise ValueError(f"{service} has no endpoint")
        return upstreams


def load_settings(path: str | Path | None = None, environ: Mapping[str, str] | None = None) -> GatewaySettings:
    """Read the YAML file (`path`, else $UPF_CONFIG, else none) and apply `UPF_*` overrides."""
    return load_config(GatewaySettings, path, environ)


def load_config(
    model: type[_Model], path: str | Path | None = None, environ: Mapping[str, str] | None = None
) -> _Model:
    """`load_settings` for any settings model (the registry has its own), with the same file and `UPF_*` rules."""
    environ = os.environ if environ is None else environ
    source = str(path) if path is not None else environ.get(CONFIG_ENV) or None
    data: dict[str, Any] = {}
    if source is not None:
        data = _read_yaml(Path(source))
    env_keys: dict[tuple[str, ...], str] = {}
    for name, raw in sorted(environ.items()):
        if not name.startswith(ENV_PREFIX) or name == CONFIG_ENV:
            continue
        keys = tuple(to_camel(part.lower()) for part in name[len(ENV_PREFIX) :].split("__"))
        if not all(keys):
            raise ConfigError(f"environment variable {name}: cannot be read as a key path")
        try:
            value = yaml.safe_load(raw) if raw else ""
        except yaml.YAMLError as exc:
            raise ConfigError(f"environment variable {name}: not valid YAML: {exc}") from None
        _set_path(data, keys, value, name)
        env_keys[keys] = name
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, source, env_keys)) from None


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"config file {path}: cannot be read: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path}: not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: the top level must be a mapping of keys, not {type(data).__name__}")
    return data


def _set_path(data: dict[str, Any], keys: tuple[str, ...], value: Any, origin: str) -> None:
    node = data
    for key in keys[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"environment variable {origin}: {key} is not a section")
        node = child
    node[keys[-1]] = value


def _describe(exc: ValidationError, source: str | None, env_keys: Mapping[tuple[str, ...], str]) -> str:
    lines = []
    for error in exc.errors():
        loc = tuple(str(part) for part in error["loc"])
        key = ".".join(loc) or "(top level)"
        origin = next((name for keys, name in env_keys.items() if loc[: len(keys)] == keys), None)
        where = f"environment variable {origin}" if origin else f"config file {source}" if source else "defaults"
        message = error["msg"]
        if error["type"] == "extra_forbidden":
            message = "unknown key"
        elif error["type"] == "value_error":
            message = message.removeprefix("Value error, ")
        lines.append(f"{where}: {key}: {message}")
    return "invalid configuration:\n  " + "\n  ".join(lines)
