"""A bug in a backend reaches the client as INTERNAL "internal error": no exception text, no traceback."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from upf.cache.v1 import cache_pb2_grpc

from plugins.cache.backends.memory import MemoryBackend
from plugins.cache.service import CacheService
from plugins.sdk.cache import CacheClient, CacheError


class BrokenBackend(MemoryBackend):
    async def get(self, namespace: str, key: str) -> bytes | None:
        raise RuntimeError("secret detail of a bug")


async def test_a_bug_answers_internal_without_its_details(caplog: pytest.LogCaptureFixture) -> None:
    server = grpc.aio.server()
    cache_pb2_grpc.add_CacheServicer_to_server(CacheService(BrokenBackend()), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            client = CacheClient(channel)
            with pytest.raises(CacheError) as caught:
                await client.get("k")
            assert caught.value.code == grpc.StatusCode.INTERNAL
            assert str(caught.value) == "internal error"
            assert await client.set("k", b"v")  # the rest keeps working
    finally:
        await server.stop(None)
    assert "secret detail of a bug" in caplog.text  # logged for the operator


async def test_a_namespace_of_that_ends_the_call_keeps_its_status() -> None:
    # What a verifying namespace_of does (plugins.sdk.identity.CallerVerifier.namespace_of).
    async def refuse(context: Any) -> str:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, "caller identity: no upf-caller-token metadata")
        raise AssertionError("unreachable")

    server = grpc.aio.server()
    cache_pb2_grpc.add_CacheServicer_to_server(CacheService(MemoryBackend(), namespace_of=refuse), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            client = CacheClient(channel)
            for call in (client.get("k"), client.keys("*")):
                with pytest.raises(CacheError, match="caller identity") as caught:
                    await call
                assert caught.value.code == grpc.StatusCode.UNAUTHENTICATED
    finally:
        await server.stop(None)
