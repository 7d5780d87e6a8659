"""InProcessOrderEvents: subscribers see what is published after they subscribed, in order, and one
that falls too far behind is ended (Overflow) rather than left with gaps it cannot see."""

from __future__ import annotations

import pytest
from upf.orders.v1 import orders_pb2 as pb

from plugins.orders.events import InProcessOrderEvents, Overflow


def _change(order_id: str) -> pb.WatchOrdersResponse:
    return pb.WatchOrdersResponse(type=pb.ORDER_CHANGE_TYPE_CREATED, order=pb.Order(id=order_id))


async def test_subscribers_get_changes_in_order_and_leave_cleanly() -> None:
    events = InProcessOrderEvents()
    await events.publish(_change("before"))  # nobody listens yet: not kept
    async with events.subscribe() as first, events.subscribe() as second:
        for order_id in ("a", "b"):
            await events.publish(_change(order_id))
        for changes in (first, second):
            assert [(await anext(changes)).order.id for _ in range(2)] == ["a", "b"]
    assert events.subscribers == 0


async def test_a_subscriber_that_falls_behind_is_ended() -> None:
    events = InProcessOrderEvents(limit=2)
    async with events.subscribe() as changes:
        for order_id in ("a", "b", "c"):
            await events.publish(_change(order_id))
        assert [(await anext(changes)).order.id for _ in range(2)] == ["a", "b"]
        with pytest.raises(Overflow, match="more than 2 changes behind"):
            await anext(changes)
