"""A provider without a capability says so: Features leaves it out and the call answers UNIMPLEMENTED
with a message naming it (files-local without its HTTP listener has no signed URLs)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio
from upf.files.v1 import files_pb2_grpc

from plugins.files.local import LocalBackend
from plugins.files.service import FilesService
from plugins.sdk.files import FilesClient, FilesUnsupported


@pytest_asyncio.fixture
async def files_without_urls(tmp_path: Path) -> AsyncIterator[FilesClient]:
    backend = LocalBackend(tmp_path / "root", signer=None, clock=time.time)
    backend.create()

    async def namespace_of(context: Any) -> str:
        return "a-plugin"  # no registry here: the namespace is fixed (identity is tested in test_files.py)

    server = grpc.aio.server()
    files_pb2_grpc.add_FilesServicer_to_server(FilesService(backend, namespace_of), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield FilesClient(channel)
    await server.stop(None)


async def test_a_missing_capability_is_unimplemented_with_a_message(files_without_urls: FilesClient) -> None:
    assert "signed-urls" not in await files_without_urls.features()
    await files_without_urls.upload("doc.txt", b"x")
    with pytest.raises(FilesUnsupported, match="'signed-urls' capability") as refused:
        await files_without_urls.signed_url("doc.txt", "read", expires_in=60)
    assert refused.value.code == grpc.StatusCode.UNIMPLEMENTED
    assert "Traceback" not in str(refused.value)
