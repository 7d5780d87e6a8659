"""The namespace comes from a collaborator (`namespace_of`): whatever it decides, the service keeps to,
and when it ends a call itself (a caller it cannot verify), the client gets that status, untouched."""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from plugins.sdk.storage import StorageClient, StorageError
from tests.conformance.storage.conftest import Implementation, serve


@pytest.fixture
def sqlite(tmp_path: Any) -> Implementation:
    from plugins.storage.sqlite import SqliteBackend

    path = str(tmp_path / "seam.sqlite3")
    return Implementation("storage-sqlite", lambda _server: SqliteBackend(path), None)


async def test_the_collaborator_decides_the_namespace(sqlite: Implementation) -> None:
    async def from_header(context: grpc.aio.ServicerContext[Any, Any]) -> str:
        metadata = dict(context.invocation_metadata() or ())
        return f"verified-{metadata.get('x-test-plugin', 'nobody')}"

    async with serve(sqlite, namespace_of=from_header) as running:
        # The placeholder's upf-caller metadata no longer counts: both claim "mallory".
        alice = StorageClient(running.channel(), metadata=[("x-test-plugin", "alice"), ("upf-caller", "mallory")])
        bob = StorageClient(running.channel(), metadata=[("x-test-plugin", "bob"), ("upf-caller", "mallory")])
        await alice.set("notes", "n1", {"by": "alice"})
        assert await bob.get("notes", "n1") is None


async def test_a_call_the_collaborator_ends_keeps_its_status(
    sqlite: Implementation, caplog: pytest.LogCaptureFixture
) -> None:
    async def refuse(context: grpc.aio.ServicerContext[Any, Any]) -> str:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, "caller identity: no token")
        raise AssertionError("abort raises")

    async with serve(sqlite, namespace_of=refuse) as running:
        client = running.client()
        for call in (
            client.get("notes", "n1"),
            client.query("notes"),
            client.stream_set("notes", [("n1", {})]),
            _drain(client.stream_query("notes")),
            _transaction(client),
        ):
            with pytest.raises(StorageError) as refused:
                await call
            assert refused.value.code == grpc.StatusCode.UNAUTHENTICATED
            assert refused.value.details == "caller identity: no token"
    # Not mistaken for a failure of the storage plugin (which would be logged with a traceback).
    assert [r.getMessage() for r in caplog.records if r.name == "plugins.storage.service"] == []


async def _drain(stream: Any) -> None:
    async for _ in stream:
        pass


async def _transaction(client: Any) -> None:
    async with client.transaction() as tx:
        await tx.get("notes", "n1")
