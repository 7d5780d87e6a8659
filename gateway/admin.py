"""GET /api/admin/traffic: what the gateway's traffic control is doing now, as JSON.

    breakers   per service, per replica: state, consecutive failures, calls in flight, seconds until
               the next probe, and the last transition (from, to, when, why: failures, a failed
               probe, the reset timeout, a probe that passed, or a hint from another gateway);
               breakerSharing: whether hints go through Redis, and how many were sent / applied
    limiter    per-client and per-method limits on or off, the store, its failure mode and whether
               Redis answers, and the policies in use
    retries    the settings, the budget's window (calls, retries, how many more may go) and counts

Who may read it is one callable, `authorize(scope, permission) -> bool`, asked with the permission
"admin:traffic": a peer in the admin.allowFrom CIDRs and, with auth on, a caller whose verified
identity holds the permission (the auth middleware has already refused one without a valid token).
With admin.enabled off the path answers 404.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Sequence

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import Scope

from gateway.auth.identity import identity_of
from gateway.ratelimit.calls import CallLimiter
from gateway.upstream.breaker_share import BreakerHints
from gateway.upstream.pool import UpstreamPool
from gateway.upstream.retry import Retries

__all__ = ["PERMISSION", "Authorize", "TrafficAdmin", "admin_access", "allow_from"]

PERMISSION = "admin:traffic"

# (the request's ASGI scope, the permission it needs) -> may it?
Authorize = Callable[[Scope, str], bool]


def allow_from(networks: Sequence[str]) -> Authorize:
    """Allows peers whose address is in one of `networks` (CIDRs or addresses)."""
    parsed = [ipaddress.ip_network(network, strict=False) for network in networks]

    def authorize(scope: Scope, permission: str) -> bool:
        client = scope.get("client")
        if not client:
            return False
        try:
            address = ipaddress.ip_address(client[0])
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in parsed)

    return authorize


def admin_access(network: Authorize, auth_enabled: bool) -> Authorize:
    """`network` alone without auth; with auth, `network` and the caller's permission."""
    if not auth_enabled:
        return network

    def authorize(scope: Scope, permission: str) -> bool:
        identity = identity_of(scope)
        return network(scope, permission) and identity is not None and identity.permits(permission)

    return authorize


class TrafficAdmin:
    """The endpoint; `authorize` None means the admin API is off (404)."""

    def __init__(
        self,
        pool: UpstreamPool,
        *,
        limiter: CallLimiter | None,
        retries: Retries | None,
        authorize: Authorize | None,
        hints: BreakerHints | None = None,
    ) -> None:
        self.pool = pool
        self.hints = hints
        self.limiter = limiter
        self.retries = retries
        self.authorize = authorize

    async def endpoint(self, request: Request) -> JSONResponse:
        if self.authorize is None:
            return JSONResponse({"code": "NOT_FOUND", "message": "the admin API is off (admin.enabled)"}, 404)
        if not self.authorize(request.scope, PERMISSION):
            return JSONResponse(
                {"code": "PERMISSION_DENIED", "message": f"{PERMISSION} is required to read the traffic state"}, 403
            )
        return JSONResponse(self.state(), headers={"cache-control": "no-store"})

    def state(self) -> dict[str, object]:
        breakers: dict[str, list[dict[str, object]]] = {}
        for service, route in sorted(self.pool.routes.items()):
            replicas = []
            for endpoint in route.endpoints:
                entry: dict[str, object] = {"replica": endpoint.address, "inflight": endpoint.inflight}
                breaker = endpoint.breaker
                if breaker is not None:
                    entry.update(state=breaker.state.value, failures=breaker.failures, retryAfter=breaker.retry_after)
                    change = breaker.last_change
                    entry["lastTransition"] = (
                        {"from": change[0].value, "to": change[1].value, "at": change[2], "cause": change[3]}
                        if change is not None
                        else None
                    )
                replicas.append(entry)
            breakers[service] = replicas
        return {
            "breakers": breakers,
            "breakerSharing": self.hints.state() if self.hints is not None else {"shareVia": "none"},
            "limiter": self.limiter.state()
            if self.limiter is not None
            else {"perClient": False, "methodLimits": False},
            "retries": self.retries.state() if self.retries is not None else {"enabled": False},
        }
