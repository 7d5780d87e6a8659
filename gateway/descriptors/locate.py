"""Where the descriptor catalog asks: a replica the pool routes to now, and the plugin's version."""

from __future__ import annotations

from collections.abc import Callable

from gateway.descriptors.catalog import Locate
from gateway.errors import GatewayError
from gateway.upstream.pool import UpstreamPool

__all__ = ["replica_locator"]


def replica_locator(pool: UpstreamPool, version_of: Callable[[str], str | None] | None) -> Locate:
    """`version_of(service)`: the registered plugin's id and version (a static upstream has none: its
    descriptors are kept for as long as its addresses stay the same)."""

    def locate(service: str) -> tuple[str, str] | None:
        try:
            route = pool.route(service)
        except GatewayError:
            return None
        addresses = [replica.address for replica in route.endpoints]
        if not addresses:
            return None
        version = version_of(service) if version_of is not None else None
        return addresses[0], version or "static " + ",".join(sorted(addresses))

    return locate
