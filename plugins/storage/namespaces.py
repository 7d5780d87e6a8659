"""Where a caller's namespace comes from: the `namespace_of` collaborator StorageService is given.

- `namespace_from_metadata` (service.py, the default): the name the caller *claims* in `upf-caller`.
  A placeholder: it keeps well-behaved plugins apart, not a plugin that lies.
- `RegistryVerifiedNamespaces`: the caller's plugin id, from the identity token the registry signed
  for it (plugins/sdk/identity.py; the SDK's dependency channels send it). A call without a valid
  token ends UNAUTHENTICATED; UNAVAILABLE while the registry's keys cannot be fetched.
"""

from __future__ import annotations

from typing import Any

import grpc
from upf.registry.v1 import registry_pb2_grpc

from plugins.sdk.identity import CallerVerifier

__all__ = ["RegistryVerifiedNamespaces"]


class RegistryVerifiedNamespaces:
    """namespace_of: the verified caller's plugin id, checked with the keys of the registry at `target`."""

    def __init__(self, target: str) -> None:
        self._target = target
        self._channel: grpc.aio.Channel | None = None
        self._verifier: CallerVerifier | None = None

    async def __call__(self, context: grpc.aio.ServicerContext[Any, Any]) -> str:
        if self._verifier is None:
            # Made on first use: a grpc.aio channel belongs to the event loop that serves the calls.
            self._channel = grpc.aio.insecure_channel(self._target)
            self._verifier = CallerVerifier.from_registry(registry_pb2_grpc.RegistryStub(self._channel))
        return await self._verifier.namespace_of(context)

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close(None)
            self._channel = self._verifier = None
