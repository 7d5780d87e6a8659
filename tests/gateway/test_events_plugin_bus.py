"""/api/events fed by the deployment's IMessageBus plugin (`events.bus: plugin`), with real processes:
a registry, `upf plugin message-bus-memory` or `message-bus-nats`, and a gateway. A plugin publishes
order.created on IMessageBus and a browser's socket on /api/events receives it; what is POSTed to
/api/events/{topic} goes out on IMessageBus, where plugins see it."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import httpx
import pytest
from upf.registry.v1 import registry_pb2 as pb

from gateway.events import bus_from_settings
from gateway.events.bus import BusUnavailable
from gateway.settings import EventsSettings
from plugins.sdk.identity import caller_token_interceptors
from plugins.sdk.messagebus import MessageBusClient
from tests.conformance.messagebus.harness import bus_settings, caller_token
from tests.support.events import events_client, events_url
from tests.support.processes import Gateway, Process, _died, free_port, run_gateway, wait_until
from tests.support.registry_process import RunningRegistry, run_registry

UPF = str(Path(sys.executable).parent / "upf")
FAST = {"leaseTtl": 1.5, "health": {"interval": 0.2, "timeout": 0.5, "successesBeforeHealthy": 1}}


@contextmanager
def bus_plugin(backend: str, registry: RunningRegistry, work_dir: Path) -> Iterator[str]:
    settings = bus_settings(backend)
    plugin_id, port = f"message-bus-{backend}", free_port()
    args = [UPF, "plugin", plugin_id, "--port", str(port), "--registry", registry.target]
    if backend != "memory":
        args += ["--bus-url", settings.url, "--bus-prefix", settings.prefix]
    env = {k: v for k, v in os.environ.items() if not k.startswith("UPF_")}
    env["UPF_REGISTRATION_CREDENTIAL"] = registry.credential(plugin_id)
    process = Process(args, env=env, log=work_dir / f"{plugin_id}-{port}.log")
    try:
        # Registered and healthy before the gateway starts (two starting processes share a busy machine).
        wait_until(lambda: healthy(registry, plugin_id) or (not process.alive() and _died(process)), what=plugin_id)
        yield f"127.0.0.1:{port}"
    finally:
        process.stop()


def registered(registry: RunningRegistry, plugin_id: str) -> bool:
    return plugin_id in {p.plugin_id for p in registry.stub.ListPlugins(pb.ListPluginsRequest(), timeout=2).plugins}


def healthy(registry: RunningRegistry, plugin_id: str) -> bool:
    plugins = registry.stub.ListPlugins(pb.ListPluginsRequest(), timeout=2).plugins
    return any(
        p.plugin_id == plugin_id and any(i.health == pb.HEALTH_STATE_HEALTHY for i in p.instances) for p in plugins
    )


def events_status(gateway: Gateway) -> dict[str, object]:
    return dict(httpx.get(f"{gateway.url}/readyz", timeout=5).json()["events"])


@pytest.fixture(scope="module")
def registry(work_dir: Path) -> Iterator[RunningRegistry]:
    # Started outside the test's event loop: its readiness is probed with grpc's blocking API.
    with run_registry(FAST, work_dir) as running_registry:
        yield running_registry


async def round_trip(registry: RunningRegistry, endpoint: str, gateway: Gateway) -> None:
    """A plugin's events reach a browser's socket, and what is POSTed to /api/events reaches plugins."""
    token = caller_token(registry, "orders-plugin")
    async with (
        grpc.aio.insecure_channel(endpoint, interceptors=caller_token_interceptors(lambda: token)) as channel,
        events_client(events_url(gateway)) as browser,
    ):
        orders = MessageBusClient(channel)  # what the orders plugin's `await plugin.message_bus()` is
        await browser.subscribe("order.*")
        await orders.publish("order.created", b'{"order": 7}')
        await orders.publish("invoice.created", b"{}")  # not subscribed: not sent
        await orders.publish("order.updated", b'{"order": 7, "status": "paid"}')
        first, second = await browser.events(2)
        assert (first["topic"], first["data"]) == ("order.created", '{"order": 7}')
        assert (second["topic"], second["data"]) == ("order.updated", '{"order": 7, "status": "paid"}')
        assert int(second["id"]) > int(first["id"])

        async with orders.subscribe("order.shipped") as subscription:
            async with httpx.AsyncClient(timeout=10) as http:
                posted = await http.post(f"{gateway.url}/api/events/order.shipped", content=b"box 1")
            assert posted.status_code == 200, posted.text
            delivery = await asyncio.wait_for(anext(aiter(subscription)), 10)
            assert delivery.payload == b"box 1"
            (shipped,) = await browser.events(1)
            assert shipped["id"] == posted.json()["id"], (shipped, posted.json())
            assert shipped["data"] == "box 1"


async def test_events_come_from_whichever_bus_plugin_is_deployed(registry: RunningRegistry, work_dir: Path) -> None:
    config = {
        "registryUrl": registry.target,
        "events": {
            "enabled": True,
            "bus": "plugin",
            "registrationCredential": registry.credential("upf-gateway"),
            "publish": True,
        },
    }
    # One gateway throughout: it starts before any bus plugin, then follows message-bus-memory and,
    # once that one is gone, message-bus-nats (a replaced plugin is found through the registry again).
    with run_gateway(config, work_dir) as gateway:
        wait_until(lambda: "no IMessageBus plugin" in str(events_status(gateway).get("error")), what="the reason")
        # The gateway is known to the registry by an identity of its own; it provides nothing to route to.
        wait_until(lambda: registered(registry, "upf-gateway"), what="the gateway's own registration")
        for backend in ("memory", "nats"):
            with bus_plugin(backend, registry, work_dir) as endpoint:
                wait_until(
                    lambda: events_status(gateway).get("endpoint") == endpoint and events_status(gateway)["connected"],
                    what=f"the gateway to subscribe to message-bus-{backend}",
                )
                await round_trip(registry, endpoint, gateway)
            wait_until(lambda: not events_status(gateway)["connected"], what="the gateway to see the plugin leave")


async def test_a_plugin_bus_without_its_settings_says_what_is_missing() -> None:
    # The gateway serves the rest meanwhile; /readyz and every socket say what to set.
    settings = EventsSettings(enabled=True, bus="plugin")
    no_registry = bus_from_settings(settings)
    no_credential = bus_from_settings(settings, registry_url="127.0.0.1:1", endpoints=lambda _service: [])
    for bus, missing in ((no_registry, "set registryUrl"), (no_credential, "events.registrationCredential")):
        await bus.start()
        try:
            status = bus.status()
            assert status["connected"] is False
            assert missing in str(status["error"])
            with pytest.raises(BusUnavailable, match=missing):
                await bus.subscribe(["order.*"])
            with pytest.raises(BusUnavailable, match=missing):
                await bus.publish("order.created", b"")
        finally:
            await bus.close()
