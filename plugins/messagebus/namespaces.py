"""The caller's namespace, with verified tokens remembered for a few seconds.

Checking a caller's token (an EdDSA signature) costs about as much as the rest of a Publish; a plugin
publishing a stream of events sends the same token on every call (it changes only with lease
renewals). A token verified less than `ttl` seconds ago is taken again without checking: a token
is accepted at most `ttl` seconds after it stopped being valid (the verifier already allows 30 s of
clock skew).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeAlias

import grpc

from plugins.sdk.identity import CALLER_TOKEN_METADATA

__all__ = ["RememberedNamespaces"]

_Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"


class RememberedNamespaces:
    def __init__(
        self,
        namespace_of: Callable[[_Context], Awaitable[str]],
        *,
        ttl: float = 10.0,
        max_entries: int = 1000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._namespace_of = namespace_of
        self._ttl = ttl
        self._max_entries = max_entries
        self._clock = clock
        self._known: dict[str, tuple[str, float]] = {}  # token -> (namespace, verified at)

    async def __call__(self, context: _Context) -> str:
        token = next((str(v) for k, v in context.invocation_metadata() or () if k == CALLER_TOKEN_METADATA), "")
        now = self._clock()
        known = self._known.get(token)
        if token and known is not None and now - known[1] < self._ttl:
            return known[0]
        namespace = await self._namespace_of(context)  # ends the call if the token is refused
        if len(self._known) >= self._max_entries:
            self._known.clear()
        self._known[token] = (namespace, now)
        return namespace
