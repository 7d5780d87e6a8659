"""The message-bus plugins under test: a registry, callers with identity tokens, one bus per backend.

Each test gets its own bus plugin (in this process, on a free port) with a prefix of its own in the
broker, so that runs and tests never share a subject, stream, queue or key; the broker objects are
deleted afterwards.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

from common.rpc.channel import Channel
from plugins.messagebus.plugin import BusSettings
from plugins.sdk.identity import caller_token_hook
from plugins.sdk.messagebus import MessageBusClient
from tests.support.registry_process import RunningRegistry

BACKENDS = ("memory", "nats", "rabbitmq", "redis")
URLS = {
    "memory": "",
    "nats": "nats://127.0.0.1:4222",
    "rabbitmq": "amqp://guest:guest@127.0.0.1:5672/",
    "redis": "redis://127.0.0.1:6379/0",
}


def bus_settings(backend: str, url: str | None = None) -> BusSettings:
    """Settings with a prefix of the test's own ("upf:test:..." for Redis keys, "upftest-..." elsewhere)."""
    run = secrets.token_hex(5)
    prefix = f"upftest:{run}" if backend == "redis" else f"upftest-{run}"
    return BusSettings(backend, URLS[backend] if url is None else url, prefix)


def caller_token(registry: RunningRegistry, plugin_id: str) -> str:
    """An identity token for `plugin_id`, as the registry gives a registered plugin."""
    manifest = json.dumps(
        {
            "id": plugin_id,
            "version": "1.0.0",
            "name": plugin_id,
            "type": "business",
            "requires": [{"interface": "IMessageBus", "version": "^1"}],
        }
    )
    reply = registry.stub.Register(registry.register_request(manifest, endpoint="127.0.0.1:1"))
    return str(reply.identity_token)


@dataclass
class Callers:
    """Clients of one bus endpoint as two different plugins (namespaces a and b)."""

    a: MessageBusClient
    b: MessageBusClient
    anonymous: MessageBusClient


@asynccontextmanager
async def callers(endpoint: str, tokens: dict[str, str]) -> AsyncIterator[Callers]:
    # The channel plugins reach their bus with (plugins/sdk/resolve.py).
    channels = [
        Channel(endpoint, metadata_hooks=[caller_token_hook(_constant(tokens["a"]))]),
        Channel(endpoint, metadata_hooks=[caller_token_hook(_constant(tokens["b"]))]),
        Channel(endpoint),
    ]
    try:
        yield Callers(*(MessageBusClient(channel, timeout=10.0) for channel in channels))
    finally:
        for channel in channels:
            await channel.close(None)


def _constant(token: str) -> Callable[[], str]:
    return lambda: token
