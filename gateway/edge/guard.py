"""Connection and WebSocket counts of one gateway process, in total and per client address.

The HTTP port (gateway/edge/protocol.py) and the native gRPC port (gateway/ingress/server.py) count
on the same guard: `maxConnections` and the per-client caps are what the process holds, whichever
port a connection came in on.
"""

from __future__ import annotations

import enum
import ipaddress
from collections import Counter

from gateway.edge.identity_headers import names
from gateway.settings import EdgeSettings

__all__ = ["Admission", "EdgeGuard", "process_guard"]


class Admission(enum.Enum):
    ADMITTED = "admitted"
    SERVER_FULL = "server full"  # the process holds maxConnections: the connection is closed at once
    CLIENT_FULL = "client full"  # this address holds its share: the request is answered 429


class EdgeGuard:
    """Counts what each client address holds; the protocol asks before it takes and tells when it lets go.

    One per process (uvicorn runs every connection of a process on one event loop, so no lock).
    """

    def __init__(self, limits: EdgeSettings) -> None:
        self.limits = limits
        self.connections = 0
        self._per_client: Counter[str] = Counter()
        self._websockets: Counter[str] = Counter()
        self._unlimited = [ipaddress.ip_network(network, strict=False) for network in limits.unlimited_clients]
        self.identity_headers = names(limits.identity_headers)  # dropped from every request

    def client_key(self, host: str | None) -> str | None:
        """The address a client's share is counted under (IPv6: its /64, which one host usually
        holds whole), or None when no share applies (unknown peer, or an unlimited address)."""
        if host is None:
            return None
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return host  # a Unix socket path: one share for all
        if any(address in network for network in self._unlimited):
            return None
        if address.version == 6:
            if address.ipv4_mapped is not None:
                return str(address.ipv4_mapped)
            return str(ipaddress.ip_network(f"{address}/64", strict=False))
        return str(address)

    def admit_connection(self, key: str | None) -> Admission:
        if self.connections >= self.limits.max_connections:
            return Admission.SERVER_FULL
        self.connections += 1
        if key is None:
            return Admission.ADMITTED
        if self._per_client[key] >= self.limits.max_connections_per_client:
            return Admission.CLIENT_FULL  # counted in the total only, until it is answered and closed
        self._per_client[key] += 1
        return Admission.ADMITTED

    def release_connection(self, key: str | None, admission: Admission) -> None:
        if admission is Admission.SERVER_FULL:
            return
        self.connections -= 1
        if key is not None and admission is Admission.ADMITTED:
            self._release(self._per_client, key)

    def admit_websocket(self, key: str | None) -> bool:
        if key is None:
            return True
        if self._websockets[key] >= self.limits.max_websockets_per_client:
            return False
        self._websockets[key] += 1
        return True

    def release_websocket(self, key: str | None) -> None:
        if key is not None:
            self._release(self._websockets, key)

    def held_by(self, key: str) -> tuple[int, int]:
        """(connections, WebSockets) this client address holds now."""
        return self._per_client[key], self._websockets[key]

    @staticmethod
    def _release(counts: Counter[str], key: str) -> None:
        counts[key] -= 1
        if counts[key] <= 0:
            del counts[key]  # addresses come and go: keep only those holding something


_process_guards: dict[str, EdgeGuard] = {}


def process_guard(limits: EdgeSettings) -> EdgeGuard:
    """This process's guard for these limits, shared by both ports (each worker process has its own)."""
    key = limits.model_dump_json()
    guard = _process_guards.get(key)
    if guard is None:
        guard = _process_guards[key] = EdgeGuard(limits)
    return guard
