"""`OrdersService`: upf.orders.v1.Orders over IStorage (orders), ICache (idempotency keys) and OrderEvents.

Errors a client sees: INVALID_ARGUMENT naming the field, NOT_FOUND, FAILED_PRECONDITION naming the
transition, ABORTED for a stale expected_version, UNAVAILABLE when storage cannot be reached, and
INTERNAL with a generic message for anything else (logged here, never sent: no stack traces to clients).

Idempotent CreateOrder: with a request_id, the order id is derived from (customer_id, request_id) and
the order is written create-only (expected_version=0), so every retry and every racing attempt lands on
the same record: the first write wins and the others answer it with replayed=true. That is the
guarantee, and it holds with or without ICache. ICache is not trusted with it on purpose: cache-memory
forgets everything when it restarts and memcached evicts, and a retry is most likely exactly when
infrastructure is in trouble. ICache recognises retries cheaply: `create:{customer}:{request_id}` is
set with nx and a 24 hour TTL, and a retry that finds it reads the order instead of attempting a write
it knows will conflict. Without ICache the create-only write alone makes retries collide.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol, TypeAlias, TypeVar

import grpc
from upf.orders.v1 import orders_pb2 as pb, orders_pb2_grpc

from plugins.orders.events import OrderEvents, Overflow
from plugins.orders.model import (
    COLLECTION,
    Refused,
    check_create,
    check_list,
    check_order_id,
    check_status,
    document_status,
    invalid,
    order_document,
    order_message,
    status_name,
    transition_problem,
)
from plugins.sdk.cache import CacheClient, CacheError
from plugins.sdk.resolve import DependencyUnavailable
from plugins.sdk.storage import InvalidRequest, Record, StorageClient, StorageError, StorageUnavailable, VersionConflict

__all__ = ["IDEMPOTENCY_TTL", "Dependencies", "OrdersService"]

logger = logging.getLogger(__name__)

IDEMPOTENCY_TTL = 24 * 3600.0
_UPDATE_ATTEMPTS = 5  # without expected_version, an update retries this often when others write first

_Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"
T = TypeVar("T")


class Dependencies(Protocol):
    """What the service needs from its plugin (plugins.sdk.Plugin has all three)."""

    async def storage(self) -> StorageClient: ...

    async def cache(self) -> CacheClient: ...

    def invalidate(self, interface_or_target: str) -> None: ...


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def derived_order_id(customer_id: str, request_id: str) -> str:
    """The order id of a request id: the same on every retry, and per customer (ids do not collide
    when two customers' clients pick the same request id)."""
    digest = hashlib.sha256(f"{customer_id}\0{request_id}".encode()).hexdigest()
    return f"ord_{digest[:26]}"


def _new_order_id() -> str:
    # Time first, so ids sort roughly by creation in logs and tools; the random part makes them unique.
    return f"ord_{_now_ms():012x}{secrets.token_hex(7)}"


class OrdersService(orders_pb2_grpc.OrdersServicer):
    def __init__(
        self,
        events: OrderEvents,
        deps: Dependencies | None = None,
        *,
        clock_ms: Callable[[], int] = _now_ms,
    ) -> None:
        self._events = events
        self._deps = deps
        self._clock_ms = clock_ms

    def bind(self, deps: Dependencies) -> None:
        """Attach the plugin once it exists (it is built with this servicer, so it comes second)."""
        self._deps = deps

    # --- calls -------------------------------------------------------------------------------------

    async def CreateOrder(self, request: pb.CreateOrderRequest, context: _Context) -> pb.CreateOrderResponse:
        return await self._answer(context, self._create(request))

    async def GetOrder(self, request: pb.GetOrderRequest, context: _Context) -> pb.GetOrderResponse:
        return await self._answer(context, self._get(request))

    async def ListOrders(self, request: pb.ListOrdersRequest, context: _Context) -> pb.ListOrdersResponse:
        return await self._answer(context, self._list(request))

    async def UpdateOrderStatus(
        self, request: pb.UpdateOrderStatusRequest, context: _Context
    ) -> pb.UpdateOrderStatusResponse:
        return await self._answer(context, self._update(request))

    async def WatchOrders(
        self, request: pb.WatchOrdersRequest, context: _Context
    ) -> AsyncIterator[pb.WatchOrdersResponse]:
        try:
            check_status("status", request.status, allow_any=True)
        except Refused as refused:
            await context.abort(refused.code, refused.message)
        async with self._events.subscribe() as changes:
            # Headers now: the client knows it is subscribed before the first change arrives.
            await context.send_initial_metadata(())
            try:
                async for change in changes:
                    order = change.order
                    if request.customer_id and order.customer_id != request.customer_id:
                        continue
                    if request.status and order.status != request.status:
                        continue
                    yield change
            except Overflow as exc:
                await context.abort(grpc.StatusCode.ABORTED, f"{exc}: list the orders again and watch anew")

    # --- the work ----------------------------------------------------------------------------------

    async def _create(self, request: pb.CreateOrderRequest) -> pb.CreateOrderResponse:
        check_create(request)
        storage = await self._storage()
        if request.request_id:
            order_id = derived_order_id(request.customer_id, request.request_id)
            if await self._seen_before(request, order_id):
                record = await storage.get(COLLECTION, order_id)
                if record is not None:
                    return _replayed(record)
                # The first attempt got no further than the cache key (it failed or is still running):
                # writing below completes it, or meets its write and answers with that.
        else:
            order_id = _new_order_id()
        document = order_document(request, self._clock_ms())
        try:
            version = await storage.set(COLLECTION, order_id, document, expected_version=0)
        except VersionConflict:
            # The id exists: an earlier attempt with this request_id made it. Answer with that order.
            record = await storage.get(COLLECTION, order_id)
            if record is None:  # deleted in between: nothing sensible to replay
                raise Refused(grpc.StatusCode.ABORTED, "request_id: its order changed meanwhile; retry") from None
            return _replayed(record)
        order = order_message(order_id, document, version)
        await self._events.publish(pb.WatchOrdersResponse(type=pb.ORDER_CHANGE_TYPE_CREATED, order=order))
        return pb.CreateOrderResponse(order=order)

    async def _seen_before(self, request: pb.CreateOrderRequest, order_id: str) -> bool:
        """Whether ICache remembers this request id (False when there is no ICache to ask)."""
        try:
            cache = await self._require_deps().cache()
            key = f"create:{request.customer_id}:{request.request_id}"
            return not await cache.set(key, order_id.encode(), nx=True, ttl=IDEMPOTENCY_TTL)
        except (DependencyUnavailable, CacheError) as exc:
            logger.info("ICache not available (%s): the create-only write alone recognises retries", exc)
            self._require_deps().invalidate("ICache")
            return False

    async def _get(self, request: pb.GetOrderRequest) -> pb.GetOrderResponse:
        check_order_id(request.id)
        record = await self._find(await self._storage(), request.id)
        return pb.GetOrderResponse(order=order_message(record.id, record.data, record.version))

    async def _list(self, request: pb.ListOrdersRequest) -> pb.ListOrdersResponse:
        page_size = check_list(request)
        where: list[tuple[str, str, Any]] = []
        if request.status:
            where.append(("status", "==", status_name(request.status)))
        if request.customer_id:
            where.append(("customerId", "==", request.customer_id))
        storage = await self._storage()
        try:
            page = await storage.query(
                COLLECTION,
                where=where,
                sort=["-createdAtMs"],  # ties broken by id inside storage: a total order for the cursor
                limit=page_size,
                cursor=request.page_token or None,
                include_total=True,
            )
        except InvalidRequest as exc:
            if request.page_token and "cursor" in exc.details:
                raise invalid("page_token", "is not a token from a previous page of this same listing") from None
            raise
        return pb.ListOrdersResponse(
            orders=[order_message(r.id, r.data, r.version) for r in page.records],
            next_page_token=page.next_cursor or "",
            total_count=page.total or 0,
        )

    async def _update(self, request: pb.UpdateOrderStatusRequest) -> pb.UpdateOrderStatusResponse:
        check_order_id(request.id)
        check_status("status", request.status, allow_any=False)
        if request.HasField("expected_version") and request.expected_version < 1:
            raise invalid("expected_version", f"versions start at 1, got {request.expected_version}")
        storage = await self._storage()
        for _ in range(_UPDATE_ATTEMPTS):
            record = await self._find(storage, request.id)
            if request.HasField("expected_version") and record.version != request.expected_version:
                raise _stale(request.expected_version, record.version)
            problem = transition_problem(document_status(record.data), request.status)
            if problem is not None:
                raise Refused(grpc.StatusCode.FAILED_PRECONDITION, problem)
            document = {**record.data, "status": status_name(request.status), "updatedAtMs": self._clock_ms()}
            try:
                version = await storage.set(COLLECTION, record.id, document, expected_version=record.version)
            except VersionConflict:
                if request.HasField("expected_version"):
                    raise _stale(request.expected_version, None) from None
                continue  # someone else wrote first: check the transition again against what they wrote
            order = order_message(record.id, document, version)
            await self._events.publish(pb.WatchOrdersResponse(type=pb.ORDER_CHANGE_TYPE_UPDATED, order=order))
            return pb.UpdateOrderStatusResponse(order=order)
        raise Refused(grpc.StatusCode.ABORTED, "the order kept changing while it was updated; retry")

    # --- helpers -----------------------------------------------------------------------------------

    async def _find(self, storage: StorageClient, order_id: str) -> Record:
        record = await storage.get(COLLECTION, order_id)
        if record is None:
            raise Refused(grpc.StatusCode.NOT_FOUND, f"no order with id {order_id!r}")
        return record

    async def _storage(self) -> StorageClient:
        try:
            return await self._require_deps().storage()
        except DependencyUnavailable as exc:
            raise Refused(grpc.StatusCode.UNAVAILABLE, f"order storage is not available: {exc}") from None

    def _require_deps(self) -> Dependencies:
        if self._deps is None:
            raise RuntimeError("OrdersService.bind() was not called")
        return self._deps

    async def _answer(self, context: _Context, work: Awaitable[T]) -> T:
        """The call's result, or its failure as a status with a message for the client."""
        try:
            return await work
        except Refused as refused:
            await context.abort(refused.code, refused.message)
        except StorageUnavailable as exc:
            # Resolve again next time: the provider may have moved (restarted on another port).
            self._require_deps().invalidate("IStorage")
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"order storage is not available: {exc.details}")
        except StorageError as exc:
            if exc.code == grpc.StatusCode.DEADLINE_EXCEEDED:
                await context.abort(grpc.StatusCode.UNAVAILABLE, "order storage did not answer in time")
            logger.error("storage refused a call of the orders plugin: %s: %s", exc.code.name, exc.details)
            await context.abort(grpc.StatusCode.INTERNAL, "order storage failed; see the orders plugin's log")
        except Exception:
            logger.exception("orders call failed")
            await context.abort(grpc.StatusCode.INTERNAL, "internal error; see the orders plugin's log")
        raise AssertionError("unreachable: context.abort raises")


def _replayed(record: Record) -> pb.CreateOrderResponse:
    return pb.CreateOrderResponse(order=order_message(record.id, record.data, record.version), replayed=True)


def _stale(expected: int, current: int | None) -> Refused:
    now = f" (it is at version {current})" if current is not None else ""
    return Refused(
        grpc.StatusCode.ABORTED,
        f"expected_version: the order is no longer at version {expected}{now}; get it again and retry",
    )
