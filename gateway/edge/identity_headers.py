"""Identity headers other proxies set, dropped from every client request.

A plugin written to sit behind oauth2-proxy, Kong or an Apache `REMOTE_USER` setup trusts headers
such as `x-forwarded-user` or `x-authenticated-userid`. Behind this gateway nobody sets them, so a
client could: they are dropped on the HTTP port (gateway/edge/protocol.py, before any route, public
ones included), from the metadata of WebSocket calls (gateway/wire/metadata.py) and on the
native gRPC port (gateway/ingress/call.py), as every `x-upf-*` header is. The list is
`edge.identityHeaders`; `configure` sets it once at start-up, for the in-band readers that are not
handed the settings.
"""

from __future__ import annotations

from collections.abc import Iterable

from gateway.settings import DEFAULT_IDENTITY_HEADERS

__all__ = ["DEFAULT_IDENTITY_HEADERS", "configure", "is_identity_header"]

_names: frozenset[bytes] = frozenset(name.encode("ascii") for name in DEFAULT_IDENTITY_HEADERS)


def names(configured: Iterable[str]) -> frozenset[bytes]:
    """Header names as they arrive from the parsers (lower case bytes)."""
    return frozenset(name.strip().lower().encode("ascii") for name in configured)


def configure(configured: Iterable[str]) -> None:
    global _names
    _names = names(configured)


def is_identity_header(name: bytes) -> bool:
    """Whether `name` (lower case) is one of the identity headers clients may not send."""
    return name in _names
