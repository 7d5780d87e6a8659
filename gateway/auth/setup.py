"""Auth's parts for one gateway, built from settings: trusted issuers with their key caches, the
revocation store, the verifier, the authenticator every entry point asks, and the REST endpoints.

create_app builds this once and opens it in the lifespan (`start` after the routes are known: the
built-in issuer's keys come from the auth plugin through the pool) and closes it on the way out.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
from upf.auth.v1 import auth_pb2 as pb

from common.auth.discovery import discover
from common.auth.jwks import JwksCache, http_fetcher
from common.auth.revocations import MemoryRevocations, RedisRevocations, Revocations
from gateway.auth.authenticator import Authenticator
from gateway.auth.login_guard import LoginGuard
from gateway.auth.rest import AuthEndpoints
from gateway.auth.verify import TokenVerifier, TrustedIssuer
from gateway.ratelimit.keys import TrustedProxies
from gateway.settings import GatewayAuthSettings, GatewaySettings, IssuerSettings
from gateway.upstream.call import unary_call
from gateway.upstream.policies import MethodPolicies
from gateway.upstream.pool import UpstreamPool

__all__ = ["AuthSetup"]

Fetch = Callable[[], Awaitable[bytes]]


class AuthSetup:
    def __init__(
        self,
        settings: GatewaySettings,
        pool: UpstreamPool,
        policies: MethodPolicies,
        *,
        revocations: Revocations | None = None,
    ) -> None:
        auth = settings.auth
        self.settings = auth
        self.http = httpx.AsyncClient(timeout=5.0, follow_redirects=False)
        self.owns_revocations = revocations is None
        self.revocations = revocations if revocations is not None else _revocations(auth)
        self.caches: dict[str, JwksCache] = {}
        issuers = []
        for issuer in auth.issuers:
            cache = JwksCache(
                self._fetcher(issuer, pool, auth.service),
                issuer=issuer.issuer,
                algorithms=issuer.algorithms,
                max_age=auth.jwks_max_age,
                refresh_ahead=min(30.0, auth.jwks_max_age / 4),  # refreshed before expiry, whatever the age
                unknown_kid_cooldown=auth.unknown_kid_cooldown,
            )
            self.caches[issuer.issuer] = cache
            issuers.append(
                TrustedIssuer(
                    issuer=issuer.issuer,
                    audience=tuple(issuer.audience),
                    algorithms=frozenset(issuer.algorithms),
                    keys=cache,
                    roles_claim=issuer.roles_claim,
                    permissions_claim=issuer.permissions_claim,
                    email_claim=issuer.email_claim,
                )
            )
        self.verifier = TokenVerifier(
            issuers,
            revocations=self.revocations,
            leeway=auth.leeway,
            roles=auth.roles,
            cache_size=auth.cache_size,
        )
        self.authenticator = Authenticator(
            self.verifier, public_paths=settings.public_paths, policies=policies, auth_service=auth.service
        )
        limits = settings.rate_limiting
        self.endpoints = AuthEndpoints(
            pool,
            service=auth.service,
            revocations=self.revocations,
            jwks=self._jwks,
            guard=LoginGuard(auth.login) if auth.login.enabled else None,
            proxies=TrustedProxies(limits.trusted_proxies, limits.trusted_hops, limits.ipv6_subnet),
        )

    def _fetcher(self, issuer: IssuerSettings, pool: UpstreamPool, service: str) -> Fetch:
        if issuer.jwks_uri is not None:
            return http_fetcher(self.http, issuer.jwks_uri)
        if issuer.discovery:
            client = self.http
            jwks_uri: list[str] = []

            async def discovered() -> bytes:
                if not jwks_uri:  # once: an issuer does not move its keys' address
                    jwks_uri.append((await discover(client, issuer.issuer)).jwks_uri)
                return await http_fetcher(client, jwks_uri[0])()

            return discovered

        async def from_plugin() -> bytes:
            answer = await unary_call(pool, service, "GetJwks", pb.GetJwksRequest(), pb.GetJwksResponse)
            return answer.jwks_json.encode()

        return from_plugin

    async def _jwks(self) -> bytes:
        """Every trusted issuer's current keys in one JWKS (a kid is unique per issuer in practice)."""
        keys: list[Any] = []
        for cache in self.caches.values():
            keys += json.loads(cache.jwks_json())["keys"]
        return json.dumps({"keys": keys}, separators=(",", ":")).encode()

    def status(self) -> dict[str, Any]:
        return {
            "issuers": {name: cache.status for name, cache in self.caches.items()},
            "revocations": {
                "connected": self.revocations.status.connected,
                "entries": self.revocations.status.entries,
            },
        }

    async def start(self) -> None:
        if self.owns_revocations:
            await self.revocations.start()
        for cache in self.caches.values():
            await cache.start()

    async def close(self) -> None:
        for cache in self.caches.values():
            await cache.close()
        if self.owns_revocations:
            await self.revocations.close()
        with contextlib.suppress(Exception):
            await self.http.aclose()


def _revocations(auth: GatewayAuthSettings) -> Revocations:
    store = auth.revocation
    if store.store == "redis":
        return RedisRevocations(store.redis_url, store.key_prefix)
    return MemoryRevocations()
