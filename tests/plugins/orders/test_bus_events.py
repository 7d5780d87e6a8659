"""Order changes travel on IMessageBus: `order.created` reaches any plugin that subscribes, and WatchOrders
on one replica sees the orders another replica made."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import yaml
from upf.orders.v1 import orders_pb2 as pb

from plugins.sdk import DependencyUnavailable, Plugin, Timings
from plugins.sdk.messagebus import MessageBusClient
from tests.conformance.cache.harness import poll
from tests.plugins.orders.harness import (
    Backends,
    InfraProcess,
    Orders,
    Stack,
    create_request,
    new_customer,
    run_stack,
    running_orders,
)


@pytest.fixture(scope="module")
def bus_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    work_dir = tmp_path_factory.mktemp("orders-bus")
    with run_stack(Backends("storage-sqlite", "cache-memory"), work_dir) as stack:
        bus = InfraProcess(stack.registry, work_dir, "message-bus-memory", [])
        bus.start()
        try:
            yield stack
        finally:
            bus.stop()


async def relaying(orders: Orders) -> None:
    events = orders.plugin.bus_events  # type: ignore[attr-defined]
    await asyncio.wait_for(events.relaying.wait(), 15)


@contextlib.asynccontextmanager
async def listener(stack: Stack, tmp_path: Path) -> AsyncIterator[Plugin]:
    """Another plugin that requires IMessageBus, as one interested in orders would."""
    manifest = tmp_path / "listener.yaml"
    manifest.write_text(
        yaml.safe_dump(
            {
                "id": "order-listener",
                "version": "1.0.0",
                "name": "Order listener",
                "type": "business",
                "requires": [{"interface": "IMessageBus", "version": "^1"}],
            }
        )
    )
    plugin = Plugin(
        manifest,
        [],
        registry=stack.registry.target,
        handle_signals=False,
        credential=stack.registry.credential,
        timings=Timings(stop_notice=0, drain_grace=0.2, resolve_cache_ttl=0.1),
    )
    task = asyncio.create_task(plugin.run())
    try:
        await plugin.started.wait()
        yield plugin
    finally:
        await plugin.stop()
        await task


async def test_watch_on_one_replica_sees_orders_made_on_another_and_listeners_hear_them(
    bus_stack: Stack, tmp_path: Path
) -> None:
    async with (
        running_orders(bus_stack) as first,
        running_orders(bus_stack) as second,
        listener(bus_stack, tmp_path) as other,
    ):
        await relaying(first)
        await relaying(second)

        async def bus_client() -> MessageBusClient | None:
            try:
                return await other.message_bus()
            except DependencyUnavailable:
                return None

        bus: MessageBusClient = await poll(bus_client, timeout=15, what="the listener to reach IMessageBus")
        customer = new_customer()
        watch = second.stub.WatchOrders(pb.WatchOrdersRequest(customer_id=customer))
        await watch.initial_metadata()  # subscribed
        async with bus.subscribe("order.created") as heard:
            created = await first.stub.CreateOrder(create_request(customer, "bus-1"), timeout=10)
            change = await asyncio.wait_for(watch.read(), 10)
            assert isinstance(change, pb.WatchOrdersResponse)
            assert (change.type, change.order) == (pb.ORDER_CHANGE_TYPE_CREATED, created.order)
            message = await asyncio.wait_for(anext(heard), 10)
            assert message.subject == "order.created"
            assert pb.WatchOrdersResponse.FromString(message.payload).order == created.order
            await message.ack()
        watch.cancel()
