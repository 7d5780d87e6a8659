"""upf.orders.v1.Orders against real storage and cache plugins (processes registered with a real
registry): every method, idempotent creates, the status machine, concurrency, paging, the change feed."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable
from typing import Any

import grpc
import pytest
from upf.orders.v1 import orders_pb2 as pb

from plugins.orders.service import derived_order_id
from tests.plugins.orders.harness import Orders, create_request, new_customer


async def test_create_then_get_returns_the_order_with_total_and_version(orders: Orders) -> None:
    customer = new_customer()
    created = (await orders.stub.CreateOrder(create_request(customer, currency="USD"))).order
    assert created.id.startswith("ord_")
    assert created.status == pb.ORDER_STATUS_PENDING
    assert created.total_minor == 2 * 450 + 1299
    assert created.currency == "USD"
    assert created.version == 1
    assert created.created_at_ms == created.updated_at_ms > 0
    fetched = (await orders.stub.GetOrder(pb.GetOrderRequest(id=created.id))).order
    assert fetched == created


async def test_a_retry_with_the_same_request_id_returns_the_same_order(orders: Orders) -> None:
    customer, request_id = new_customer(), str(uuid.uuid4())
    first = await orders.stub.CreateOrder(create_request(customer, request_id))
    again = await orders.stub.CreateOrder(create_request(customer, request_id))
    assert not first.replayed
    assert again.replayed
    assert again.order == first.order
    assert first.order.id == derived_order_id(customer, request_id)
    # ICache remembers the request id (in the orders plugin's namespace), so the retry skipped its write.
    cache = await orders.plugin.cache()
    assert await cache.get(f"create:{customer}:{request_id}") == first.order.id.encode()
    # Attempts racing each other end with one order too.
    racing_id = str(uuid.uuid4())
    answers = await asyncio.gather(*(orders.stub.CreateOrder(create_request(customer, racing_id)) for _ in range(5)))
    assert len({a.order.id for a in answers}) == 1
    assert sum(not a.replayed for a in answers) == 1
    listed = await orders.stub.ListOrders(pb.ListOrdersRequest(customer_id=customer))
    assert listed.total_count == 2


async def test_status_moves_only_along_the_allowed_transitions(orders: Orders) -> None:
    order = (await orders.stub.CreateOrder(create_request(new_customer()))).order
    for status in (pb.ORDER_STATUS_CONFIRMED, pb.ORDER_STATUS_SHIPPED, pb.ORDER_STATUS_DELIVERED):
        moved = await orders.stub.UpdateOrderStatus(pb.UpdateOrderStatusRequest(id=order.id, status=status))
        assert moved.order.status == status
        assert moved.order.version == order.version + 1
        order = moved.order
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await orders.stub.UpdateOrderStatus(pb.UpdateOrderStatusRequest(id=order.id, status=pb.ORDER_STATUS_CANCELLED))
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "from DELIVERED to CANCELLED" in (refused.value.details() or "")

    pending = (await orders.stub.CreateOrder(create_request(new_customer()))).order
    with pytest.raises(grpc.aio.AioRpcError) as skipped:
        await orders.stub.UpdateOrderStatus(pb.UpdateOrderStatusRequest(id=pending.id, status=pb.ORDER_STATUS_SHIPPED))
    assert skipped.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "from PENDING to SHIPPED" in (skipped.value.details() or "")
    cancelled = await orders.stub.UpdateOrderStatus(
        pb.UpdateOrderStatusRequest(id=pending.id, status=pb.ORDER_STATUS_CANCELLED)
    )
    assert cancelled.order.status == pb.ORDER_STATUS_CANCELLED


async def test_a_stale_expected_version_is_aborted(orders: Orders) -> None:
    order = (await orders.stub.CreateOrder(create_request(new_customer()))).order
    confirm = pb.UpdateOrderStatusRequest(id=order.id, status=pb.ORDER_STATUS_CONFIRMED, expected_version=order.version)
    cancel = pb.UpdateOrderStatusRequest(id=order.id, status=pb.ORDER_STATUS_CANCELLED, expected_version=order.version)
    # Two clients that both saw version 1: exactly one wins, the other hears ABORTED.
    results = await asyncio.gather(
        orders.stub.UpdateOrderStatus(confirm), orders.stub.UpdateOrderStatus(cancel), return_exceptions=True
    )
    won = [r for r in results if isinstance(r, pb.UpdateOrderStatusResponse)]
    lost = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert (len(won), len(lost)) == (1, 1), results
    assert lost[0].code() == grpc.StatusCode.ABORTED
    assert "expected_version" in (lost[0].details() or "")
    assert won[0].order.version == 2


async def test_missing_orders_are_not_found(orders: Orders) -> None:
    for call in (
        orders.stub.GetOrder(pb.GetOrderRequest(id="ord_missing")),
        orders.stub.UpdateOrderStatus(pb.UpdateOrderStatusRequest(id="ord_missing", status=pb.ORDER_STATUS_CONFIRMED)),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await call
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND
        assert "ord_missing" in (missing.value.details() or "")


async def test_list_pages_newest_first_and_stays_correct_while_orders_are_created(orders: Orders) -> None:
    customer = new_customer()
    first_five = [(await orders.stub.CreateOrder(create_request(customer))).order.id for _ in range(5)]
    page = await orders.stub.ListOrders(pb.ListOrdersRequest(customer_id=customer, page_size=2))
    assert page.total_count == 5
    assert len(page.orders) == 2
    assert page.next_page_token
    seen = [o.id for o in page.orders]
    created_at = [o.created_at_ms for o in page.orders]
    # Orders created between pages are newer than the cursor: they neither shift nor repeat the rest.
    newer = [(await orders.stub.CreateOrder(create_request(customer))).order.id for _ in range(2)]
    token = page.next_page_token
    while token:
        page = await orders.stub.ListOrders(pb.ListOrdersRequest(customer_id=customer, page_size=2, page_token=token))
        assert page.total_count == 7
        seen += [o.id for o in page.orders]
        created_at += [o.created_at_ms for o in page.orders]
        token = page.next_page_token
    assert sorted(seen) == sorted(first_five)
    assert len(seen) == 5
    assert created_at == sorted(created_at, reverse=True)
    fresh = await orders.stub.ListOrders(pb.ListOrdersRequest(customer_id=customer, page_size=2))
    assert {o.id for o in fresh.orders} == set(newer)


async def test_list_filters_by_status_and_customer(orders: Orders) -> None:
    customer, other = new_customer(), new_customer()
    kept = (await orders.stub.CreateOrder(create_request(customer))).order
    await orders.stub.CreateOrder(create_request(customer))
    await orders.stub.CreateOrder(create_request(other))
    await orders.stub.UpdateOrderStatus(pb.UpdateOrderStatusRequest(id=kept.id, status=pb.ORDER_STATUS_CONFIRMED))
    confirmed = await orders.stub.ListOrders(
        pb.ListOrdersRequest(customer_id=customer, status=pb.ORDER_STATUS_CONFIRMED)
    )
    assert [o.id for o in confirmed.orders] == [kept.id]
    assert confirmed.total_count == 1
    assert not confirmed.next_page_token
    everything = await orders.stub.ListOrders(pb.ListOrdersRequest(customer_id=customer))
    assert everything.total_count == 2


async def test_watch_sees_creates_and_updates_in_order(orders: Orders) -> None:
    customer = new_customer()
    watch = orders.stub.WatchOrders(pb.WatchOrdersRequest(customer_id=customer))
    await watch.initial_metadata()  # sent once the watcher is subscribed: nothing after this is missed
    await orders.stub.CreateOrder(create_request(new_customer()))  # someone else's: filtered out
    order = (await orders.stub.CreateOrder(create_request(customer))).order
    for status in (pb.ORDER_STATUS_CONFIRMED, pb.ORDER_STATUS_SHIPPED):
        await orders.stub.UpdateOrderStatus(pb.UpdateOrderStatusRequest(id=order.id, status=status))
    changes: list[pb.WatchOrdersResponse] = []
    for _ in range(3):
        change = await asyncio.wait_for(watch.read(), 10)
        assert isinstance(change, pb.WatchOrdersResponse), change
        changes.append(change)
    watch.cancel()
    assert [(c.type, c.order.status, c.order.version) for c in changes] == [
        (pb.ORDER_CHANGE_TYPE_CREATED, pb.ORDER_STATUS_PENDING, 1),
        (pb.ORDER_CHANGE_TYPE_UPDATED, pb.ORDER_STATUS_CONFIRMED, 2),
        (pb.ORDER_CHANGE_TYPE_UPDATED, pb.ORDER_STATUS_SHIPPED, 3),
    ]
    assert {c.order.id for c in changes} == {order.id}


def _items(count: int, **item: object) -> list[pb.OrderItem]:
    fields = {"product_id": "sku", "quantity": 1, "unit_price_minor": 100, **item}
    return [pb.OrderItem(**fields) for _ in range(count)]  # type: ignore[arg-type]


BAD_CREATES = [
    ({"items": []}, "items: an order needs at least one item"),
    ({"items": _items(101)}, "items: at most 100 items"),
    ({"items": _items(1, quantity=0)}, "items[0].quantity: must be between 1"),
    ({"items": _items(2) + _items(1, quantity=-3)}, "items[2].quantity"),
    ({"items": _items(1, unit_price_minor=-1)}, "items[0].unit_price_minor: must be between 0"),
    ({"items": _items(1, product_id="")}, "items[0].product_id: is required"),
    ({"customer_id": ""}, "customer_id: is required"),
    ({"currency": "euro"}, "currency:"),
    ({"request_id": "r" * 129}, "request_id: must be at most 128"),
    ({"customer_id": "c\x7f\x01"}, "customer_id: contains a control character"),
]


@pytest.mark.parametrize(("fields", "message"), BAD_CREATES, ids=[m.split(":")[0] for _, m in BAD_CREATES])
async def test_bad_creates_are_invalid_argument_naming_the_field(
    orders: Orders, fields: dict[str, Any], message: str
) -> None:
    fields = dict(fields)  # the parameters are shared by every backend's run
    request = create_request(str(fields.pop("customer_id", new_customer())), **fields)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await orders.stub.CreateOrder(request)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (refused.value.details() or "").startswith(message), refused.value.details()


async def test_bad_lists_updates_and_watches_are_invalid_argument_naming_the_field(orders: Orders) -> None:
    order = (await orders.stub.CreateOrder(create_request(new_customer()))).order
    calls: list[tuple[Awaitable[Any], str]] = [
        (orders.stub.ListOrders(pb.ListOrdersRequest(page_token="not-a-token")), "page_token:"),
        (orders.stub.ListOrders(pb.ListOrdersRequest(page_size=101)), "page_size:"),
        (orders.stub.ListOrders(pb.ListOrdersRequest(status=42)), "status: unknown status 42"),  # type: ignore[arg-type]
        (orders.stub.GetOrder(pb.GetOrderRequest()), "id: is required"),
        # Not an id storage could hold: the caller's error, not a storage failure (INTERNAL).
        (orders.stub.GetOrder(pb.GetOrderRequest(id="o\x14")), "id: contains a control character"),
        (orders.stub.GetOrder(pb.GetOrderRequest(id="o" * 129)), "id: must be at most 128"),
        (orders.stub.UpdateOrderStatus(pb.UpdateOrderStatusRequest(id=order.id)), "status: unknown status 0"),
        (
            orders.stub.UpdateOrderStatus(pb.UpdateOrderStatusRequest(id=order.id, status=99)),  # type: ignore[arg-type]
            "status: unknown status 99",
        ),
        (
            orders.stub.UpdateOrderStatus(
                pb.UpdateOrderStatusRequest(id=order.id, status=pb.ORDER_STATUS_CONFIRMED, expected_version=0)
            ),
            "expected_version:",
        ),
    ]
    for call, message in calls:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await call
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, message
        assert (refused.value.details() or "").startswith(message), refused.value.details()
    # A token from another listing (other filters) is refused too, naming page_token.
    customer = new_customer()
    for _ in range(2):
        await orders.stub.CreateOrder(create_request(customer))
    page = await orders.stub.ListOrders(pb.ListOrdersRequest(customer_id=customer, page_size=1))
    with pytest.raises(grpc.aio.AioRpcError) as foreign:
        await orders.stub.ListOrders(pb.ListOrdersRequest(page_size=1, page_token=page.next_page_token))
    assert foreign.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (foreign.value.details() or "").startswith("page_token:")
    watch = orders.stub.WatchOrders(pb.WatchOrdersRequest(status=7))  # type: ignore[arg-type]
    with pytest.raises(grpc.aio.AioRpcError) as bad_watch:
        await watch.read()
    assert bad_watch.value.code() == grpc.StatusCode.INVALID_ARGUMENT
