"""The orders plugin when its dependencies are not all there: no ICache (idempotency still holds), and
IStorage gone (UNAVAILABLE with a message, no stack trace) and back (works again, no restart)."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from upf.orders.v1 import orders_pb2 as pb

from plugins.orders.service import derived_order_id
from tests.conformance.cache.harness import poll
from tests.plugins.orders.harness import Backends, create_request, new_customer, run_stack, running_orders

STORAGE_ONLY = Backends("storage-sqlite", None)


async def test_without_icache_a_retry_still_returns_the_same_order(tmp_path: Path) -> None:
    with run_stack(STORAGE_ONLY, tmp_path) as stack:
        async with running_orders(stack) as orders:
            customer, request_id = new_customer(), str(uuid.uuid4())
            first = await orders.stub.CreateOrder(create_request(customer, request_id))
            again = await orders.stub.CreateOrder(create_request(customer, request_id))
            assert first.order.id == derived_order_id(customer, request_id)
            assert not first.replayed
            assert again.replayed
            assert again.order == first.order


async def test_storage_down_is_unavailable_and_recovers(tmp_path: Path) -> None:
    with run_stack(STORAGE_ONLY, tmp_path) as stack:
        async with running_orders(stack) as orders:
            created = (await orders.stub.CreateOrder(create_request(new_customer()))).order
            stack.storage.stop()
            calls: dict[str, Callable[[], Awaitable[Any]]] = {
                "CreateOrder": lambda: orders.stub.CreateOrder(create_request(new_customer())),
                "GetOrder": lambda: orders.stub.GetOrder(pb.GetOrderRequest(id=created.id)),
                "ListOrders": lambda: orders.stub.ListOrders(pb.ListOrdersRequest()),
                "UpdateOrderStatus": lambda: orders.stub.UpdateOrderStatus(
                    pb.UpdateOrderStatusRequest(id=created.id, status=pb.ORDER_STATUS_CONFIRMED)
                ),
            }
            for name, call in calls.items():
                with pytest.raises(grpc.aio.AioRpcError) as down:
                    await call()
                assert down.value.code() == grpc.StatusCode.UNAVAILABLE, name
                details = down.value.details() or ""
                assert details.startswith("order storage is not available"), details
                assert "Traceback" not in details

            stack.storage.start()  # the same SQLite file, on the same port

            async def works_again() -> bool:
                try:
                    reply = await orders.stub.GetOrder(pb.GetOrderRequest(id=created.id))
                except grpc.aio.AioRpcError as exc:
                    if exc.code() != grpc.StatusCode.UNAVAILABLE:
                        raise
                    return False
                return reply.order.id == created.id

            await poll(works_again, timeout=15, what="orders to reach storage again")


async def test_a_retry_after_the_cache_forgot_everything_still_returns_the_same_order(tmp_path: Path) -> None:
    # cache-memory restarted between the attempt and its retry: the request id is no longer remembered.
    with run_stack(Backends("storage-sqlite", "cache-memory"), tmp_path) as stack:
        async with running_orders(stack) as orders:
            assert stack.cache is not None
            customer, request_id = new_customer(), str(uuid.uuid4())
            first = await orders.stub.CreateOrder(create_request(customer, request_id))
            stack.cache.stop()
            stack.cache.start()
            again = await orders.stub.CreateOrder(create_request(customer, request_id))
            assert again.replayed
            assert again.order == first.order
