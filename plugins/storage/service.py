"""The upf.storage.v1.Storage servicer, one for every backend: checks, namespaces, paging, errors.

Each call first learns the caller's namespace from `namespace_of` (a collaborator: the verified caller
identity belongs to whoever constructs the service) and, when the caller names another plugin's
namespace (`upf-owner`), what the owner's manifest grants it (`sharing`, plugins/sdk/grants.py: every
collection a call touches is checked, reads and writes apart), then checks the request
(InvalidArgument names the field), then asks the backend. Errors reach the client as one status each,
never a stack trace:

    InvalidArgument -> INVALID_ARGUMENT    VersionConflict, TransactionAborted -> ABORTED
    BackendUnavailable -> UNAVAILABLE      SharingError -> its status (PERMISSION_DENIED: no grant)
    anything else -> INTERNAL (logged here with its traceback)
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any, TypeAlias, TypeVar

import grpc
from upf.storage.v1 import storage_pb2 as pb, storage_pb2_grpc

from plugins.sdk.grants import Scope, Sharing, SharingError
from plugins.storage.backend import Backend, Page, SqlSession, StoredRecord
from plugins.storage.documents import Limits, check_collection, check_id, check_namespace, parse_document
from plugins.storage.errors import (
    BackendUnavailable,
    InvalidArgument,
    StorageError,
    TransactionAborted,
    VersionConflict,
)
from plugins.storage.query import Plan, parse_query

__all__ = ["CALLER_METADATA_KEY", "NamespaceOf", "StorageService", "namespace_from_metadata"]

logger = logging.getLogger(__name__)

_Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"
NamespaceOf = Callable[["grpc.aio.ServicerContext[Any, Any]"], Awaitable[str]]
T = TypeVar("T")

CALLER_METADATA_KEY = "upf-caller"
DEFAULT_NAMESPACE = "default"

_STATUS: dict[type[StorageError], grpc.StatusCode] = {
    InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    VersionConflict: grpc.StatusCode.ABORTED,
    TransactionAborted: grpc.StatusCode.ABORTED,
    BackendUnavailable: grpc.StatusCode.UNAVAILABLE,
}

# StreamQuery reads pages of this many records at first, then sizes them so that a page holds about
# `_STREAM_PAGE_BYTES`: small documents stream in few queries, large ones never pile up in memory.
_FIRST_STREAM_PAGE = 16
_MAX_STREAM_PAGE = 1000
_STREAM_PAGE_BYTES = 1024 * 1024


async def namespace_from_metadata(context: _Context) -> str:
    """PLACEHOLDER, the default until callers are verified everywhere: the namespace the caller *claims*
    in the `upf-caller` metadata, or "default". Anyone can claim any name, so this separates
    well-behaved plugins only; namespaces.RegistryVerifiedNamespaces (the caller's plugin id from its
    registry-signed token) is the `namespace_of` that replaces it."""
    for key, value in context.invocation_metadata() or ():
        if key == CALLER_METADATA_KEY:
            return check_namespace(value if isinstance(value, str) else value.decode())
    return DEFAULT_NAMESPACE


class StorageService(storage_pb2_grpc.StorageServicer):
    def __init__(
        self,
        backend: Backend,
        *,
        namespace_of: NamespaceOf = namespace_from_metadata,
        limits: Limits | None = None,
        collections: Sequence[str] | None = None,
        sharing: Sharing | None = None,
    ) -> None:
        self.backend = backend
        self._namespace_of = namespace_of
        self._sharing = sharing or Sharing("storage", None)
        self.limits = limits or Limits()
        # None: any well-formed collection name; else only these (others are INVALID_ARGUMENT).
        self._collections = frozenset(collections) if collections is not None else None

    # --- checks ---

    def _collection(self, name: str, field: str = "collection") -> str:
        check_collection(name, field)
        if self._collections is not None and name not in self._collections:
            raise InvalidArgument(field, f"{name!r} is not a collection of this storage")
        return name

    def _plan(self, request: pb.QueryRequest, *, streaming: bool) -> Plan:
        plan = parse_query(request, self.limits, streaming=streaming)
        self._collection(plan.collection)
        return plan

    def _expected(self, message: Any, field: str) -> int | None:
        if not message.HasField("expected_version"):
            return None
        if message.expected_version < 0:
            raise InvalidArgument(field, "is negative (0 means: must not exist)")
        return int(message.expected_version)

    def _items(self, items: Sequence[pb.SetItem], where: str) -> list[tuple[str, str, int | None]]:
        if len(items) > self.limits.max_batch:
            raise InvalidArgument(where, f"has {len(items)} items; the limit is {self.limits.max_batch}")
        checked = []
        for i, item in enumerate(items):
            check_id(item.id, f"{where}[{i}].id")
            parse_document(item.data, f"{where}[{i}].data", self.limits)
            checked.append((item.id, item.data, self._expected(item, f"{where}[{i}].expected_version")))
        return checked

    async def _fail(self, context: _Context, exc: Exception, method: str) -> None:
        if isinstance(exc, grpc.aio.AbortError):
            raise exc  # a collaborator (namespace_of) already ended the call with its own status
        if isinstance(exc, SharingError):
            await context.abort(exc.code, exc.message)
        if isinstance(exc, StorageError):
            await context.abort(_STATUS.get(type(exc), grpc.StatusCode.INTERNAL), str(exc))
        logger.exception("Storage/%s failed", method)
        await context.abort(grpc.StatusCode.INTERNAL, "internal error in the storage plugin (its log has the details)")

    async def _scope(self, context: _Context) -> Scope:
        return await self._sharing.scope(context, await self._namespace_of(context))

    async def _unary(
        self,
        context: _Context,
        method: str,
        work: Callable[[str], Awaitable[T]],
        touches: str | None,
        *,
        write: bool = False,
    ) -> T:
        """`work` in the call's namespace, once the caller may read (or `write`) collection `touches`
        there (None: `work` checks what it touches itself)."""
        try:
            scope = await self._scope(context)
            if touches is not None:
                scope.require(touches, write=write, field="collection")
            return await work(scope.namespace)
        except Exception as exc:  # mapped to a status; grpc's abort exception is raised by _fail
            await self._fail(context, exc, method)
            raise AssertionError("unreachable: abort raises") from None

    # --- the operations, shared by the unary methods and Transaction ---

    async def _get(self, session: SqlSession, request: pb.GetRequest) -> pb.GetResponse:
        record = await session.get(self._collection(request.collection), check_id(request.id))
        return pb.GetResponse(found=True, record=_message(record)) if record else pb.GetResponse()

    def _check_set(self, request: pb.SetRequest) -> tuple[str, str, int | None]:
        collection = self._collection(request.collection)
        check_id(request.id)
        parse_document(request.data, "data", self.limits)
        return collection, request.id, self._expected(request, "expected_version")

    async def _set(
        self, session: SqlSession, request: pb.SetRequest, checked: tuple[str, str, int | None]
    ) -> pb.SetResponse:
        """`checked`: what _check_set returned for `request` (before a connection was taken)."""
        collection, record_id, expected = checked
        return pb.SetResponse(version=await session.put(collection, record_id, request.data, expected))

    async def _delete(self, session: SqlSession, request: pb.DeleteRequest) -> pb.DeleteResponse:
        collection = self._collection(request.collection)
        expected = self._expected(request, "expected_version")
        return pb.DeleteResponse(deleted=await session.delete(collection, check_id(request.id), expected))

    async def _exists(self, session: SqlSession, request: pb.ExistsRequest) -> pb.ExistsResponse:
        collection = self._collection(request.collection)
        return pb.ExistsResponse(exists=await session.exists(collection, check_id(request.id)))

    def _check_batch_get(self, request: pb.BatchGetRequest) -> str:
        collection = self._collection(request.collection)
        if len(request.ids) > self.limits.max_batch:
            raise InvalidArgument("ids", f"has {len(request.ids)} ids; the limit is {self.limits.max_batch}")
        for i, record_id in enumerate(request.ids):
            check_id(record_id, f"ids[{i}]")
        return collection

    async def _batch_get(
        self, session: SqlSession, request: pb.BatchGetRequest, collection: str
    ) -> pb.BatchGetResponse:
        """`collection`: what _check_batch_get returned for `request`."""
        records = await session.get_many(collection, list(request.ids))
        return pb.BatchGetResponse(records=[_message(r) for r in records])

    async def _query(self, session: SqlSession, request: pb.QueryRequest) -> pb.QueryResponse:
        plan = self._plan(request, streaming=False)
        page = await session.page(plan, plan.limit)
        records, next_cursor = self._fit(plan, page)
        response = pb.QueryResponse(records=records, next_cursor=next_cursor)
        if request.include_total:
            response.total = await session.count(plan)
        return response

    def _fit(self, plan: Plan, page: Page) -> tuple[list[pb.Record], str]:
        """The page's records that fit one response message, and the cursor after the last of them."""
        budget = self.limits.max_message_bytes - 1024
        records: list[pb.Record] = []
        for record in page.records:
            message = _message(record)
            budget -= message.ByteSize() + 8
            if budget < 0 and records:
                break
            records.append(message)
        more = page.more or len(records) < len(page.records)
        return records, plan.cursor_after(page.keys[len(records) - 1]) if more and records else ""

    # --- unary methods ---

    async def Get(self, request: pb.GetRequest, context: _Context) -> pb.GetResponse:
        async def work(namespace: str) -> pb.GetResponse:
            self._collection(request.collection)
            async with self.backend.session(namespace, readonly=True) as session:
                return await self._get(session, request)

        return await self._unary(context, "Get", work, request.collection)

    async def Set(self, request: pb.SetRequest, context: _Context) -> pb.SetResponse:
        async def work(namespace: str) -> pb.SetResponse:
            checked = self._check_set(request)  # before taking a connection
            async with self.backend.session(namespace) as session:
                return await self._set(session, request, checked)

        return await self._unary(context, "Set", work, request.collection, write=True)

    async def Delete(self, request: pb.DeleteRequest, context: _Context) -> pb.DeleteResponse:
        async def work(namespace: str) -> pb.DeleteResponse:
            async with self.backend.session(namespace) as session:
                return await self._delete(session, request)

        return await self._unary(context, "Delete", work, request.collection, write=True)

    async def Exists(self, request: pb.ExistsRequest, context: _Context) -> pb.ExistsResponse:
        async def work(namespace: str) -> pb.ExistsResponse:
            async with self.backend.session(namespace, readonly=True) as session:
                return await self._exists(session, request)

        return await self._unary(context, "Exists", work, request.collection)

    async def BatchGet(self, request: pb.BatchGetRequest, context: _Context) -> pb.BatchGetResponse:
        async def work(namespace: str) -> pb.BatchGetResponse:
            collection = self._check_batch_get(request)  # before taking a connection
            async with self.backend.session(namespace, readonly=True) as session:
                return await self._batch_get(session, request, collection)

        return await self._unary(context, "BatchGet", work, request.collection)

    async def BatchSet(self, request: pb.BatchSetRequest, context: _Context) -> pb.BatchSetResponse:
        async def work(namespace: str) -> pb.BatchSetResponse:
            collection = self._collection(request.collection)
            items = self._items(request.items, "items")
            async with self.backend.transaction(namespace) as tx:
                versions = [await tx.put(collection, i, data, expected) for i, data, expected in items]
            return pb.BatchSetResponse(versions=versions)

        return await self._unary(context, "BatchSet", work, request.collection, write=True)

    async def Query(self, request: pb.QueryRequest, context: _Context) -> pb.QueryResponse:
        async def work(namespace: str) -> pb.QueryResponse:
            self._plan(request, streaming=False)
            async with self.backend.session(namespace, readonly=True) as session:
                return await self._query(session, request)

        return await self._unary(context, "Query", work, request.collection)

    # --- streams ---

    async def StreamQuery(self, request: pb.QueryRequest, context: _Context) -> AsyncIterator[pb.StreamQueryResponse]:
        try:
            scope = await self._scope(context)
            scope.require(request.collection, write=False, field="collection")
            namespace = scope.namespace
            plan = self._plan(request, streaming=True)
            remaining = plan.limit or None
            size = _FIRST_STREAM_PAGE
            while remaining is None or remaining > 0:
                want = size if remaining is None else min(size, remaining)
                # One session per page: the connection (SQLite: the lock) is free while the client reads.
                async with self.backend.session(namespace, readonly=True) as session:
                    page = await session.page(plan, want)
                if page.records:
                    records, _ = self._fit(plan, page)
                    taken = len(records)
                    yield pb.StreamQueryResponse(records=records)
                    if remaining is not None:
                        remaining -= taken
                    if taken < len(page.records):
                        page = Page(page.records[:taken], page.keys[:taken], True)
                    size = _next_page_size(page.records)
                if not page.more or not page.records:
                    return
                plan = plan.resumed(page.keys[-1], plan.limit)
        except Exception as exc:
            await self._fail(context, exc, "StreamQuery")

    async def StreamSet(
        self, request_iterator: AsyncIterator[pb.StreamSetRequest], context: _Context
    ) -> pb.StreamSetResponse:
        try:
            scope = await self._scope(context)
            count = 0
            async with self._time_limited(), self.backend.transaction(scope.namespace) as tx:
                index = 0
                committed = False
                async for message in request_iterator:
                    collection = self._collection(message.collection, f"messages[{index}].collection")
                    scope.require(collection, write=True, field=f"messages[{index}].collection")
                    items = self._items(message.items, f"messages[{index}].items")
                    if all(expected is None for _, _, expected in items):
                        await tx.upsert_many(collection, [(i, data) for i, data, _ in items])
                    else:
                        for record_id, data, expected in items:
                            await tx.put(collection, record_id, data, expected)
                    count += len(items)
                    index += 1
                    if message.commit:
                        committed = True
                        break
                if not committed:
                    # grpc shows a client that cancelled or went away as an ordinary end of stream.
                    raise InvalidArgument("commit", f"no message of the {index} set it; nothing was written")
            return pb.StreamSetResponse(count=count)
        except Exception as exc:  # mapped to a status; grpc's abort exception is raised by _fail
            await self._fail(context, exc, "StreamSet")
            raise AssertionError("unreachable: abort raises") from None

    async def Transaction(  # type: ignore[override]  # grpc's read/write API: a coroutine, not a generator
        self, request_iterator: AsyncIterator[pb.TransactionRequest], context: _Context
    ) -> None:
        # context.read/write rather than `async for`/`yield`: the transaction's time limit must be a
        # timeout around one coroutine (one around the yields of an async generator is not reliable).
        try:
            scope = await self._scope(context)
            async with self._time_limited(), self.backend.transaction(scope.namespace) as tx:
                while True:
                    request = await context.read()
                    if not isinstance(request, pb.TransactionRequest):
                        # grpc.aio.EOF: the stream ended without `commit`, a rollback the client asked
                        # for or (grpc shows them alike) a client that cancelled or went away.
                        raise _RollBack
                    if request.WhichOneof("operation") == "commit":
                        break
                    await context.write(await self._transaction_step(tx, request, scope))
            # Only now, after COMMIT succeeded: the client reads `committed` as "it is durable".
            await context.write(pb.TransactionResponse(committed=pb.Committed()))
        except _RollBack:
            return
        except Exception as exc:
            await self._fail(context, exc, "Transaction")

    @asynccontextmanager
    async def _time_limited(self) -> AsyncIterator[None]:
        limit = self.limits.max_transaction_seconds
        timeout = asyncio.timeout(limit)
        try:
            async with timeout:
                yield
        except TimeoutError:
            if not timeout.expired():
                raise
            raise TransactionAborted(f"the transaction was open longer than {limit:g} s: rolled back") from None

    async def _transaction_step(
        self, tx: SqlSession, request: pb.TransactionRequest, scope: Scope
    ) -> pb.TransactionResponse:
        operation = request.WhichOneof("operation")
        if operation in _TRANSACTION_OPERATIONS:
            touched = getattr(request, operation).collection
            scope.require(touched, write=operation in ("set", "delete"), field=f"{operation}.collection")
        if operation == "get":
            return pb.TransactionResponse(get=await self._get(tx, request.get))
        if operation == "set":
            return pb.TransactionResponse(set=await self._set(tx, request.set, self._check_set(request.set)))
        if operation == "delete":
            return pb.TransactionResponse(delete=await self._delete(tx, request.delete))
        if operation == "exists":
            return pb.TransactionResponse(exists=await self._exists(tx, request.exists))
        if operation == "query":
            return pb.TransactionResponse(query=await self._query(tx, request.query))
        if operation == "batch_get":
            checked = self._check_batch_get(request.batch_get)
            return pb.TransactionResponse(batch_get=await self._batch_get(tx, request.batch_get, checked))
        raise InvalidArgument("operation", "is not set (get, set, delete, exists, query, batch_get or commit)")


_TRANSACTION_OPERATIONS = ("get", "set", "delete", "exists", "query", "batch_get")


class _RollBack(Exception):
    """Raised inside a transaction's block to leave it by rolling back."""


def _message(record: StoredRecord) -> pb.Record:
    return pb.Record(id=record.id, data=record.data, version=record.version)


def _next_page_size(records: Sequence[StoredRecord]) -> int:
    average = sum(len(r.data) for r in records) / len(records) + 64
    return max(1, min(_MAX_STREAM_PAGE, int(_STREAM_PAGE_BYTES / average)))
