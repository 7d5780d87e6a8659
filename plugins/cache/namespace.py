"""Whose keys a call touches: the namespace every key and lock of a caller lives in.

CacheService takes the answer from a `namespace_of` collaborator. The registered plugins
(`upf plugin cache-*`, plugins/cache/plugin.py) pass the verified one: the caller's plugin id from the
identity token the registry signed (plugins.sdk.identity.RegistryCallers).

`caller_from_metadata`, CacheService's default, is the PLACEHOLDER for where no registry vouches for
callers (an embedded cache, the conformance suite): it believes the name the caller sends in the
`upf-caller` metadata, which any caller can forge. It keeps callers apart by mistake, not against intent.
"""

from __future__ import annotations

import re
from typing import Any, TypeAlias

import grpc

from plugins.cache.errors import InvalidArgument

__all__ = ["CALLER_METADATA", "DEFAULT_NAMESPACE", "caller_from_metadata", "check_namespace"]

CALLER_METADATA = "upf-caller"
DEFAULT_NAMESPACE = "default"
# No ':' so that "<prefix>:<namespace>:..." in Redis can never be read two ways.
_NAMESPACE = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}", re.IGNORECASE)

_Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"


def check_namespace(name: str) -> str:
    if not _NAMESPACE.fullmatch(name):
        raise InvalidArgument(
            CALLER_METADATA,
            f"{name!r} is not a namespace: 1-63 letters, digits, '.', '_' or '-', starting alphanumeric",
        )
    return name


async def caller_from_metadata(context: _Context) -> str:
    """The `upf-caller` metadata value, or "default" when there is none (see the module docstring)."""
    for key, value in context.invocation_metadata() or ():
        if key == CALLER_METADATA:
            return check_namespace(value if isinstance(value, str) else value.decode())
    return DEFAULT_NAMESPACE
