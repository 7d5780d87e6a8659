"""Sharing between plugins: whose namespace a call works in, and what the caller may do there.

Every caller's data in an infrastructure plugin lives in the namespace of its verified plugin id
(identity.py). A caller reaches another plugin's data only by naming that plugin, the owner, in the
`upf-owner` metadata (the SDK: `await plugin.storage(owner="orders-plugin")`), and only as far as the
owner's manifest grants it (manifests/model.py, `grants:`):

    grants:
      storage: [{collection: orders, plugins: [billing-plugin], access: read}]
      cache: [{keyPrefix: "orders:", plugins: [billing-plugin], access: read-write}]

The grant is read from the owner's manifest as the registry holds it (ListPlugins), never from the
caller: `RegistryGrants` keeps the registry's answer for a second, so a re-registered manifest
that drops a grant ends the access within that time. An owner that is not registered grants nothing.

An infrastructure plugin's servicer asks `Sharing.scope(context, caller)` once per call, then
`scope.require(resource, write=..., field=...)` for each collection, key, pattern or path the call
touches. Refusals are `SharingError`s that carry their gRPC status: PERMISSION_DENIED naming the grant
that is missing, INVALID_ARGUMENT for an owner that is not a plugin id, UNAVAILABLE when the registry
cannot be asked.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypeAlias

import grpc
from pydantic import ValidationError
from upf.registry.v1 import registry_pb2 as pb, registry_pb2_grpc

from manifests.model import Grants

__all__ = [
    "OWNER_METADATA",
    "GrantSource",
    "Interface",
    "RegistryGrants",
    "Scope",
    "Sharing",
    "SharingError",
    "owner_metadata",
]

OWNER_METADATA = "upf-owner"
Interface = Literal["storage", "cache", "files"]
_Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"
_PLUGIN_ID = re.compile(r"[a-z]([a-z0-9-]{0,61}[a-z0-9])?")


@dataclass(frozen=True, slots=True)
class _Granted:
    """How an interface's grants name what they open."""

    key: str  # in the manifest (camelCase)
    attribute: str  # on the manifest model's grant
    noun: str  # what a call touches, in messages
    by_prefix: bool  # a grant opens everything that starts with it (else: exactly it)


_GRANTED: dict[Interface, _Granted] = {
    "storage": _Granted("collection", "collection", "collection", by_prefix=False),
    "cache": _Granted("keyPrefix", "key_prefix", "key", by_prefix=True),
    "files": _Granted("pathPrefix", "path_prefix", "path", by_prefix=True),
}

#: owner plugin id -> its `grants` section (None: the owner is not registered).
GrantSource = Callable[[str], Awaitable[Grants | None]]


class SharingError(Exception):
    """A call that may not work in the namespace it asked for; `code` is the status to answer with."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def owner_metadata(owner: str | None) -> tuple[tuple[str, str], ...]:
    """The metadata a client sends to work in `owner`'s namespace (none: its own)."""
    return ((OWNER_METADATA, owner),) if owner else ()


@dataclass(frozen=True, slots=True)
class Scope:
    """The namespace a call works in, and the caller's rights there (None: its own, everything)."""

    namespace: str
    caller: str
    interface: Interface
    rules: tuple[tuple[str, bool], ...] | None = None  # (granted collection or prefix, writable)

    def require(self, resource: str, *, write: bool, field: str) -> None:
        """SharingError(PERMISSION_DENIED) unless the caller may read (or, `write`, change) `resource`."""
        if self.rules is None:
            return
        granted_as = _GRANTED[self.interface]
        matching = [
            w
            for granted, w in self.rules
            if (resource.startswith(granted) if granted_as.by_prefix else resource == granted)
        ]
        if any(matching) if write else matching:
            return
        where = f"grants.{self.interface} of {self.namespace}'s manifest"
        if matching:
            raise SharingError(
                grpc.StatusCode.PERMISSION_DENIED,
                f"{field}: {self.namespace} grants {self.caller} read access to {granted_as.noun} {resource!r}, not "
                f"read-write ({where})",
            )
        granted = ", ".join(f"{g!r} ({'read-write' if w else 'read'})" for g, w in self.rules)
        raise SharingError(
            grpc.StatusCode.PERMISSION_DENIED,
            f"{field}: {self.namespace} grants {self.caller} no access to {granted_as.noun} {resource!r}; "
            f"{where} gives it {granted_as.key} {granted}",
        )


class Sharing:
    """Scopes for one interface's calls, with grants from `grants` (None: no registry to read them from,
    so a caller may use only its own namespace)."""

    def __init__(self, interface: Interface, grants: GrantSource | None) -> None:
        self.interface = interface
        self._grants = grants

    async def scope(self, context: _Context, caller: str) -> Scope:
        owner = requested_owner(context)
        if owner is None or owner == caller:
            return Scope(caller, caller, self.interface)
        if self._grants is None:
            raise SharingError(
                grpc.StatusCode.PERMISSION_DENIED,
                f"{OWNER_METADATA}: this {self.interface} plugin reads grants from no registry, so it serves "
                f"each caller its own data only",
            )
        grants = await self._grants(owner)
        if grants is None:
            raise SharingError(
                grpc.StatusCode.PERMISSION_DENIED,
                f"{OWNER_METADATA}: {owner} is not registered, so it grants {caller} nothing",
            )
        attribute = _GRANTED[self.interface].attribute
        rules = tuple(
            (getattr(g, attribute), g.access == "read-write")
            for g in getattr(grants, self.interface)
            if caller in g.plugins
        )
        if not rules:
            raise SharingError(
                grpc.StatusCode.PERMISSION_DENIED,
                f"{OWNER_METADATA}: {owner} grants {caller} nothing in {self.interface} (no entry for "
                f"{caller} in grants.{self.interface} of {owner}'s manifest)",
            )
        return Scope(owner, caller, self.interface, rules)


def requested_owner(context: _Context) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == OWNER_METADATA:
            owner = value if isinstance(value, str) else value.decode()
            if not _PLUGIN_ID.fullmatch(owner):
                raise SharingError(
                    grpc.StatusCode.INVALID_ARGUMENT, f"{OWNER_METADATA}: {owner[:80]!r} is not a plugin id"
                )
            return owner
    return None


class RegistryGrants:
    """A GrantSource: the `grants` of each plugin's manifest as the registry at `target` holds it, from
    one ListPlugins kept for `ttl` seconds (only calls into another plugin's namespace ask). The channel is
    made on first use (a grpc.aio channel belongs to the event loop that serves the calls); `close()`
    when the plugin stops."""

    def __init__(
        self, target: str, *, ttl: float = 1.0, call_timeout: float = 5.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._target = target
        self._ttl = ttl
        self._call_timeout = call_timeout
        self._clock = clock
        self._channel: grpc.aio.Channel | None = None
        self._known: Mapping[str, Grants | None] = {}
        self._fetched_at: float | None = None
        self._fetching = asyncio.Lock()

    async def __call__(self, owner: str) -> Grants | None:
        if self._stale():
            async with self._fetching:
                if self._stale():  # another call may have fetched while this one waited
                    self._known = await self._fetch()
                    self._fetched_at = self._clock()
        return self._known.get(owner)

    def _stale(self) -> bool:
        return self._fetched_at is None or self._clock() - self._fetched_at >= self._ttl

    async def _fetch(self) -> dict[str, Grants | None]:
        if self._channel is None:
            self._channel = grpc.aio.insecure_channel(self._target)
        stub = registry_pb2_grpc.RegistryStub(self._channel)
        try:
            reply: pb.ListPluginsResponse = await stub.ListPlugins(pb.ListPluginsRequest(), timeout=self._call_timeout)
        except grpc.aio.AioRpcError as exc:
            raise SharingError(
                grpc.StatusCode.UNAVAILABLE,
                f"{OWNER_METADATA}: the owner's grants cannot be read from the registry "
                f"({exc.code().name}: {exc.details()})",
            ) from None
        return {p.plugin_id: _grants_of(p.manifest_json) for p in reply.plugins}

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close(None)
            self._channel = None


def _grants_of(manifest_json: str) -> Grants:
    """The manifest's grants; none when it has none (or, never expected from the registry, a bad one)."""
    try:
        raw = json.loads(manifest_json).get("grants")
        return Grants.model_validate(raw) if isinstance(raw, dict) else Grants()
    except (ValueError, ValidationError, AttributeError):
        return Grants()
