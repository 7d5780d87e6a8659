"""Descriptors per routed service, fetched from a replica once per plugin version.

`locate(service)` is the gateway's routing knowledge: a replica address that can answer now, and a
version key (the plugin's manifest version; a static upstream has one fixed key). The first call for a
service fetches its files; concurrent callers wait for that one fetch; a later call with another version
key fetches again, so a plugin re-registered with a changed proto is described by what it serves now.
A failed fetch is remembered for `retry_after` seconds, so a plugin without reflection is not asked on
every JSON call, and a fixed plugin is asked again soon.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

import grpc
from google.protobuf import descriptor_pool, message_factory
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from google.protobuf.message import Message

from gateway.descriptors.fetch import ReflectionError, fetch_files

__all__ = ["DescriptorCatalog", "DescriptorsUnavailable", "Locate", "MethodSchema"]

Locate = Callable[[str], "tuple[str, str] | None"]

# Codes a reflection call ends with when the channel, not the plugin, failed: tried again at once.
_TRANSPORT_FAILURES = frozenset({grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.UNAVAILABLE})


class DescriptorsUnavailable(Exception):
    """No schema for the service now: no replica to ask, no reflection, or a broken answer.

    `retryable`: the plugin could not be reached (asking again later may work), as opposed to a
    plugin that answered without a usable schema."""

    def __init__(self, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable


@dataclass(frozen=True, slots=True)
class MethodSchema:
    service: str
    name: str
    input: type[Message]
    output: type[Message]
    client_streaming: bool
    server_streaming: bool
    # `option idempotency_level = NO_SIDE_EFFECTS`: Connect lets such methods be called with GET.
    side_effect_free: bool
    descriptor: MethodDescriptor


@dataclass(slots=True)
class _Entry:
    version: str
    service: ServiceDescriptor | None = None
    error: str = ""
    failed_at: float = 0.0
    unreachable: bool = False  # the replica could not be reached: not remembered, asked again next time


class DescriptorCatalog:
    def __init__(
        self,
        locate: Locate,
        *,
        timeout: float = 5.0,
        retry_after: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._locate = locate
        self._timeout = timeout
        self._retry_after = retry_after
        self._clock = clock
        self._entries: dict[str, _Entry] = {}
        self._fetching: dict[tuple[str, str], asyncio.Future[_Entry]] = {}
        self._channels: dict[str, grpc.aio.Channel] = {}

    async def service(self, name: str) -> ServiceDescriptor:
        located = self._locate(name)
        if located is None:
            raise DescriptorsUnavailable(f"no replica of {name} can describe it now", retryable=True)
        address, version = located
        entry = self._entries.get(name)
        stale = entry is not None and entry.error and (entry.unreachable or self._expired(entry))
        if entry is None or entry.version != version or stale:
            entry = await self._fetch_once(name, address, version)
        if entry.service is None:
            raise DescriptorsUnavailable(f"{name}: {entry.error}", retryable=entry.unreachable)
        return entry.service

    async def method(self, service: str, method: str) -> MethodSchema | None:
        """The method's schema, or None when the service has no such method."""
        found = (await self.service(service)).methods_by_name.get(method)
        if found is None:
            return None
        options = found.GetOptions()
        return MethodSchema(
            service=service,
            name=method,
            input=message_factory.GetMessageClass(found.input_type),
            output=message_factory.GetMessageClass(found.output_type),
            client_streaming=found.client_streaming,
            server_streaming=found.server_streaming,
            side_effect_free=options.idempotency_level == options.NO_SIDE_EFFECTS,
            descriptor=found,
        )

    async def start(self) -> None:
        """Nothing to open: a plugin's channel opens with the first question to it."""

    def status(self) -> None:
        return None

    async def close(self) -> None:
        channels, self._channels = list(self._channels.values()), {}
        for channel in channels:
            await channel.close(None)

    def _expired(self, entry: _Entry) -> bool:
        return self._clock() - entry.failed_at >= self._retry_after

    async def _fetch_once(self, name: str, address: str, version: str) -> _Entry:
        key = (name, version)
        pending = self._fetching.get(key)
        if pending is None:
            pending = asyncio.ensure_future(self._fetch(name, address, version))
            self._fetching[key] = pending
            pending.add_done_callback(lambda _: self._fetching.pop(key, None))
        # shield: one caller giving up (its client went away) must not cancel the others' fetch.
        return await asyncio.shield(pending)

    async def _fetch(self, name: str, address: str, version: str) -> _Entry:
        entry = _Entry(version)
        try:
            try:
                files = await fetch_files(self._channel(address), name, timeout=self._timeout)
            except grpc.aio.AioRpcError as exc:
                if exc.code() not in _TRANSPORT_FAILURES:
                    raise
                # Once more, on a new channel: a failure of the channel itself is not the plugin's
                # answer, and remembering it would refuse JSON calls for `retry_after` seconds.
                await self._drop_channel(address)
                files = await fetch_files(self._channel(address), name, timeout=self._timeout)
            pool = descriptor_pool.DescriptorPool()
            for proto in files:
                pool.Add(proto)
            entry.service = pool.FindServiceByName(name)
        except ReflectionError as exc:
            entry.error = str(exc)
        except grpc.aio.AioRpcError as exc:
            entry.error = f"reflection call failed: {exc.code().name}"
            entry.unreachable = exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
        except (KeyError, TypeError, ValueError) as exc:
            # KeyError: the files do not define the service; TypeError/ValueError: a file the
            # runtime rejects (conflicting or malformed definitions).
            entry.error = f"the plugin's descriptors are unusable: {exc}"
        if entry.error:
            entry.failed_at = self._clock()
        self._entries[name] = entry
        return entry

    async def _drop_channel(self, address: str) -> None:
        channel = self._channels.pop(address, None)
        if channel is not None:
            await channel.close(None)

    def _channel(self, address: str) -> grpc.aio.Channel:
        channel = self._channels.get(address)
        if channel is None:
            channel = self._channels[address] = grpc.aio.insecure_channel(address)
        return channel
