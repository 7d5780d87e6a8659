"""IStorage conformance: one test body per behaviour, run against every implementation (conftest.py).

What a test expects is written out from the contract in proto/upf/storage/v1/storage.proto, not read
back from any backend, so every implementation gives the same answers to the same calls.
"""

from __future__ import annotations

import asyncio
import gc
import json
import time
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import pytest
from upf.storage.v1 import storage_pb2 as pb, storage_pb2_grpc

from plugins.sdk.storage import InvalidRequest, StorageClient, StorageError, StorageUnavailable, VersionConflict
from plugins.storage.documents import Limits
from tests.conformance.storage.conftest import Implementation, Running, serve
from tests.conformance.storage.tcp_proxy import TcpProxy

C = "things"


async def until(check: Callable[[], Awaitable[bool]], *, timeout: float = 15.0, what: str) -> None:
    """Poll an async check until it is true, or fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.05)


async def test_crud_and_versions(storage: Running) -> None:
    client = storage.client()
    assert await client.get(C, "a") is None
    assert not await client.exists(C, "a")
    assert await client.set(C, "a", {"n": 1, "nested": {"s": 'é😀"\\'}}) == 1
    record = await client.get(C, "a")
    assert record is not None
    assert (record.id, record.data, record.version) == ("a", {"n": 1, "nested": {"s": 'é😀"\\'}}, 1)
    assert await client.exists(C, "a")
    assert await client.set(C, "a", {"n": 2}) == 2
    assert (await client.get(C, "a")).data == {"n": 2}  # type: ignore[union-attr]
    # Collections are apart: the same id elsewhere is another record.
    assert await client.get("others", "a") is None
    assert await client.delete(C, "a")
    assert not await client.delete(C, "a")
    assert await client.get(C, "a") is None
    assert await client.set(C, "a", {"again": True}) == 1  # a new record starts at version 1 again
    # As deep as every backend stores (MariaDB's limit); deeper is INVALID_ARGUMENT (bad input test).
    deep = json.loads(_nested(31))
    assert await client.set(C, "deep", deep) == 1
    assert (await client.get(C, "deep")).data == deep  # type: ignore[union-attr]


async def test_conditional_writes_conflict_between_two_clients(storage: Running) -> None:
    one, two = storage.client(), storage.client()
    assert await one.set(C, "doc", {"v": 0}, expected_version=0) == 1
    with pytest.raises(VersionConflict, match="is at version 1, expected not to exist"):
        await two.set(C, "doc", {"v": 0}, expected_version=0)

    # Both read version 1 and write at once: exactly one wins, the other is told why.
    results = await asyncio.gather(
        one.set(C, "doc", {"by": "one"}, expected_version=1),
        two.set(C, "doc", {"by": "two"}, expected_version=1),
        return_exceptions=True,
    )
    assert sorted(type(r).__name__ for r in results) == ["VersionConflict", "int"]
    winner = next(r for r in results if isinstance(r, int))
    assert winner == 2
    record = await one.get(C, "doc")
    assert record is not None
    assert record.version == 2
    assert record.data == {"by": "one" if results[0] == 2 else "two"}

    # Two creators of the same new record: one creates it.
    created = await asyncio.gather(
        one.set(C, "new", {"by": "one"}, expected_version=0),
        two.set(C, "new", {"by": "two"}, expected_version=0),
        return_exceptions=True,
    )
    assert sorted(type(r).__name__ for r in created) == ["VersionConflict", "int"]

    with pytest.raises(VersionConflict) as conflict:
        await two.set(C, "missing", {}, expected_version=3)
    assert conflict.value.code == grpc.StatusCode.ABORTED
    assert "does not exist" in str(conflict.value)
    with pytest.raises(VersionConflict):
        await two.delete(C, "doc", expected_version=1)
    assert await two.delete(C, "doc", expected_version=2)


DOCUMENTS: dict[str, dict[str, Any]] = {
    "a": {"user": {"age": 30, "name": "Ann", "tags": ["x"]}, "score": 1.5, "active": True},
    "b": {"user": {"age": 25, "name": "bob"}, "score": 2, "active": False},
    "c": {"user": {"age": "30", "name": "Åsa"}, "score": None},
    "d": {"user": {"name": "Anna"}, "active": True},
    "e": {"other": 1},
    "f": {"user": {"age": 40.0, "name": "Ann "}, "score": -3},
}

# (filters, the ids that match): the contract of each operator, on nested fields.
FILTER_CASES: list[tuple[list[tuple[str, str, Any]], str]] = [
    ([("user.age", "==", 30)], "a"),  # "30" is a string: not equal to 30
    ([("user.age", "==", 40)], "f"),  # 40.0 == 40
    ([("user.age", "==", "30")], "c"),
    ([("user.name", "==", "Ann")], "a"),  # trailing spaces count
    ([("user.age", "!=", 30)], "bcdef"),  # NE is NOT EQ: without the field matches too
    ([("user.age", "<", 30)], "b"),  # numbers compare with numbers only
    ([("user.age", "<=", 30)], "ab"),
    ([("user.age", ">", 25)], "af"),
    ([("user.age", ">=", 25)], "abf"),
    ([("user.name", "<", "B")], "adf"),  # by code point: "bob" > "B", "Åsa" > "B"
    ([("user.name", ">=", "Ann")], "abcdf"),
    ([("user.name", ">", "z")], "c"),
    ([("user.age", "in", [25, "30"])], "bc"),
    ([("user.age", "in", [])], ""),
    ([("user.name", "prefix", "Ann")], "adf"),
    ([("user.name", "prefix", "ann")], ""),  # case-sensitive
    ([("user.name", "prefix", "Å")], "c"),
    ([("score", "exists", True)], "abcf"),  # null is present
    ([("score", "exists", False)], "de"),
    ([("user.tags", "exists", True)], "a"),
    ([("score", "==", None)], "c"),
    ([("active", "==", True)], "ad"),
    ([("active", "==", False)], "b"),
    ([("score", "<", 2)], "af"),
    ([("score", ">=", 1.5)], "ab"),
    ([("active", "==", True), ("user.name", "prefix", "Ann")], "ad"),  # all filters must match
    ([("user.name", "==", "nobody")], ""),
]


async def test_every_filter_operator_on_nested_fields(storage: Running) -> None:
    client = storage.client()
    await client.batch_set(C, DOCUMENTS)
    for filters, expected in FILTER_CASES:
        result = await client.query(C, where=filters, include_total=True)
        assert "".join(r.id for r in result.records) == expected, filters
        assert result.total == len(expected), filters


SORT_VALUES: list[tuple[str, Any]] = [
    # (id, value of "k") in the contract's ascending order: missing < null < false < true < numbers
    # < strings (by code point) < arrays and objects; ties by id.
    ("m1", ...),
    ("m2", None),
    ("m3", False),
    ("m4", True),
    ("m5", -1),
    ("m6", 2.5),
    ("m7", 10),
    ("m8", "10"),
    ("m9", "B"),
    ("n1", "a"),
    ("n2", [1]),
]


async def test_sort_on_several_fields_and_across_types(storage: Running) -> None:
    client = storage.client()
    await client.batch_set("sorted", {i: {"k": v} if v is not ... else {"other": 1} for i, v in reversed(SORT_VALUES)})
    ascending = [i for i, _ in SORT_VALUES]
    assert [r.id for r in (await client.query("sorted", sort=["k"])).records] == ascending
    # Descending reverses the order of values; ties still go by id ascending (none here).
    assert [r.id for r in (await client.query("sorted", sort=["-k"])).records] == ascending[::-1]

    people = {
        "p1": {"team": {"name": "red"}, "score": 3},
        "p2": {"team": {"name": "blue"}, "score": 3},
        "p3": {"team": {"name": "red"}, "score": 7},
        "p4": {"team": {"name": "blue"}, "score": 1},
        "p5": {"team": {"name": "red"}, "score": 3},
    }
    await client.batch_set("people", people)
    by_team_then_score_desc = await client.query("people", sort=["team.name", "-score"])
    assert [r.id for r in by_team_then_score_desc.records] == ["p2", "p4", "p3", "p1", "p5"]
    by_score_then_team_desc = await client.query("people", sort=["score", "-team.name"])
    assert [r.id for r in by_score_then_team_desc.records] == ["p4", "p1", "p5", "p2", "p3"]


async def test_cursor_pages_stay_right_while_rows_are_inserted(storage: Running) -> None:
    client, writer = storage.client(), storage.client()
    await client.batch_set("pages", {f"r{n:03}": {"n": n, "even": True} for n in range(0, 60, 2)})
    where = [("even", "==", True)]
    first = await client.query("pages", where=where, sort=["-n"], limit=7, include_total=True)
    assert first.total == 30
    seen = [r.data["n"] for r in first.records]
    assert seen == [58, 56, 54, 52, 50, 48, 46]
    cursor = first.next_cursor
    inserted_ahead: set[int] = set()
    deleted_ahead: set[int] = set()
    step = 0
    while cursor:
        # Between pages: a record behind the cursor (must not show up), one ahead (must), and an
        # original ahead deleted (must not).
        step += 1
        await writer.set("pages", f"behind{step}", {"n": 100 + step, "even": True})
        last = seen[-1]
        if last - 3 > 0:
            await writer.set("pages", f"ahead{step}", {"n": last - 3, "even": True})
            inserted_ahead.add(last - 3)
        if await writer.delete("pages", f"r{last - 4:03}"):
            deleted_ahead.add(last - 4)
        page = await client.query("pages", where=where, sort=["-n"], limit=7, cursor=cursor)
        seen += [r.data["n"] for r in page.records]
        cursor = page.next_cursor
    # Every page starts strictly after the last record of the one before: nothing twice, nothing
    # behind the cursor, everything ahead that still exists.
    assert step >= 3
    assert seen == sorted(set(seen), reverse=True)
    assert set(seen) == (set(range(0, 60, 2)) - deleted_ahead) | inserted_ahead

    with pytest.raises(InvalidRequest, match=r"^cursor: belongs to another query"):
        await client.query("pages", where=[("even", "==", False)], sort=["-n"], limit=7, cursor=first.next_cursor)


async def test_batch_operations(storage: Running) -> None:
    client = storage.client()
    versions = await client.batch_set(C, {f"b{i}": {"i": i} for i in range(50)})
    assert versions == {f"b{i}": 1 for i in range(50)}
    found = await client.batch_get(C, [f"b{i}" for i in range(0, 60, 3)])
    assert sorted(found) == sorted(f"b{i}" for i in range(0, 50, 3))
    assert found["b3"].data == {"i": 3}
    # All or nothing: a conflict on one item leaves every other unwritten.
    with pytest.raises(VersionConflict, match="b7"):
        await client.batch_set(C, {"b1": {"i": -1}, "new": {}, "b7": {}}, expected_versions={"b1": 1, "b7": 5})
    assert (await client.get(C, "b1")).data == {"i": 1}  # type: ignore[union-attr]
    assert await client.get(C, "new") is None
    assert await client.batch_set(C, {"b1": {"i": -1}}, expected_versions={"b1": 1}) == {"b1": 2}


async def test_transaction_commits_at_the_end_of_the_stream(storage: Running) -> None:
    client = storage.client()
    await client.set(C, "account-a", {"balance": 100})
    async with client.transaction() as tx:
        a = await tx.get(C, "account-a")
        assert a is not None
        await tx.set(C, "account-a", {"balance": 70}, expected_version=a.version)
        await tx.set(C, "account-b", {"balance": 30}, expected_version=0)
        assert (await tx.get(C, "account-b")).data == {"balance": 30}  # type: ignore[union-attr]
        assert await tx.exists(C, "account-b")
        assert sorted(await tx.batch_get(C, ["account-a", "account-b"])) == ["account-a", "account-b"]
        assert (await tx.query(C, where=[("balance", "<", 50)])).records[0].id == "account-b"
    found = await client.batch_get(C, ["account-a", "account-b"])
    assert {k: v.data["balance"] for k, v in found.items()} == {"account-a": 70, "account-b": 30}


async def test_transaction_rolls_back_on_an_error(storage: Running) -> None:
    client = storage.client()
    await client.set(C, "x", {"v": 1})

    async def conflicting() -> None:
        async with client.transaction() as tx:
            await tx.set(C, "y", {"v": 1})
            await tx.set(C, "x", {"v": 2}, expected_version=9)

    with pytest.raises(VersionConflict):
        await conflicting()
    assert await client.get(C, "y") is None
    assert (await client.get(C, "x")).data == {"v": 1}  # type: ignore[union-attr]


async def test_transaction_rolls_back_on_a_cancel_and_is_never_read_dirty(storage: Running) -> None:
    client, reader = storage.client(), storage.client()
    reads: list[asyncio.Task[Any]] = []

    async def abandoned() -> None:
        async with client.transaction() as tx:
            await tx.set(C, "z", {"v": 1})
            # Another client never sees what the transaction has not committed (SQLite: it waits).
            reads.append(asyncio.create_task(reader.get(C, "z")))
            await asyncio.sleep(0)  # not a wait for state: it lets the read go out before the cancel
            raise RuntimeError("changed my mind")

    with pytest.raises(RuntimeError, match="changed my mind"):
        await abandoned()
    assert await reads[0] is None
    # Rolled back, not merely hidden: creating it now works, and at version 1.
    assert await reader.set(C, "z", {"v": 2}, expected_version=0) == 1


async def test_a_write_beside_a_transaction_is_not_part_of_it(storage: Running) -> None:
    client, other = storage.client(), storage.client()
    writes: list[asyncio.Task[int]] = []

    async def abandoned() -> None:
        async with client.transaction() as tx:
            await tx.set(C, "inside", {"v": 1})
            # Another client's write: PostgreSQL and MariaDB do it at once, beside the transaction;
            # SQLite makes it wait for its one writing connection, and must never run it inside this
            # transaction. The transaction's calls give it time to arrive (or to be done).
            write = asyncio.create_task(other.set(C, "beside", {"v": 1}))
            writes.append(write)
            for _ in range(20):
                assert await tx.exists(C, "inside")
                if write.done():
                    break
            raise RuntimeError("changed my mind")

    with pytest.raises(RuntimeError, match="changed my mind"):
        await abandoned()
    assert await writes[0] == 1
    assert (await other.get(C, "beside")).data == {"v": 1}  # type: ignore[union-attr]
    assert await other.get(C, "inside") is None


async def test_transaction_rolls_back_when_the_client_disappears_or_ends_without_commit(storage: Running) -> None:
    channel = grpc.aio.insecure_channel(storage.address)
    call = storage_pb2_grpc.StorageStub(channel).Transaction(None, metadata=storage.metadata())
    await call.write(pb.TransactionRequest(set=pb.SetRequest(collection=C, id="lost", data='{"v": 1}')))
    answer: Any = await call.read()
    assert answer.set.version == 1
    await channel.close(None)  # the client is gone without ending its stream

    client = storage.client()
    assert await client.set(C, "lost", {"v": 2}, expected_version=0) == 1
    assert (await client.get(C, "lost")).data == {"v": 2}  # type: ignore[union-attr]

    # Ending the stream without `commit` is a rollback: the call ends OK, without `committed`.
    call = storage_pb2_grpc.StorageStub(storage.channel()).Transaction(None, metadata=storage.metadata())
    await call.write(pb.TransactionRequest(set=pb.SetRequest(collection=C, id="undone", data="{}")))
    answer = await call.read()
    assert answer.set.version == 1
    await call.done_writing()
    assert await call.read() == grpc.aio.EOF  # type: ignore[attr-defined]
    assert await call.code() == grpc.StatusCode.OK
    assert not await client.exists(C, "undone")


async def test_a_transaction_open_too_long_is_rolled_back(implementation: Implementation) -> None:
    async with serve(implementation, limits=Limits(max_transaction_seconds=0.5)) as running:
        stub = storage_pb2_grpc.StorageStub(running.channel())
        call = stub.Transaction(None, metadata=running.metadata())
        await call.write(pb.TransactionRequest(set=pb.SetRequest(collection=C, id="slow", data="{}")))
        answer: Any = await call.read()
        assert answer.set.version == 1
        # The client goes quiet: the server ends the stream when the limit passes (no sleep here).
        with pytest.raises(grpc.aio.AioRpcError) as expired:
            await call.read()
        assert expired.value.code() == grpc.StatusCode.ABORTED
        assert "open longer than 0.5 s: rolled back" in (expired.value.details() or "")

        bulk = stub.StreamSet(None, metadata=running.metadata())
        await bulk.write(pb.StreamSetRequest(collection=C, items=[pb.SetItem(id="slow-bulk", data="{}")]))
        with pytest.raises(grpc.aio.AioRpcError) as aborted:
            await bulk
        assert aborted.value.code() == grpc.StatusCode.ABORTED

        client = running.client()
        assert await client.batch_get(C, ["slow", "slow-bulk"]) == {}


async def _numbered(count: int) -> AsyncIterator[tuple[str, dict[str, Any]]]:
    for n in range(count):
        yield f"r{n:06}", {"n": n, "payload": {"text": "x" * 40, "even": n % 2 == 0}}


async def test_streams_100k_records_in_bounded_memory(streaming_storage: Running) -> None:
    storage = streaming_storage
    client = storage.client()
    assert await client.stream_set("big", _numbered(100_000)) == 100_000

    # The raw stub, so that the measure is the server's (it runs in this process) more than the
    # client's decoding; the SDK's stream_query is used below.
    stub = storage_pb2_grpc.StorageStub(storage.channel())
    gc.collect()
    tracemalloc.start()
    try:
        count, last, streamed = 0, "", 0
        async for response in stub.StreamQuery(pb.QueryRequest(collection="big"), metadata=storage.metadata()):
            for record in response.records:
                assert record.id > last
                last = record.id
                streamed += len(record.data)
            count += len(response.records)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == 100_000
    # A stream that held the records (as JSON, let alone as Python objects) would need more than
    # `streamed` bytes; pages of about 1 MB (service.py) keep it to a few.
    assert streamed > 7_000_000
    assert peak < 4_000_000, f"peak {peak / 1e6:.1f} MB while streaming {streamed / 1e6:.1f} MB of JSON"

    some = [r async for r in client.stream_query("big", where=[("payload.even", "==", False)], sort=["-n"], limit=5)]
    assert [r.data["n"] for r in some] == [99_999, 99_997, 99_995, 99_993, 99_991]


async def test_stream_set_writes_all_or_nothing(storage: Running) -> None:
    client = storage.client()

    async def then_bad() -> AsyncIterator[tuple[str, dict[str, Any]]]:
        for n in range(5):
            yield f"s{n}", {"n": n}
        yield "bad", {"n": float("nan")}  # not JSON: the client refuses to encode it mid-stream

    with pytest.raises((ValueError, StorageError)):
        await client.stream_set("streamed", then_bad(), batch=2)

    # A bad item in a later message: INVALID_ARGUMENT naming it, and nothing written.
    channel = storage.channel()
    stub = storage_pb2_grpc.StorageStub(channel)

    async def messages(last: str, commit: bool) -> AsyncIterator[pb.StreamSetRequest]:
        yield pb.StreamSetRequest(collection="streamed", items=[pb.SetItem(id="ok", data="{}")])
        yield pb.StreamSetRequest(collection="streamed", items=[pb.SetItem(id="ok2", data=last)], commit=commit)

    with pytest.raises(grpc.aio.AioRpcError) as bad:
        await stub.StreamSet(messages("[]", True), metadata=storage.metadata())
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (bad.value.details() or "").startswith("messages[1].items[0].data: must be a JSON object")
    # A stream that ends without `commit` (grpc shows a cancel alike): INVALID_ARGUMENT, nothing written.
    with pytest.raises(grpc.aio.AioRpcError) as uncommitted:
        await stub.StreamSet(messages("{}", False), metadata=storage.metadata())
    assert uncommitted.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (uncommitted.value.details() or "").startswith("commit: no message of the 2 set it")
    assert await client.batch_get("streamed", ["s0", "s4", "ok", "ok2"]) == {}
    assert await client.stream_set("streamed", [("ok", {}), ("ok2", {})], batch=1) == 2
    assert sorted(await client.batch_get("streamed", ["ok", "ok2"])) == ["ok", "ok2"]


async def test_values_up_to_the_message_size_limit(storage: Running) -> None:
    client = storage.client()
    limit = 4 * 1024 * 1024 - 4096  # the service's document limit under the default 4 MiB messages
    big = {"blob": "y" * (limit - 20)}
    size = len(json.dumps(big, separators=(",", ":")))
    assert limit - 100 < size <= limit
    assert await client.set(C, "big", big) == 1
    assert (await client.get(C, "big")).data == big  # type: ignore[union-attr]
    too_big = {"blob": "y" * limit}
    with pytest.raises(InvalidRequest, match=r"^data: is \d+ bytes; the limit is"):
        await client.set(C, "too-big", too_big)


BAD_INPUT: list[tuple[str, Callable[[Any], Any], str]] = [
    ("empty collection", lambda s: s.Get(pb.GetRequest(collection="", id="a")), "collection: is empty"),
    ("collection name", lambda s: s.Get(pb.GetRequest(collection="9lives", id="a")), "collection: '9lives'"),
    ("collection quote", lambda s: s.Set(pb.SetRequest(collection="a'b", id="a", data="{}")), "collection:"),
    ("empty id", lambda s: s.Get(pb.GetRequest(collection=C, id="")), "id: is empty"),
    ("long id", lambda s: s.Exists(pb.ExistsRequest(collection=C, id="i" * 256)), "id: is 256 characters"),
    ("not an object", lambda s: s.Set(pb.SetRequest(collection=C, id="a", data="[1]")), "data: must be a JSON"),
    ("not JSON", lambda s: s.Set(pb.SetRequest(collection=C, id="a", data="{x}")), "data: is not valid JSON"),
    ("NaN", lambda s: s.Set(pb.SetRequest(collection=C, id="a", data='{"x": NaN}')), "data: is not valid JSON"),
    ("1e400", lambda s: s.Set(pb.SetRequest(collection=C, id="a", data='{"x": 1e400}')), "data: is not valid JSON"),
    ("NUL", lambda s: s.Set(pb.SetRequest(collection=C, id="a", data='{"x": "\\u0000"}')), "data: contains the"),
    ("surrogate", lambda s: s.Set(pb.SetRequest(collection=C, id="a", data='{"\\ud800": 1}')), "data: contains a"),
    ("deep", lambda s: s.Set(pb.SetRequest(collection=C, id="a", data=_nested(32))), "data: is nested more than 31"),
    (
        "negative version",
        lambda s: s.Set(pb.SetRequest(collection=C, id="a", data="{}", expected_version=-1)),
        "expected_version: is negative",
    ),
    (
        "field path",
        lambda s: s.Query(_query(pb.Filter(field="a..b", op=pb.Filter.OP_EQ, value="1"))),
        "filters[0].field:",
    ),
    (
        "field quote",
        lambda s: s.Query(_query(pb.Filter(field="a'b", op=pb.Filter.OP_EQ, value="1"))),
        "filters[0].field:",
    ),
    ("no op", lambda s: s.Query(_query(pb.Filter(field="a", value="1"))), "filters[0].op: is not set"),
    (
        "bad value",
        lambda s: s.Query(_query(pb.Filter(field="a", op=pb.Filter.OP_EQ, value="{x"))),
        "filters[0].value: is not",
    ),
    (
        "lt bool",
        lambda s: s.Query(_query(pb.Filter(field="a", op=pb.Filter.OP_LT, value="true"))),
        "filters[0].value: lt",
    ),
    (
        "in scalar",
        lambda s: s.Query(_query(pb.Filter(field="a", op=pb.Filter.OP_IN, value="1"))),
        "filters[0].value: in takes",
    ),
    (
        "eq object",
        lambda s: s.Query(_query(pb.Filter(field="a", op=pb.Filter.OP_EQ, value="{}"))),
        "filters[0].value: eq takes",
    ),
    (
        "exists 1",
        lambda s: s.Query(_query(pb.Filter(field="a", op=pb.Filter.OP_EXISTS, value="1"))),
        "filters[0].value: exists",
    ),
    ("sort", lambda s: s.Query(pb.QueryRequest(collection=C, sort=[pb.Sort(field="")])), "sort[0].field: is empty"),
    ("limit", lambda s: s.Query(pb.QueryRequest(collection=C, limit=5000)), "limit: is 5000"),
    ("cursor", lambda s: s.Query(pb.QueryRequest(collection=C, cursor="garbage")), "cursor: is not a cursor"),
    ("batch id", lambda s: s.BatchGet(pb.BatchGetRequest(collection=C, ids=["a", ""])), "ids[1]: is empty"),
    (
        "batch item",
        lambda s: s.BatchSet(pb.BatchSetRequest(collection=C, items=[pb.SetItem(id="a", data="1")])),
        "items[0].data: must be a JSON object",
    ),
]


def _nested(depth: int) -> str:
    return '{"a":' * depth + "1" + "}" * depth


def _query(*filters: pb.Filter) -> pb.QueryRequest:
    return pb.QueryRequest(collection=C, filters=filters)


async def test_bad_input_is_invalid_argument_naming_the_field(storage: Running) -> None:
    stub = storage_pb2_grpc.StorageStub(storage.channel())
    for label, call, message in BAD_INPUT:
        with pytest.raises(grpc.aio.AioRpcError) as failure:
            await call(stub)
        assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT, label
        assert (failure.value.details() or "").startswith(message), (label, failure.value.details())
    with pytest.raises(grpc.aio.AioRpcError) as caller:
        await stub.Get(pb.GetRequest(collection=C, id="a"), metadata=[("upf-caller", "no spaces please")])
    assert caller.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (caller.value.details() or "").startswith("caller: namespace")


async def test_unknown_collections_are_invalid_when_the_plugin_names_its_collections(
    implementation: Implementation,
) -> None:
    async with serve(implementation, collections=["orders"]) as running:
        client = running.client()
        assert await client.set("orders", "o1", {}) == 1
        with pytest.raises(InvalidRequest, match=r"^collection: 'invoices' is not a collection of this storage"):
            await client.get("invoices", "o1")
        with pytest.raises(InvalidRequest, match=r"^collection: 'invoices'"):
            await client.query("invoices")


async def test_namespaces_do_not_see_each_other(storage: Running) -> None:
    alice, bob = storage.client("alice"), storage.client("bob")
    await alice.set(C, "shared-id", {"owner": "alice"})
    await alice.batch_set(C, {f"a{i}": {"owner": "alice"} for i in range(5)})
    assert await bob.get(C, "shared-id") is None
    assert not await bob.exists(C, "shared-id")
    assert await bob.batch_get(C, ["shared-id", "a1"]) == {}
    assert (await bob.query(C, include_total=True)).total == 0
    assert [r async for r in bob.stream_query(C)] == []
    assert not await bob.delete(C, "shared-id")
    assert await bob.set(C, "shared-id", {"owner": "bob"}, expected_version=0) == 1
    assert (await alice.get(C, "shared-id")).data == {"owner": "alice"}  # type: ignore[union-attr]
    assert (await alice.query(C, include_total=True)).total == 6


async def test_backend_outage_is_unavailable_then_recovers_without_a_restart(
    server_implementation: Implementation,
) -> None:
    implementation = server_implementation
    assert implementation.server is not None
    host, port = implementation.server
    proxy = TcpProxy(host, port)
    await proxy.start()
    await proxy.cut()  # the database is down when the plugin starts
    async with serve(implementation, ("127.0.0.1", proxy.port)) as running:
        client = running.client(timeout=10)
        with pytest.raises(StorageUnavailable, match="unreachable"):
            await client.get(C, "a")
        await proxy.start()
        await until(lambda: _answers(client), what="the plugin to reach its database")

        await client.stream_set(C, _numbered(3000))
        stream = client.stream_query(C).__aiter__()
        await stream.__anext__()  # mid-call: the stream has started
        await proxy.cut()
        with pytest.raises(StorageUnavailable):
            async for _ in stream:
                pass
        with pytest.raises(StorageUnavailable):
            await client.set(C, "during", {})

        await proxy.start()
        await until(lambda: _answers(client), what="the plugin to reach its database again")
        assert await client.set(C, "after", {"ok": True}) == 1
        assert len([r async for r in client.stream_query(C)]) == 3001
    await proxy.close()


async def _answers(client: StorageClient) -> bool:
    try:
        await client.exists(C, "a")
    except StorageUnavailable:
        return False
    return True
