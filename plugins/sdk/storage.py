"""`StorageClient`: IStorage (upf.storage.v1.Storage) for Python plugins, with dicts in and out.

    storage = await plugin.storage()                        # or StorageClient(channel)
    version = await storage.set("orders", "o-1", {"total": 12, "customer": {"id": "c-7"}})
    await storage.set("orders", "o-1", {...}, expected_version=version)   # VersionConflict if it moved
    page = await storage.query("orders", where=[("customer.id", "==", "c-7"), ("total", ">=", 10)],
                               sort=["-total", "customer.id"], limit=50, include_total=True)
    more = await storage.query("orders", where=..., sort=..., cursor=page.next_cursor)
    async for record in storage.stream_query("orders"): ...
    async with storage.transaction() as tx:                 # commits at the end of the block,
        order = await tx.get("orders", "o-1")                 # rolls back if it raises
        await tx.set("orders", "o-1", {...}, expected_version=order.version)

Filters are (field, op, value): op is ==, !=, <, <=, >, >=, in, prefix, exists (or eq, ne, lt, lte, gt,
gte); sort fields are dotted paths, "-field" for descending. Failures raise StorageError subclasses:
VersionConflict (ABORTED), InvalidRequest (INVALID_ARGUMENT), StorageUnavailable (UNAVAILABLE).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import grpc
from upf.storage.v1 import storage_pb2 as pb, storage_pb2_grpc

__all__ = [
    "InvalidRequest",
    "QueryResult",
    "Record",
    "StorageClient",
    "StorageError",
    "StorageTransaction",
    "StorageUnavailable",
    "VersionConflict",
    "Where",
]

Where = tuple[str, str, Any]

_OPS = {
    "==": pb.Filter.OP_EQ,
    "eq": pb.Filter.OP_EQ,
    "!=": pb.Filter.OP_NE,
    "ne": pb.Filter.OP_NE,
    "<": pb.Filter.OP_LT,
    "lt": pb.Filter.OP_LT,
    "<=": pb.Filter.OP_LTE,
    "lte": pb.Filter.OP_LTE,
    ">": pb.Filter.OP_GT,
    "gt": pb.Filter.OP_GT,
    ">=": pb.Filter.OP_GTE,
    "gte": pb.Filter.OP_GTE,
    "in": pb.Filter.OP_IN,
    "prefix": pb.Filter.OP_PREFIX,
    "exists": pb.Filter.OP_EXISTS,
}


class StorageError(Exception):
    """A call to IStorage failed; `code` is the gRPC status, the message is the plugin's."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


class VersionConflict(StorageError):
    """ABORTED: the record is not at the expected version (or the database gave up a transaction)."""


class InvalidRequest(StorageError):
    """INVALID_ARGUMENT: the message names the field at fault."""


class StorageUnavailable(StorageError):
    """UNAVAILABLE: the plugin or its database cannot be reached; retrying later may succeed."""


_ERRORS: dict[grpc.StatusCode, type[StorageError]] = {
    grpc.StatusCode.ABORTED: VersionConflict,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidRequest,
    grpc.StatusCode.UNAVAILABLE: StorageUnavailable,
}


def _error(exc: grpc.aio.AioRpcError) -> StorageError:
    code = exc.code()
    return _ERRORS.get(code, StorageError)(code, exc.details() or code.name)


@dataclass(frozen=True, slots=True)
class Record:
    id: str
    data: dict[str, Any]
    version: int


@dataclass(frozen=True, slots=True)
class QueryResult:
    records: list[Record]
    next_cursor: str | None  # None on the last page
    total: int | None  # when include_total was asked for


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _record(message: pb.Record) -> Record:
    return Record(message.id, json.loads(message.data), message.version)


def _set_request(collection: str, record_id: str, data: Mapping[str, Any], expected: int | None) -> pb.SetRequest:
    request = pb.SetRequest(collection=collection, id=record_id, data=_dumps(data))
    if expected is not None:
        request.expected_version = expected
    return request


def _delete_request(collection: str, record_id: str, expected: int | None) -> pb.DeleteRequest:
    request = pb.DeleteRequest(collection=collection, id=record_id)
    if expected is not None:
        request.expected_version = expected
    return request


def query_request(
    collection: str,
    where: Iterable[Where] = (),
    sort: Iterable[str] = (),
    limit: int = 0,
    cursor: str | None = None,
    include_total: bool = False,
) -> pb.QueryRequest:
    filters = []
    for field, op, value in where:
        if op not in _OPS:
            raise ValueError(f"unknown filter operator {op!r} (one of {', '.join(_OPS)})")
        filters.append(pb.Filter(field=field, op=_OPS[op], value=_dumps(value)))
    order = [pb.Sort(field=s[1:], descending=True) if s.startswith("-") else pb.Sort(field=s) for s in sort]
    return pb.QueryRequest(
        collection=collection,
        filters=filters,
        sort=order,
        limit=limit,
        cursor=cursor or "",
        include_total=include_total,
    )


def _result(response: pb.QueryResponse) -> QueryResult:
    total = response.total if response.HasField("total") else None
    return QueryResult([_record(r) for r in response.records], response.next_cursor or None, total)


class StorageClient:
    def __init__(
        self, channel: grpc.aio.Channel, *, metadata: Sequence[tuple[str, str]] = (), timeout: float | None = 30.0
    ) -> None:
        self._stub = storage_pb2_grpc.StorageStub(channel)
        self._metadata = tuple(metadata)
        self._timeout = timeout

    async def get(self, collection: str, record_id: str) -> Record | None:
        response = await self._call(self._stub.Get, pb.GetRequest(collection=collection, id=record_id))
        return _record(response.record) if response.found else None

    async def set(
        self, collection: str, record_id: str, data: Mapping[str, Any], *, expected_version: int | None = None
    ) -> int:
        """Write a record; its new version. expected_version: 0 = must not exist, N = must be at N."""
        request = _set_request(collection, record_id, data, expected_version)
        return int((await self._call(self._stub.Set, request)).version)

    async def delete(self, collection: str, record_id: str, *, expected_version: int | None = None) -> bool:
        request = _delete_request(collection, record_id, expected_version)
        return bool((await self._call(self._stub.Delete, request)).deleted)

    async def exists(self, collection: str, record_id: str) -> bool:
        request = pb.ExistsRequest(collection=collection, id=record_id)
        return bool((await self._call(self._stub.Exists, request)).exists)

    async def batch_get(self, collection: str, ids: Iterable[str]) -> dict[str, Record]:
        """The records that exist, by id."""
        response = await self._call(self._stub.BatchGet, pb.BatchGetRequest(collection=collection, ids=list(ids)))
        return {r.id: _record(r) for r in response.records}

    async def batch_set(
        self,
        collection: str,
        items: Mapping[str, Mapping[str, Any]],
        *,
        expected_versions: Mapping[str, int] | None = None,
    ) -> dict[str, int]:
        """Write every item or none; the new version of each id."""
        expected = expected_versions or {}
        messages = []
        for record_id, data in items.items():
            item = pb.SetItem(id=record_id, data=_dumps(data))
            if record_id in expected:
                item.expected_version = expected[record_id]
            messages.append(item)
        response = await self._call(self._stub.BatchSet, pb.BatchSetRequest(collection=collection, items=messages))
        return dict(zip(items, response.versions, strict=True))

    async def query(
        self,
        collection: str,
        *,
        where: Iterable[Where] = (),
        sort: Iterable[str] = (),
        limit: int = 0,
        cursor: str | None = None,
        include_total: bool = False,
    ) -> QueryResult:
        request = query_request(collection, where, sort, limit, cursor, include_total)
        return _result(await self._call(self._stub.Query, request))

    async def stream_query(
        self, collection: str, *, where: Iterable[Where] = (), sort: Iterable[str] = (), limit: int = 0
    ) -> AsyncIterator[Record]:
        """Every matching record (at most `limit` when set), read as the server sends them."""
        call = self._stub.StreamQuery(query_request(collection, where, sort, limit), metadata=self._metadata)
        try:
            async for response in call:
                for record in response.records:
                    yield _record(record)
        except grpc.aio.AioRpcError as exc:
            raise _error(exc) from None
        finally:
            call.cancel()  # a no-op when the stream ended; frees the server when the caller stopped early

    async def stream_set(
        self,
        collection: str,
        items: AsyncIterable[tuple[str, Mapping[str, Any]]] | Iterable[tuple[str, Mapping[str, Any]]],
        *,
        batch: int = 500,
    ) -> int:
        """Write (id, data) pairs in one transaction, `batch` per message; how many were written."""

        async def messages() -> AsyncIterator[pb.StreamSetRequest]:
            chunk: list[pb.SetItem] = []
            async for record_id, data in _aiter(items):
                chunk.append(pb.SetItem(id=record_id, data=_dumps(data)))
                if len(chunk) >= batch:
                    yield pb.StreamSetRequest(collection=collection, items=chunk)
                    chunk = []
            # Only once every item was read: a failing `items` never commits what went before.
            yield pb.StreamSetRequest(collection=collection, items=chunk, commit=True)

        try:
            response = await self._stub.StreamSet(messages(), metadata=self._metadata)
        except grpc.aio.AioRpcError as exc:
            raise _error(exc) from None
        return int(response.count)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[StorageTransaction]:
        """A transaction for the block: committed when it ends, rolled back when it raises. The client's
        `timeout` bounds its whole life (a transaction holds locks: SQLite's write lock, row locks)."""
        # No request iterator: the operations are written one by one (call.write) as the block runs.
        call = self._stub.Transaction(None, metadata=self._metadata, timeout=self._timeout)
        transaction = StorageTransaction(call)
        try:
            yield transaction
        except BaseException:
            call.cancel()  # the stream ends without `commit`: the server rolls back
            raise
        await transaction.commit()

    async def _call(self, method: Any, request: Any) -> Any:
        try:
            return await method(request, metadata=self._metadata, timeout=self._timeout)
        except grpc.aio.AioRpcError as exc:
            raise _error(exc) from None


async def _aiter(items: AsyncIterable[Any] | Iterable[Any]) -> AsyncIterator[Any]:
    if isinstance(items, AsyncIterable):
        async for item in items:
            yield item
    else:
        for item in items:
            yield item


class StorageTransaction:
    """The operations of one open Transaction stream; each waits for its answer."""

    def __init__(self, call: Any) -> None:
        self._call = call

    async def _step(self, request: pb.TransactionRequest) -> pb.TransactionResponse:
        try:
            await self._call.write(request)
            response = await self._call.read()
        except grpc.aio.AioRpcError as exc:
            raise _error(exc) from None
        if not isinstance(response, pb.TransactionResponse):  # grpc.aio.EOF: the server ended the stream
            raise await self._ended()
        return response

    async def _ended(self) -> StorageError:
        code = await self._call.code()
        return _ERRORS.get(code, StorageError)(code, await self._call.details() or "the transaction ended")

    async def get(self, collection: str, record_id: str) -> Record | None:
        response = await self._step(pb.TransactionRequest(get=pb.GetRequest(collection=collection, id=record_id)))
        return _record(response.get.record) if response.get.found else None

    async def set(
        self, collection: str, record_id: str, data: Mapping[str, Any], *, expected_version: int | None = None
    ) -> int:
        request = pb.TransactionRequest(set=_set_request(collection, record_id, data, expected_version))
        return int((await self._step(request)).set.version)

    async def delete(self, collection: str, record_id: str, *, expected_version: int | None = None) -> bool:
        request = pb.TransactionRequest(delete=_delete_request(collection, record_id, expected_version))
        return bool((await self._step(request)).delete.deleted)

    async def exists(self, collection: str, record_id: str) -> bool:
        request = pb.TransactionRequest(exists=pb.ExistsRequest(collection=collection, id=record_id))
        return bool((await self._step(request)).exists.exists)

    async def batch_get(self, collection: str, ids: Iterable[str]) -> dict[str, Record]:
        request = pb.TransactionRequest(batch_get=pb.BatchGetRequest(collection=collection, ids=list(ids)))
        return {r.id: _record(r) for r in (await self._step(request)).batch_get.records}

    async def query(
        self,
        collection: str,
        *,
        where: Iterable[Where] = (),
        sort: Iterable[str] = (),
        limit: int = 0,
        cursor: str | None = None,
        include_total: bool = False,
    ) -> QueryResult:
        request = pb.TransactionRequest(query=query_request(collection, where, sort, limit, cursor, include_total))
        return _result((await self._step(request)).query)

    async def commit(self) -> None:
        """Send `commit` and wait for `committed` (done by `StorageClient.transaction` at the block's end)."""
        try:
            await self._call.write(pb.TransactionRequest(commit=pb.Commit()))
            await self._call.done_writing()
            response = await self._call.read()
        except grpc.aio.AioRpcError as exc:
            raise _error(exc) from None
        if not isinstance(response, pb.TransactionResponse) or not response.HasField("committed"):
            raise await self._ended()
