"""Gateway configuration: one YAML file plus `UPF_*` environment overrides, parsed once at start-up.

Keys follow the seed's GatewayConfig (camelCase). The file and environment rules (`UPF_HTTP_PORT=9000`,
`${VAR}` placeholders, a `ConfigError` naming the key and its source) are every process's: common/config.py.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, TypeAdapter, ValidationError, field_validator, model_validator
from pydantic.alias_generators import to_camel

from common.auth.settings import DEFAULT_REDIS_URL, RevocationSettings
from common.config import (
    CONFIG_ENV,
    ConfigError,
    Endpoint,
    HttpUrl,
    Network,
    RedisUrl,
    Section as _Section,
    load_config,
)
from common.names import SERVICE as _SERVICE

__all__ = [
    "CONFIG_ENV",
    "DEFAULT_IDENTITY_HEADERS",
    "AdminSettings",
    "ConfigError",
    "CorsSettings",
    "EdgeSettings",
    "EventsSettings",
    "GatewayAuthSettings",
    "GatewaySettings",
    "IssuerSettings",
    "MuxSettings",
    "RateLimitSettings",
    "RedisUrl",
    "RetrySettings",
    "TracingSettings",
    "WebSocketSettings",
    "load_config",
    "load_settings",
]

_REDIS_URL: TypeAdapter[str] = TypeAdapter(RedisUrl)
# The keys whose default is redis.url (GatewaySettings._share_redis).
_REDIS_URL_KEYS = (
    ("rate_limiting", "redis_url"),
    ("circuit_breaker", "redis_url"),
    ("auth", "revocation", "redis_url"),
)

StatusName = Literal[
    "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND", "ALREADY_EXISTS",
    "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE",
    "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED",
]  # fmt: skip


class RedisSettings(_Section):
    """The Redis that rate limits, breaker hints and revocations share, unless a section names its own."""

    url: RedisUrl = Field(
        default=DEFAULT_REDIS_URL,
        description=(
            "The Redis of rateLimiting, circuitBreaker.shareVia and auth.revocation, unless one names its own "
            "redisUrl: redis://, rediss:// or unix://."
        ),
    )


class RateLimitSettings(_Section):
    """A token bucket per client: `burstSize` requests at once, refilled at `requestsPerSecond`."""

    enabled: bool = Field(
        default=False,
        description="Limit each client with a token bucket (per-method limits from manifests are methodLimits).",
    )
    requests_per_second: float = Field(default=100.0, gt=0, description="refill rate, per client")
    burst_size: int = Field(default=200, ge=1, description="bucket size: requests a rested client may send at once")
    key_extractor: Literal["ip", "token", "apiKey"] = Field(
        default="ip",
        description=(
            "Whom requests count against: the client address; the verified subject (auth sets it; `ip` "
            "without one); or the `apiKeyHeader` value (`ip` without one)."
        ),
    )
    store: Literal["memory", "redis"] = Field(
        default="memory",
        description=(
            'Where the buckets live: this process ("memory": each worker process and replica counts on its '
            "own), or Redis, shared by every worker and replica."
        ),
    )
    redis_url: RedisUrl = Field(
        default=DEFAULT_REDIS_URL, description="redis://, rediss:// or unix://; default: the top-level redis.url"
    )
    key_prefix: str = Field(default="upf:rl", min_length=1, description="Redis keys are <prefix>:<policy>:<identity>")
    redis_timeout: float = Field(default=0.25, gt=0, description="seconds for Redis to connect or answer")
    redis_max_connections: int = Field(default=64, ge=1, description="per gateway process; more requests wait")
    redis_retry_interval: float = Field(
        default=0.1,
        gt=0,
        le=60,
        description="Seconds between tries of a Redis that failed (a PING in the background; no request waits on it).",
    )
    failure_mode: Literal["open", "closed", "local"] = Field(
        default="local",
        description=(
            'When Redis fails: "open" lets requests through, "closed" answers UNAVAILABLE / 503, '
            '"local" limits each gateway process on its own to requestsPerSecond / replicas (and burstSize '
            "/ replicas)."
        ),
    )
    replicas: int = Field(
        default=1,
        ge=1,
        description=(
            'Gateway processes sharing Redis (replicas x workers): how the "local" fallback shares the '
            "limit, and how much of a bucket one lease may take."
        ),
    )
    lease_tokens: int = Field(
        default=0,
        ge=0,
        le=10_000,
        description=(
            "Redis store: each round trip may lease up to this many tokens beyond the waiting calls' own, "
            "spent here without a round trip for up to leaseSeconds. 0: a round trip per decision, exact. "
            "Leases never let more through than the bucket; a gateway's unspent lease may make another refuse "
            "early (gateway/ratelimit/lease.py). Every gateway on one keyPrefix must agree."
        ),
    )
    lease_seconds: float = Field(
        default=1.0,
        gt=0,
        le=10,
        description="Seconds a leased token may be spent before it stops counting (see leaseTokens).",
    )
    trusted_proxies: list[Network] = Field(
        default_factory=list, description="X-Forwarded-For is believed only from these proxies (CIDRs or addresses) ..."
    )
    trusted_hops: int | None = Field(
        default=None,
        ge=0,
        description="... and for at most this many hops (with no trustedProxies: from whichever proxy is in front).",
    )
    ipv6_subnet: int = Field(
        default=64, ge=1, le=128, description="IPv6 clients share a bucket per prefix of this length"
    )
    api_key_header: str = Field(
        default="x-api-key",
        pattern=r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$",
        description="The request header whose value is the client's key (keyExtractor: apiKey).",
    )
    exempt_paths: list[str] = Field(
        default_factory=list,
        description="Paths never limited, besides /healthz, /readyz and /metrics (which never are).",
    )
    method_limits: bool = Field(
        default=True,
        description=(
            "Per-method limits from the plugins' manifests (policies.rateLimit), on the same store and "
            "failure mode, in addition to the per-client limit above (which `enabled` turns on)."
        ),
    )

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
    enabled: bool = Field(
        default=True,
        description="A breaker per upstream replica: failing replicas are skipped until a probe call succeeds.",
    )
    failure_threshold: int = Field(default=5, ge=1, description="consecutive failures before the breaker opens")
    reset_timeout: float = Field(default=30.0, gt=0, description="seconds open before a half-open probe")
    half_open_probes: int = Field(default=1, ge=1, description="probe calls at once while half-open")
    failure_codes: list[StatusName] = Field(
        default_factory=_default_failure_codes,
        description=(
            "gRPC statuses that count as the replica's failure (transport errors always do). Client errors "
            "such as INVALID_ARGUMENT or NOT_FOUND prove the replica is alive: never list them."
        ),
    )
    share_via: Literal["none", "redis"] = Field(
        default="none",
        description=(
            '"redis": a breaker that opens here tells the other gateways (SET with a TTL of resetTimeout, '
            "and PUBLISH), which open theirs for that replica too; each still probes on its own clock. A hint "
            "only: with Redis down every gateway goes on deciding alone."
        ),
    )
    redis_url: RedisUrl = Field(default=DEFAULT_REDIS_URL, description="default: the top-level redis.url")
    key_prefix: str = Field(
        default="upf:cb", min_length=1, description="Redis keys and channel of shared breaker hints start with this."
    )


class RetrySettings(_Section):
    """Retries of calls the upstream refused before answering anything (UNAVAILABLE, connection
    refused or lost, GOAWAY), for methods whose manifest policy says `idempotent: true`, to another
    replica, within a budget: retries may add `budgetRatio` of the retryable calls over the last
    10 s, plus `minPerSecond` (so that a quiet service can still retry at all)."""

    enabled: bool = Field(
        default=True,
        description=(
            "Retry calls refused before any answer, for methods whose manifest policy says idempotent: true, "
            "on another replica."
        ),
    )
    budget_ratio: float = Field(
        default=0.2, ge=0, le=1, description="Retries may add this share of the retryable calls over the last 10 s ..."
    )
    min_per_second: float = Field(
        default=1.0, ge=0, description="... plus this many a second, so that a quiet service can still retry at all."
    )
    max_attempts: int = Field(default=2, ge=1, le=5, description="the first try included")


def _loopback() -> list[str]:
    return ["127.0.0.1/32", "::1/128"]


class AdminSettings(_Section):
    """GET /api/admin/traffic: breaker, limiter and retry-budget state. Off unless enabled, and then
    only for clients in `allowFrom` (the connection's peer address; X-Forwarded-For is not read)."""

    enabled: bool = Field(
        default=False, description="Serve GET /api/admin/traffic (breaker, limiter and retry-budget state)."
    )
    allow_from: list[Network] = Field(
        default_factory=_loopback,
        description=(
            "Client addresses or CIDRs the admin endpoint answers (the connection's peer; X-Forwarded-For is not read)."
        ),
    )


class ShellSettings(_Section):
    """The web shell at / and the plugins' UI files under /plugins/<id>/ui/ (gateway/shell.py)."""

    enabled: bool = Field(
        default=True, description="Serve the web shell at / and the plugins' UI files under /plugins/<id>/ui/."
    )
    dir: Path | None = Field(
        default=None,
        description="The shell's build (npm run build in shell-web/); none: shell-web/dist next to this package.",
    )


class CorsSettings(_Section):
    allow_origins: list[str] = Field(
        default_factory=list,
        description=(
            "Origins allowed to call from a browser, exactly as the browser sends them "
            '("https://app.example"), or "*" for any origin (then credentials are never allowed).'
        ),
    )
    allow_credentials: bool = Field(
        default=True, description='Let browsers send cookies and Authorization to the allowed origins (never with "*").'
    )
    max_age: int = Field(default=600, ge=0, description="seconds a browser may cache a preflight answer")


class MuxSettings(_Section):
    enabled: bool = Field(
        default=True, description="upf-mux.v1 on /api/mux (gateway/websocket/MUX.md): many gRPC calls on one WebSocket."
    )
    max_streams: int = Field(
        default=100, ge=1, description="calls open at once on one socket; more get RESOURCE_EXHAUSTED"
    )
    stream_window: int = Field(
        default=256 * 1024,
        ge=1024,
        le=2**31 - 1,
        description=(
            "Request bytes a client may send on one call, and on all of a socket's calls together, before the "
            "gateway gives credit back (it does once the upstream has taken them): what a slow upstream can "
            "leave waiting in the gateway."
        ),
    )
    connection_window: int = Field(
        default=1024 * 1024,
        ge=1024,
        le=2**31 - 1,
        description=(
            "Request bytes all of one socket's calls together may have waiting in the gateway (see streamWindow)."
        ),
    )


class WebSocketSettings(_Section):
    ping_interval: float | None = Field(
        default=20.0,
        gt=0,
        description=(
            "Seconds between the server's pings on an open WebSocket (so proxies with an idle timeout keep it "
            "open, and dead peers are noticed), and how long a ping may wait for its pong before the socket "
            "is closed. null turns either off."
        ),
    )
    ping_timeout: float | None = Field(
        default=20.0,
        gt=0,
        description="Seconds a ping may wait for its pong before the socket is closed (null: no limit).",
    )
    drain_grace: float = Field(
        default=10.0,
        ge=0,
        description=(
            "Seconds a shutdown lets grpc-websockets calls in flight finish before it cuts them (UNAVAILABLE, "
            "close 1001); idle sockets are closed at once. uvicorn's graceful-shutdown timeout follows it."
        ),
    )
    header_timeout: float = Field(
        default=10.0,
        gt=0,
        description="Seconds a grpc-websockets socket may take to send its header block before it is closed (1008).",
    )
    mux: MuxSettings = Field(default_factory=MuxSettings)


Algorithm = Literal[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"
]  # fmt: skip  # asymmetric only: an HS* key would be a shared secret, and "none" is no signature


def _default_algorithms() -> list[Algorithm]:
    return ["EdDSA", "RS256"]


class IssuerSettings(_Section):
    """One token issuer the gateway trusts; its tokens are verified with its own keys only."""

    issuer: str = Field(min_length=1, description="`iss` exactly as the issuer writes it")
    audience: list[str] = Field(default_factory=lambda: ["upf-api"], min_length=1, description="`aud` must hold one")
    algorithms: list[Algorithm] = Field(
        default_factory=_default_algorithms,
        min_length=1,
        description="Pinned: a token whose header names another algorithm is refused before any key is looked at.",
    )
    jwks_uri: HttpUrl | None = Field(
        default=None,
        description=(
            "Where the keys come from: a JWKS URL; or the issuer's OpenID discovery document (`discovery: "
            "true`); or, with neither, the auth plugin's GetJwks (the built-in `custom` provider)."
        ),
    )
    discovery: bool = Field(
        default=False, description="true: find jwksUri in the issuer's /.well-known/openid-configuration."
    )
    roles_claim: str = Field(
        default="roles",
        description=(
            "Claims (dotted paths into the token) that hold the roles, permissions and e-mail address: "
            'Keycloak keeps roles in "realm_access.roles", Auth0 in a namespaced claim.'
        ),
    )
    permissions_claim: str = Field(
        default="permissions", description="The claim (a dotted path) that holds the permissions."
    )
    email_claim: str = Field(default="email", description="The claim (a dotted path) that holds the e-mail address.")


class LoginLimitSettings(_Section):
    """POST /api/auth/login and /api/auth/refresh: failed attempts per client address, and failed
    logins per username and address, which back off as Keycloak's brute-force detection does
    (gateway/auth/login_guard.py)."""

    enabled: bool = Field(default=True, description="Limit failed logins and refreshes (auth.login).")
    failed_logins_per_minute: float = Field(
        default=20.0,
        gt=0,
        description=(
            "Failed logins per client address (rateLimiting.trustedProxies applies to X-Forwarded-For): a "
            "bucket of failedLoginBurst refilled at this rate, which each failure (and each attempt under way) "
            "takes from; a successful login costs nothing."
        ),
    )
    failed_login_burst: int = Field(default=10, ge=1, description="see failedLoginsPerMinute")
    failed_refreshes_per_minute: float = Field(
        default=60.0, gt=0, description="Failed refreshes per client address, as failedLoginsPerMinute."
    )
    failed_refresh_burst: int = Field(default=30, ge=1, description="see failedRefreshesPerMinute")
    free_failures: int = Field(
        default=5,
        ge=0,
        description=(
            "Failed logins of one username from one address that cost nothing; after them each attempt waits "
            "waitIncrement seconds, doubled per further failure, at most maxWait. Counted per username and "
            "address, so a guesser elsewhere cannot lock the real user out at her own address."
        ),
    )
    wait_increment: float = Field(default=1.0, gt=0, description="see freeFailures")
    max_wait: float = Field(default=60.0, gt=0, description="see freeFailures")
    failure_reset: float = Field(
        default=900.0, gt=0, description="Seconds without a failure (or one success) that forget the failures."
    )
    max_tracked: int = Field(default=100_000, ge=100, description="addresses and usernames remembered at once")


class GatewayAuthSettings(_Section):
    """JWT verification on every request except `publicPaths` (and the auth endpoints themselves)."""

    enabled: bool = Field(
        default=False,
        description="Verify a JWT on every request except publicPaths (and the auth endpoints themselves).",
    )
    issuers: list[IssuerSettings] = Field(
        default_factory=list,
        description=(
            "The token issuers trusted, each with its own keys: issuer, audience, algorithms, jwksUri or "
            "discovery, rolesClaim, permissionsClaim, emailClaim."
        ),
    )
    leeway: float = Field(default=30.0, ge=0, le=300, description="seconds of clock skew tolerated on exp / nbf")
    roles: dict[str, list[str]] = Field(
        default_factory=dict,
        description=(
            "Role -> permissions, added to the permissions a token carries (for issuers that only know "
            'roles). "*" grants every permission, "orders:*" every permission in "orders".'
        ),
    )
    forward_token: bool = Field(
        default=False,
        description="Pass the client's Authorization header on to plugins (off: they get the verified identity only).",
    )
    jwks_max_age: float = Field(default=300.0, gt=0, description="seconds before keys are fetched again")
    unknown_kid_cooldown: float = Field(
        default=30.0,
        ge=0,
        description=(
            "An unknown `kid` refetches the keys at most this often per issuer (random kids cannot drive fetches)."
        ),
    )
    cache_size: int = Field(default=10_000, ge=0, description="verified tokens remembered; 0 verifies every time")
    service: str = Field(default="upf.auth.v1.Auth", pattern=_SERVICE.pattern, description="the IAuth service")
    revocation: RevocationSettings = Field(default_factory=RevocationSettings)
    login: LoginLimitSettings = Field(default_factory=LoginLimitSettings)

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

    enabled: bool = Field(default=False, description="Serve live events on the /api/events WebSocket.")
    bus: Literal["memory", "nats", "plugin"] = Field(
        default="memory",
        description=(
            '"memory": this process only (events published here, kept in a ring); "nats": NATS JetStream, '
            'shared by every gateway, resumable across reconnects and restarts; "plugin": the deployment\'s '
            "IMessageBus plugin, found through registryUrl, so plugins and the UI share one bus (the gateway "
            "registers as pluginId with registrationCredential)."
        ),
    )
    plugin_id: str = Field(
        default="upf-gateway",
        pattern=r"^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$",
        description="The plugin id the gateway registers as, with bus: plugin.",
    )
    registration_credential: str = Field(
        default="",
        description="The registry's registration credential for pluginId (upf registry --credential-for ID); "
        "upf run fills it in.",
    )
    nats_url: str = Field(
        default="nats://127.0.0.1:4222",
        description="The NATS server of the nats bus (nats://, tls://, ws:// or wss://).",
    )
    stream: str = Field(
        default="UPF_EVENTS", pattern=r"^[A-Za-z0-9_-]{1,64}$", description="JetStream stream, made if missing"
    )
    subject_prefix: str = Field(
        default="upf.events",
        pattern=r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$",
        description="NATS subjects are <subjectPrefix>.<topic>.",
    )
    storage: Literal["file", "memory"] = Field(
        default="file", description="the stream's storage, when the gateway creates it"
    )
    max_age: float | None = Field(
        default=86400.0,
        gt=0,
        description=(
            "Retention: events older than maxAge seconds, or beyond the newest maxMessages (and, for "
            "JetStream, maxBytes), are dropped; a client resuming from before them gets event_id_too_old."
        ),
    )
    max_messages: int = Field(default=100_000, ge=1, description="Events kept: the newest this many.")
    max_bytes: int | None = Field(
        default=None, ge=1, description="JetStream only: bytes kept in the stream (null: no limit)."
    )
    consumer_heartbeat: float = Field(default=5.0, gt=0, description="JetStream consumers; 3 missed: replaced")
    heartbeat_interval: float = Field(default=15.0, gt=0, description="seconds of silence before a heartbeat message")
    queue_size: int = Field(default=256, ge=1, description="messages waiting per socket before it is cut (1013)")
    max_topics_per_connection: int = Field(default=32, ge=1, description="Topics one socket may subscribe to.")
    allow_origins: list[str] | None = Field(
        default=None,
        description="Origins allowed to open the socket from a browser; null: the same as cors.allowOrigins.",
    )
    publish: bool = Field(
        default=False, description="POST /api/events/{topic}, for plugins and tests until IMessageBus exists"
    )
    max_event_bytes: int = Field(default=1024 * 1024, ge=1, description="POST body limit")

    @field_validator("nats_url")
    @classmethod
    def _check_nats_url(cls, url: str) -> str:
        if not url.startswith(("nats://", "tls://", "ws://", "wss://")):
            raise ValueError(f"{url!r} is not a nats://, tls://, ws:// or wss:// URL")
        return url


# Identity headers of other proxies: oauth2-proxy (x-forwarded-*, x-auth-request-*), Kong
# (x-consumer-*, x-authenticated-*, x-credential-identifier), Apache / nginx (remote-user), and the
# generic ones plugins are often written to read.
DEFAULT_IDENTITY_HEADERS = (
    "x-user-id", "x-user-email", "x-user-roles", "x-forwarded-user", "x-forwarded-email",
    "x-forwarded-preferred-username", "x-forwarded-groups", "x-forwarded-access-token", "x-auth-request-user",
    "x-auth-request-email", "x-auth-request-preferred-username", "x-auth-request-groups",
    "x-auth-request-access-token", "x-remote-user", "remote-user", "x-authenticated-userid",
    "x-authenticated-scope", "x-consumer-id", "x-consumer-username", "x-consumer-custom-id",
    "x-credential-identifier", "x-jwt-claims", "x-jwt-assertion",
)  # fmt: skip


class EdgeSettings(_Section):
    """Limits on the HTTP port before a request reaches the app (gateway/edge/): what one client can
    make the gateway hold (bytes, sockets, time) by sending little or slowly. The connection caps
    count the native gRPC port's connections too."""

    max_request_line_bytes: int = Field(
        default=8 * 1024, ge=256, description="Method, target and version of one request, in bytes (414 beyond)."
    )
    max_header_bytes: int = Field(
        default=16 * 1024, ge=256, description="One header, name and value, in bytes (431 beyond)."
    )
    max_headers: int = Field(default=100, ge=8, description="Headers in one request (431 beyond).")
    max_header_block_bytes: int = Field(
        default=64 * 1024, ge=1024, description="Request line and headers together, in bytes (431 beyond)."
    )
    header_timeout: float = Field(
        default=10.0,
        gt=0,
        description=(
            "Seconds a client has to send a whole request head, from its connection (or its first byte on a "
            "kept-alive connection); then 408 and the connection is closed."
        ),
    )
    body_timeout: float = Field(
        default=20.0,
        gt=0,
        description=(
            "A request body must arrive within bodyTimeout seconds plus one second per bodyMinRate bytes "
            "received (Apache's mod_reqtimeout rule): slow links pass, a byte every few seconds does not."
        ),
    )
    body_min_rate: int = Field(default=500, ge=1, description="bytes per second (see bodyTimeout)")
    max_connections: int = Field(
        default=10_000,
        ge=1,
        description=(
            "Connections this process holds at once, HTTP and native gRPC ports together; beyond, closed on accept."
        ),
    )
    max_connections_per_client: int = Field(
        default=256,
        ge=1,
        description=(
            "Connections per client address (IPv6: per /64), both ports together; beyond, 429 (native gRPC: "
            "RESOURCE_EXHAUSTED)."
        ),
    )
    max_websockets_per_client: int = Field(
        default=64, ge=1, description="WebSockets per client address (IPv6: per /64); beyond, 429 and no upgrade."
    )
    unlimited_clients: list[Network] = Field(
        default_factory=list,
        description="Addresses (CIDRs) the per-client caps do not apply to: a proxy in front speaks for many clients.",
    )
    identity_headers: list[Annotated[str, Field(pattern=r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")]] = Field(
        default_factory=lambda: list(DEFAULT_IDENTITY_HEADERS),
        description=(
            "Identity headers other proxies set (oauth2-proxy, Kong, REMOTE_USER), dropped from every client "
            "request on every path and entry point, as x-upf-* are (gateway/edge/identity_headers.py)."
        ),
    )


class TracingSettings(_Section):
    """OpenTelemetry traces of the gateway's calls, sent to an OTLP/gRPC collector (gateway/telemetry/).

    Off by default. Either way a client's W3C `traceparent` / `tracestate` reach the plugins: passed
    through as they came with tracing off, naming the gateway's span as the parent with it on."""

    otlp_endpoint: str | None = Field(
        default=None,
        description=(
            "host:port (or http://, https:// host:port) of an OTLP/gRPC collector for the gateway's spans; "
            "none: tracing off (a client's traceparent still reaches the plugins, unchanged)."
        ),
    )
    service_name: str = Field(default="upf-gateway", min_length=1, description="service.name of the gateway's spans.")
    sample_ratio: float = Field(
        default=1.0,
        ge=0,
        le=1,
        description=(
            "Share of the traces the gateway starts that are kept; a trace a client started follows the "
            "client's sampled flag."
        ),
    )
    export_interval: float = Field(default=1.0, gt=0, description="Seconds between batches of spans sent.")


class GatewaySettings(_Section):
    host: str = Field(default="127.0.0.1", description="Address to listen on (0.0.0.0 in a container).")
    http_port: int = Field(
        default=8080,
        ge=0,
        le=65535,
        description=(
            "HTTP: gRPC-Web at /<pkg.Service>/<Method> and /api/<pkg.Service>/<Method>, REST, WebSockets, the shell."
        ),
    )
    grpc_port: int = Field(default=50051, ge=0, le=65535, description="native gRPC ingress; 0 turns it off")
    workers: int = Field(default=1, ge=1, description="Gateway processes sharing the ports.")
    log_level: Literal["critical", "error", "warning", "info", "debug"] = Field(
        default="info", description="critical | error | warning | info | debug."
    )
    access_log: bool = Field(
        default=True,
        description=(
            "One JSON line per HTTP request and per gRPC call on stdout (request id, trace id, service, method, "
            "statuses, duration, client; never a header's value). uvicorn's own access log is always off."
        ),
    )
    shutdown_delay: float = Field(
        default=0.0,
        ge=0,
        le=300,
        description=(
            "Seconds a stopping gateway (SIGTERM) keeps serving with /readyz failing before it drains and closes "
            "its ports: the time a proxy's health check (Traefik, a Kubernetes readiness probe) needs to stop "
            "sending it new calls. 0: drain at once."
        ),
    )
    public_paths: list[str] = Field(
        default_factory=lambda: ["/api/manifests", "/metrics"],
        description=(
            "Paths served without a token (a trailing * matches any rest); a valid token there still counts. "
            "/healthz, /readyz, /.well-known/jwks.json, /api/auth/login and /api/auth/refresh always are."
        ),
    )
    auth_plugin_url: Endpoint | None = Field(
        default=None,
        description=(
            "host:port of the auth plugin, for a gateway without a registry (with one, the plugin is found there)."
        ),
    )
    auth: GatewayAuthSettings = Field(default_factory=GatewayAuthSettings)
    registry_url: str | None = Field(
        default=None,
        description=(
            "host:port of the plugin registry, whose registrations become routes (none: static upstreams only)."
        ),
    )
    route_refresh_interval: float = Field(
        default=30.0,
        gt=0,
        description="Seconds between full re-reads of the registry's routes (changes also arrive as they happen).",
    )
    load_balancing: Literal["round_robin", "p2c"] = Field(
        default="p2c",
        description=(
            "How a service's replicas share its calls: in turn, or the power of two choices (of two replicas "
            "at random, the one with fewer calls in flight; spreads load better when calls differ in cost)."
        ),
    )
    rate_limiting: RateLimitSettings = Field(default_factory=RateLimitSettings)
    circuit_breaker: CircuitBreakerSettings = Field(default_factory=CircuitBreakerSettings)
    cors: CorsSettings = Field(default_factory=CorsSettings)
    websocket: WebSocketSettings = Field(default_factory=WebSocketSettings)
    events: EventsSettings = Field(default_factory=EventsSettings)
    retries: RetrySettings = Field(default_factory=RetrySettings)
    admin: AdminSettings = Field(default_factory=AdminSettings)
    tracing: TracingSettings = Field(default_factory=TracingSettings)
    shell: ShellSettings = Field(default_factory=ShellSettings)
    redis: RedisSettings = Field(default_factory=RedisSettings)
    edge: EdgeSettings = Field(default_factory=EdgeSettings)
    max_message_bytes: int = Field(
        default=4 * 1024 * 1024,
        ge=1024,
        description="Largest message accepted from a client and from an upstream, in bytes (gRPC's default is 4 MiB).",
    )
    max_timeout: float | None = Field(
        default=None,
        gt=0,
        description="Upper bound, in seconds, on any deadline a client asks for with grpc-timeout; none by default.",
    )
    forward_cookies: bool = Field(
        default=False,
        description=(
            "Forward the Cookie header to plugins as metadata (off: cookies are the browser's, not the plugin's)."
        ),
    )
    upstreams: dict[str, list[Endpoint]] = Field(
        default_factory=dict,
        description=(
            "Fully qualified gRPC service -> endpoints, for plugins that do not register with the registry. "
            "Merged with the registry's routes; a service listed here and registered too keeps these "
            "endpoints."
        ),
    )

    @model_validator(mode="before")
    @classmethod
    def _share_redis(cls, data: Any) -> Any:
        # redis.url is the default of every section's redisUrl: filled in before the sections are
        # read, where a section does not name its own (so each may still override it).
        if not isinstance(data, dict):
            return data
        redis = _field(data, "redis")
        if isinstance(redis, RedisSettings):
            url = redis.url
        elif isinstance(redis, dict):
            url = _field(redis, "url")
        else:
            return data  # none given (or not a mapping, which the redis section's own check reports)
        try:
            url = _REDIS_URL.validate_python(url)
        except ValidationError:  # reported by redis.url's own check, once and under its name
            return data
        for path in _REDIS_URL_KEYS:
            data = _with_redis_url(data, path, url)
        return data

    @field_validator("upstreams")
    @classmethod
    def _check_upstreams(cls, upstreams: dict[str, list[str]]) -> dict[str, list[str]]:
        for service, endpoints in upstreams.items():
            if not _SERVICE.match(service):
                raise ValueError(f"{service!r} is not a fully qualified gRPC service (package.Service)")
            if not endpoints:
                raise ValueError(f"{service} has no endpoint")
        return upstreams


def _field(data: dict[str, Any], name: str) -> Any:
    """`data[name]` under its camelCase or snake_case spelling (both are accepted), or None."""
    return data.get(to_camel(name), data.get(name))


def _with_redis_url(section: Any, path: tuple[str, ...], url: str) -> Any:
    """`section` (raw data, a settings object or nothing) with `url` at `path` unless it names one there."""
    name, rest = path[0], path[1:]
    if section is None:
        section = {}
    if isinstance(section, _Section):
        if not rest:
            return section if name in section.model_fields_set else section.model_copy(update={name: url})
        return section.model_copy(update={name: _with_redis_url(getattr(section, name), rest, url)})
    if not isinstance(section, dict):
        return section  # not a mapping: validation names the key
    child = _field(section, name)
    if not rest:
        return section if child is not None else {**section, name: url}
    key = to_camel(name) if to_camel(name) in section or name not in section else name
    return {**section, key: _with_redis_url(child, rest, url)}


def load_settings(path: str | Path | None = None, environ: Mapping[str, str] | None = None) -> GatewaySettings:
    """Read the YAML file (`path`, else $UPF_CONFIG, else none) and apply `UPF_*` overrides."""
    return load_config(GatewaySettings, path, environ)
