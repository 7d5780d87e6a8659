"""The grammar of names more than one component checks: gRPC services and host:port addresses."""

from __future__ import annotations

import re

__all__ = ["HOST_PORT", "SERVICE", "is_host_port"]

#: A fully qualified gRPC service: `package.Service`, at least one dot (upf.orders.v1.Orders).
SERVICE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+$")

#: host:port, with an IPv6 address in brackets ([::1]:50051); the port's range is checked by is_host_port.
HOST_PORT = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):(\d{1,5})$")


def is_host_port(value: str) -> bool:
    match = HOST_PORT.match(value)
    return match is not None and 0 < int(match.group(2)) < 65536
