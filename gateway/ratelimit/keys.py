"""Whom a request is counted against: the `keyExtractor` setting, turned into a function of the scope.

    ip      the client address. X-Forwarded-For is believed only as far as configured: walking from
            the connecting peer towards the client, each hop is skipped while it is a trusted proxy
            (`trustedProxies` CIDRs) and at most `trustedHops` times. With neither set the peer is
            the client, whatever the headers say. IPv6 clients count per /64 (`ipv6Subnet`): one
            subscriber usually holds a whole /64 and could otherwise take a fresh address per request.
    token   the verified subject, `scope["upf.identity"].subject`, which the auth middleware sets
            once it has checked the credentials; requests without one (public paths, or auth off)
            fall back to `ip`.
    apiKey  the `apiKeyHeader` request header, hashed so that keys never show up in Redis; requests
            without one fall back to `ip`.

Identities carry their kind (`ip:…`, `sub:…`, `key:…`) so that no value of one kind can collide
with another's bucket.
"""

from __future__ import annotations

import hashlib
import ipaddress
import sys
from collections.abc import Callable, Sequence
from functools import lru_cache

from starlette.types import Scope

from gateway.auth.identity import identity_of
from gateway.settings import RateLimitSettings

__all__ = ["Identify", "TrustedProxies", "identify_by", "identify_from_settings"]

Identify = Callable[[Scope], str]
_Address = ipaddress.IPv4Address | ipaddress.IPv6Address
_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class TrustedProxies:
    """Finds the client address behind the proxies this gateway trusts.

    Args:
        networks: CIDRs of trusted proxies; when empty, any hop counts as trusted (up to `hops`).
        hops: how many proxies may be skipped at most; None means as many as are trusted, which
            with no networks configured means none.
        ipv6_subnet: prefix length that IPv6 clients are grouped by.
    """

    def __init__(self, networks: Sequence[str] = (), hops: int | None = None, ipv6_subnet: int = 64) -> None:
        self.networks: tuple[_Network, ...] = tuple(ipaddress.ip_network(n, strict=False) for n in networks)
        self.max_hops = hops if hops is not None else (sys.maxsize if self.networks else 0)
        self.ipv6_subnet = ipv6_subnet
        # Identities repeat from request to request; parsing and masking them each time is wasted work.
        self.identity = lru_cache(maxsize=4096)(self._identity)

    def client(self, scope: Scope) -> str:
        """The client's identity (`ip:203.0.113.7`, `ip:2001:db8:1:2::/64`) for this request."""
        address = self.address(scope)
        if address is None:
            return "ip:unknown"  # a Unix socket, or a server that does not say: one shared bucket
        return self.identity(address)

    def address(self, scope: Scope) -> str | None:
        """The client's address (unmasked, for logs), behind the trusted proxies; None if unknown."""
        peer = scope.get("client")
        if peer is None:
            return None
        address: str = peer[0]
        if self.max_hops:
            forwarded = [v for k, v in scope["headers"] if k == b"x-forwarded-for"]
            if forwarded:
                address = self._walk(address, b",".join(forwarded).decode("latin-1").split(","))
        return address

    def _walk(self, peer: str, forwarded: list[str]) -> str:
        current = peer
        hops = 0
        for entry in reversed(forwarded):
            if hops == self.max_hops or not self._trusted(current):
                break
            candidate = _strip_port(entry.strip())
            if _parse(candidate) is None:
                break  # "unknown" or garbage from a trusted proxy: count the proxy that said it
            current, hops = candidate, hops + 1
        return current

    def _trusted(self, address: str) -> bool:
        if not self.networks:
            return True
        parsed = _parse(address)
        return parsed is not None and any(parsed in network for network in self.networks)

    def _identity(self, address: str) -> str:
        parsed = _parse(address)
        if parsed is None:
            return f"ip:{address}"
        if isinstance(parsed, ipaddress.IPv6Address):
            network = ipaddress.IPv6Network((parsed, self.ipv6_subnet), strict=False)
            return f"ip:{network}"
        return f"ip:{parsed}"


def _parse(address: str) -> _Address | None:
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return None
    # A dual-stack listener reports IPv4 clients as ::ffff:a.b.c.d: they are IPv4 clients.
    if isinstance(parsed, ipaddress.IPv6Address) and parsed.ipv4_mapped is not None:
        return parsed.ipv4_mapped
    return parsed


def _strip_port(entry: str) -> str:
    # Some proxies write "203.0.113.7:41234" or "[2001:db8::1]:41234".
    if entry.startswith("["):
        return entry[1:].partition("]")[0]
    if entry.count(":") == 1:
        return entry.partition(":")[0]
    return entry


def identify_by(extractor: str, proxies: TrustedProxies, *, api_key_header: str = "x-api-key") -> Identify:
    """The identity function for a `keyExtractor` value (`ip`, `token` or `apiKey`)."""
    if extractor == "ip":
        return proxies.client
    if extractor == "token":

        def by_subject(scope: Scope) -> str:
            identity = identity_of(scope)
            return f"sub:{identity.subject}" if identity is not None else proxies.client(scope)

        return by_subject
    if extractor == "apiKey":
        header = api_key_header.lower().encode("latin-1")

        def by_api_key(scope: Scope) -> str:
            for key, value in scope["headers"]:
                if key == header and value:
                    return "key:" + hashlib.sha256(value).hexdigest()[:32]
            return proxies.client(scope)

        return by_api_key
    raise ValueError(f"unknown key extractor {extractor!r}")


def identify_from_settings(settings: RateLimitSettings) -> Identify:
    """The identity function the `rateLimiting` settings ask for."""
    proxies = TrustedProxies(settings.trusted_proxies, settings.trusted_hops, settings.ipv6_subnet)
    return identify_by(settings.key_extractor, proxies, api_key_header=settings.api_key_header)
