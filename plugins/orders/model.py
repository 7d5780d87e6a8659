"""Orders as storage documents and as messages, the checks on what clients send, and the status machine.

A stored order is a JSON document in the collection "orders" (the record id is the order id); its
version is storage's record version, never a field of the document, so optimistic concurrency is the
storage plugin's compare-and-set and not something this plugin re-implements.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import grpc
from upf.orders.v1 import orders_pb2 as pb

__all__ = [
    "COLLECTION",
    "MAX_ITEMS",
    "Refused",
    "check_create",
    "check_list",
    "check_status",
    "order_document",
    "order_message",
    "status_name",
    "transition_problem",
]

COLLECTION = "orders"
MAX_ITEMS = 100
MAX_QUANTITY = 1_000_000
MAX_ID_LENGTH = 128
# Keeps quantity * price and their sum far inside int64 (and inside JSON numbers JavaScript reads exactly).
MAX_UNIT_PRICE_MINOR = 10**12
DEFAULT_CURRENCY = "EUR"
DEFAULT_PAGE_SIZE = 20
MAX_PAGE_SIZE = 100
_CURRENCY = re.compile(r"[A-Z]{3}")

# Where each status may go next; DELIVERED and CANCELLED are final.
TRANSITIONS: Mapping[int, frozenset[int]] = {
    pb.ORDER_STATUS_PENDING: frozenset({pb.ORDER_STATUS_CONFIRMED, pb.ORDER_STATUS_CANCELLED}),
    pb.ORDER_STATUS_CONFIRMED: frozenset({pb.ORDER_STATUS_SHIPPED, pb.ORDER_STATUS_CANCELLED}),
    pb.ORDER_STATUS_SHIPPED: frozenset({pb.ORDER_STATUS_DELIVERED}),
    pb.ORDER_STATUS_DELIVERED: frozenset(),
    pb.ORDER_STATUS_CANCELLED: frozenset(),
}


class Refused(Exception):
    """A call answered with a gRPC status and a message meant for the client (no internals in it)."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def invalid(field: str, message: str) -> Refused:
    return Refused(grpc.StatusCode.INVALID_ARGUMENT, f"{field}: {message}")


def status_name(status: int) -> str:
    """PENDING for ORDER_STATUS_PENDING: how statuses read in messages and in storage."""
    return pb.OrderStatus.Name(status).removeprefix("ORDER_STATUS_")  # type: ignore[arg-type]


def _status_value(name: str) -> int:
    return int(pb.OrderStatus.Value(f"ORDER_STATUS_{name}"))


def check_status(field: str, status: int, *, allow_any: bool) -> None:
    known = status in pb.OrderStatus.values()
    if not known or (status == pb.ORDER_STATUS_UNSPECIFIED and not allow_any):
        choices = ", ".join(status_name(s) for s in TRANSITIONS)
        raise invalid(field, f"unknown status {status} (one of {choices})")


def _check_id(field: str, value: str, *, required: bool) -> None:
    if required and not value:
        raise invalid(field, "is required")
    if len(value) > MAX_ID_LENGTH:
        raise invalid(field, f"must be at most {MAX_ID_LENGTH} characters, got {len(value)}")
    # Storage refuses such ids; refused here they are the caller's error, not a storage failure.
    if any(ord(c) < 32 for c in value):
        raise invalid(field, "contains a control character")


def check_order_id(value: str) -> None:
    """The id of an order to read or update: required, and one that storage can hold."""
    _check_id("id", value, required=True)


def check_create(request: pb.CreateOrderRequest) -> None:
    _check_id("request_id", request.request_id, required=False)
    _check_id("customer_id", request.customer_id, required=True)
    if request.currency and not _CURRENCY.fullmatch(request.currency):
        raise invalid("currency", f"{request.currency!r} is not an ISO 4217 code (three uppercase letters, e.g. EUR)")
    if not request.items:
        raise invalid("items", "an order needs at least one item")
    if len(request.items) > MAX_ITEMS:
        raise invalid("items", f"at most {MAX_ITEMS} items per order, got {len(request.items)}")
    for i, item in enumerate(request.items):
        _check_id(f"items[{i}].product_id", item.product_id, required=True)
        if len(item.name) > 500:
            raise invalid(f"items[{i}].name", "must be at most 500 characters")
        if not 1 <= item.quantity <= MAX_QUANTITY:
            raise invalid(f"items[{i}].quantity", f"must be between 1 and {MAX_QUANTITY}, got {item.quantity}")
        if not 0 <= item.unit_price_minor <= MAX_UNIT_PRICE_MINOR:
            raise invalid(
                f"items[{i}].unit_price_minor",
                f"must be between 0 and {MAX_UNIT_PRICE_MINOR} minor units, got {item.unit_price_minor}",
            )


def check_list(request: pb.ListOrdersRequest) -> int:
    """The page size to use."""
    check_status("status", request.status, allow_any=True)
    _check_id("customer_id", request.customer_id, required=False)
    if not 0 <= request.page_size <= MAX_PAGE_SIZE:
        raise invalid(
            "page_size", f"must be between 1 and {MAX_PAGE_SIZE} (0: {DEFAULT_PAGE_SIZE}), got {request.page_size}"
        )
    return request.page_size or DEFAULT_PAGE_SIZE


def transition_problem(current: int, wanted: int) -> str | None:
    """Why `current` -> `wanted` is not allowed, or None when it is."""
    if wanted in TRANSITIONS.get(current, frozenset()):
        return None
    allowed = ", ".join(sorted(status_name(s) for s in TRANSITIONS.get(current, frozenset()))) or "none: it is final"
    here = status_name(current)
    return f"an order cannot go from {here} to {status_name(wanted)} (allowed from {here}: {allowed})"


def order_document(request: pb.CreateOrderRequest, now_ms: int) -> dict[str, Any]:
    """The stored form of a new PENDING order (the id is the record's)."""
    items = [
        {"productId": i.product_id, "name": i.name, "quantity": i.quantity, "unitPriceMinor": i.unit_price_minor}
        for i in request.items
    ]
    return {
        "customerId": request.customer_id,
        "status": status_name(pb.ORDER_STATUS_PENDING),
        "items": items,
        "currency": request.currency or DEFAULT_CURRENCY,
        "totalMinor": sum(i.quantity * i.unit_price_minor for i in request.items),
        "createdAtMs": now_ms,
        "updatedAtMs": now_ms,
    }


def document_status(document: Mapping[str, Any]) -> int:
    return _status_value(str(document["status"]))


def order_message(order_id: str, document: Mapping[str, Any], version: int) -> pb.Order:
    return pb.Order(
        id=order_id,
        customer_id=document["customerId"],
        status=document_status(document),  # type: ignore[arg-type]
        items=[
            pb.OrderItem(
                product_id=i["productId"], name=i["name"], quantity=i["quantity"], unit_price_minor=i["unitPriceMinor"]
            )
            for i in document["items"]
        ],
        currency=document["currency"],
        total_minor=document["totalMinor"],
        version=version,
        created_at_ms=document["createdAtMs"],
        updated_at_ms=document["updatedAtMs"],
    )
