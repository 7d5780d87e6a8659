"""The IFiles conformance suite: every test body runs against files-local, files-s3 and files-gcs
(the `implementation` fixture), through a real plugin server, the SDK client and the real backend."""

from __future__ import annotations

import asyncio
import hashlib
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import grpc
import httpx
import pytest
from upf.files.v1 import files_pb2 as pb, files_pb2_grpc

from plugins.files.plugin import FilesPlugin
from plugins.sdk.files import (
    FileNotFound,
    FilesClient,
    FilesError,
    FilesUnavailable,
    InvalidFileRequest,
    UploadRejected,
)
from plugins.sdk.identity import caller_token_interceptors
from tests.conformance.files.conftest import Client, Implementation
from tests.support.processes import Process, eventually, free_port

pytestmark = pytest.mark.asyncio(loop_scope="module")

MiB = 1024 * 1024


def pattern(size: int, seed: int = 0) -> bytes:
    """Bytes that differ at every offset (a shifted or truncated copy cannot pass for the original)."""
    block = hashlib.sha256(f"{seed}".encode()).digest() * 2048  # 64 KiB
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += counter.to_bytes(8, "big") + block[8:]
        counter += 1
    return bytes(out[:size])


# --- round trips -----------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 5 * MiB + 3], ids=["0B", "1B", "5MiB"])
async def test_round_trip_is_byte_exact(files: FilesClient, run_id: str, size: int) -> None:
    data = pattern(size, seed=size)
    path = f"{run_id}/blob-{size}.bin"
    info = await files.upload(path, data, content_type="application/x-test", metadata={"kind": "fixture"})
    assert (info.path, info.size, info.content_type) == (path, size, "application/x-test")
    assert await files.download_bytes(path) == data
    meta = await files.metadata(path)
    assert (meta.size, meta.content_type, meta.metadata, meta.etag) == (
        size,
        "application/x-test",
        {"kind": "fixture"},
        info.etag,
    )
    assert meta.etag


async def test_upload_sources_and_checks(files: FilesClient, run_id: str, tmp_path: object) -> None:
    data = pattern(3 * MiB + 17, seed=7)

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(data), 100_000):
            yield data[start : start + 100_000]

    await files.upload(f"{run_id}/from-iterator", chunks())
    assert await files.download_bytes(f"{run_id}/from-iterator") == data
    sha = hashlib.sha256(data).hexdigest()
    await files.upload(f"{run_id}/checked", data, expected_size=len(data), sha256=sha)
    with pytest.raises(UploadRejected, match="expected_sha256"):
        await files.upload(f"{run_id}/bad-sum", data, sha256="0" * 64)
    with pytest.raises(UploadRejected, match="expected_size"):
        await files.upload(f"{run_id}/bad-size", data, expected_size=len(data) - 1)
    # A refused upload stores nothing.
    assert not await files.exists(f"{run_id}/bad-sum")
    assert not await files.exists(f"{run_id}/bad-size")


async def test_overwrite_replaces_and_changes_etag(files: FilesClient, run_id: str) -> None:
    first = await files.upload(f"{run_id}/doc", b"one")
    second = await files.upload(f"{run_id}/doc", b"two!", content_type="text/plain")
    assert first.etag != second.etag
    assert await files.download_bytes(f"{run_id}/doc") == b"two!"
    assert (await files.metadata(f"{run_id}/doc")).content_type == "text/plain"


async def test_ranges(files: FilesClient, run_id: str) -> None:
    data = pattern(2 * MiB + 11, seed=3)
    path = f"{run_id}/ranged"
    await files.upload(path, data)
    cases = [(0, 10), (1, 1), (MiB - 5, 10), (len(data) - 3, None), (len(data) - 3, 100), (len(data), None), (5, 0)]
    for offset, length in cases:
        expected = data[offset:] if length is None else data[offset : offset + length]
        assert await files.download_bytes(path, offset=offset, length=length) == expected, (offset, length)
    with pytest.raises(InvalidFileRequest, match="offset"):
        await files.download_bytes(path, offset=len(data) + 1)
    with pytest.raises(InvalidFileRequest, match="offset"):
        await files.download_bytes(path, offset=-1)


async def test_missing_files(files: FilesClient, run_id: str) -> None:
    path = f"{run_id}/nothing-here"
    assert not await files.exists(path)
    assert await files.delete(path) is False
    with pytest.raises(FileNotFound):
        await files.metadata(path)
    with pytest.raises(FileNotFound):
        await files.download_bytes(path)
    with pytest.raises(FileNotFound, match="source"):
        await files.copy(path, f"{run_id}/elsewhere")
    with pytest.raises(FileNotFound, match="source"):
        await files.move(path, f"{run_id}/elsewhere")


async def test_delete(files: FilesClient, run_id: str) -> None:
    await files.upload(f"{run_id}/a/b/c.txt", b"x")
    assert await files.delete(f"{run_id}/a/b/c.txt") is True
    assert not await files.exists(f"{run_id}/a/b/c.txt")
    # No folder is left behind to show up in a listing.
    page = await files.list_page(f"{run_id}/", delimiter="/")
    assert (page.files, page.prefixes) == ([], [])


# --- copy, move, names -----------------------------------------------------------------------------


async def test_copy_and_move_keep_bytes_and_metadata(files: FilesClient, run_id: str) -> None:
    data = pattern(MiB + 1, seed=9)
    await files.upload(f"{run_id}/src.bin", data, content_type="image/png", metadata={"owner": "a"})
    copied = await files.copy(f"{run_id}/src.bin", f"{run_id}/copies/dst.bin")
    assert (copied.path, copied.size) == (f"{run_id}/copies/dst.bin", len(data))
    assert await files.download_bytes(f"{run_id}/copies/dst.bin") == data
    assert await files.exists(f"{run_id}/src.bin")
    moved = await files.move(f"{run_id}/src.bin", f"{run_id}/moved/final.bin")
    assert moved.path == f"{run_id}/moved/final.bin"
    assert not await files.exists(f"{run_id}/src.bin")
    for path in (f"{run_id}/copies/dst.bin", f"{run_id}/moved/final.bin"):
        meta = await files.metadata(path)
        assert (meta.content_type, meta.metadata) == ("image/png", {"owner": "a"}), path
    assert await files.download_bytes(f"{run_id}/moved/final.bin") == data
    # Onto itself: nothing changes.
    for operation in (files.copy, files.move):
        same = await operation(f"{run_id}/moved/final.bin", f"{run_id}/moved/final.bin")
        assert same.size == len(data)
    assert await files.download_bytes(f"{run_id}/moved/final.bin") == data
    # Copying onto an existing file replaces it.
    await files.upload(f"{run_id}/other", b"other")
    await files.copy(f"{run_id}/other", f"{run_id}/moved/final.bin")
    assert await files.download_bytes(f"{run_id}/moved/final.bin") == b"other"


async def test_names_with_spaces_and_unicode(files: FilesClient, run_id: str) -> None:
    names = ["my report (final).pdf", "ünïcødé/日本語 ファイル.txt", "emoji 🎉/a+b=c&d?e#f.txt", "100%.txt"]
    for index, name in enumerate(names):
        path = f"{run_id}/{name}"
        await files.upload(path, f"content {index}".encode())
        assert await files.download_bytes(path) == f"content {index}".encode()
        assert (await files.metadata(path)).path == path
    listed = sorted([info.path async for info in files.list(f"{run_id}/")])
    assert listed == sorted(f"{run_id}/{name}" for name in names)


@pytest.mark.parametrize(
    ("path", "field"),
    [
        ("../escape", "path"),
        ("a/../../escape", "path"),
        ("a/./b", "path"),
        ("/etc/passwd", "path"),
        ("", "path"),
        ("a//b", "path"),
        ("folder/", "path"),
        ("nul\x00byte", "path"),
        ("line\nbreak", "path"),
        ("x" * 901, "path"),
        ("x" * 256 + "/y", "path"),
    ],
    ids=[
        "dotdot",
        "nested-dotdot",
        "dot",
        "absolute",
        "empty",
        "empty-segment",
        "folder",
        "nul",
        "newline",
        "too-long",
        "segment-too-long",
    ],
)
async def test_bad_paths_are_refused_naming_the_field(files: FilesClient, path: str, field: str) -> None:
    with pytest.raises(InvalidFileRequest, match=rf"^{field}: "):
        await files.metadata(path)
    with pytest.raises(InvalidFileRequest, match=r"^header.path: "):
        await files.upload(path, b"x")
    with pytest.raises(InvalidFileRequest, match=r"^destination: "):
        await files.copy("anything", path)


async def test_bad_options_are_refused_naming_the_field(files: FilesClient, run_id: str) -> None:
    with pytest.raises(InvalidFileRequest, match=r"^header.metadata\['Bad Key'\]"):
        await files.upload(f"{run_id}/m", b"x", metadata={"Bad Key": "v"})
    with pytest.raises(InvalidFileRequest, match=r"^delimiter: "):
        await files.list_page(delimiter=",")
    with pytest.raises(InvalidFileRequest, match=r"^page_size: "):
        await files.list_page(page_size=5000)
    with pytest.raises(InvalidFileRequest, match=r"^prefix: "):
        await files.list_page("../")
    with pytest.raises(InvalidFileRequest, match=r"^expires_in_seconds: "):
        await files.signed_url(f"{run_id}/x", "read", expires_in=0)


# --- listing -----------------------------------------------------------------------------------------


async def test_listing_with_prefix_and_delimiter(files: FilesClient, run_id: str) -> None:
    paths = [f"{run_id}/docs/{n:02}.txt" for n in range(7)] + [
        f"{run_id}/docs/deep/inner.txt",
        f"{run_id}/docs/deep/er/most.txt",
        f"{run_id}/docs-other/x.txt",
        f"{run_id}/top.txt",
    ]
    for path in paths:
        await files.upload(path, path.encode())
    everything = [info async for info in files.list(f"{run_id}/")]
    assert [info.path for info in everything] == sorted(paths)
    assert all(info.size == len(info.path.encode()) for info in everything)

    folder = await files.list_page(f"{run_id}/", delimiter="/")
    assert [info.path for info in folder.files] == [f"{run_id}/top.txt"]
    assert folder.prefixes == [f"{run_id}/docs-other/", f"{run_id}/docs/"]
    assert folder.next_page_token == ""

    docs = await files.list_page(f"{run_id}/docs/", delimiter="/")
    assert [info.path for info in docs.files] == [f"{run_id}/docs/{n:02}.txt" for n in range(7)]
    assert docs.prefixes == [f"{run_id}/docs/deep/"]

    partial = [info.path async for info in files.list(f"{run_id}/docs/0")]
    assert partial == [f"{run_id}/docs/{n:02}.txt" for n in range(7)]


async def test_listing_in_pages(
    files: FilesClient, implementation: Implementation, run_id: str, request: pytest.FixtureRequest
) -> None:
    if not implementation.paginates:
        request.applymarker(
            pytest.mark.xfail(
                strict=True,
                raises=AssertionError,
                reason="gcp-storage-emulator ignores maxResults and pageToken (it answers one page); GCS pages",
            )
        )
    expected = [f"{run_id}/docs/{n:02}.txt" for n in range(7)]
    for path in [*expected, f"{run_id}/docs/deep/inner.txt"]:
        await files.upload(path, b"x")
    for delimiter, want in (
        ("", [*expected, f"{run_id}/docs/deep/inner.txt"]),
        ("/", [*expected, f"{run_id}/docs/deep/"]),
    ):
        seen: list[str] = []
        token = ""
        pages = 0
        while True:
            page = await files.list_page(f"{run_id}/docs/", delimiter=delimiter, page_size=3, page_token=token)
            assert len(page.files) + len(page.prefixes) <= 3
            seen += [info.path for info in page.files] + page.prefixes
            pages += 1
            token = page.next_page_token
            if not token:
                break
        assert sorted(seen) == sorted(want)
        assert pages == 3


# --- namespaces and identity -----------------------------------------------------------------------


async def test_each_calling_plugin_has_its_own_namespace(client: Client, other_client: Client, run_id: str) -> None:
    a, b = client.files, other_client.files
    await a.upload(f"{run_id}/secret.txt", b"for a only")
    assert not await b.exists(f"{run_id}/secret.txt")
    with pytest.raises(FileNotFound):
        await b.download_bytes(f"{run_id}/secret.txt")
    assert [info async for info in b.list(f"{run_id}/")] == []
    assert await b.delete(f"{run_id}/secret.txt") is False
    await b.upload(f"{run_id}/secret.txt", b"b's own")
    assert await a.download_bytes(f"{run_id}/secret.txt") == b"for a only"
    assert await b.download_bytes(f"{run_id}/secret.txt") == b"b's own"
    # Nothing a caller can write climbs out of its namespace.
    with pytest.raises(InvalidFileRequest):
        await b.download_bytes(f"../files-test-a/{run_id}/secret.txt")


async def test_calls_without_an_identity_token_are_refused(files_plugin: FilesPlugin) -> None:
    async with grpc.aio.insecure_channel(files_plugin.plugin.endpoint) as channel:
        stub = files_pb2_grpc.FilesStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.Exists(pb.ExistsRequest(path="x"))
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_features_match_the_manifest(
    files: FilesClient, files_plugin: FilesPlugin, implementation: Implementation
) -> None:
    features = await files.features()
    declared = set(files_plugin.plugin.manifest.provides[0].capabilities)
    assert features <= declared
    assert features == implementation.expected_capabilities


# --- a cut upload --------------------------------------------------------------------------------------


async def test_an_upload_cut_off_leaves_no_partial_file(
    client: Client, implementation: Implementation, run_id: str
) -> None:
    path = f"{run_id}/cut.bin"
    await client.files.upload(path, b"the old version")
    stub = files_pb2_grpc.FilesStub(await client.plugin.channel("IFiles"))
    call = stub.Upload()  # type: ignore[call-arg]  # no iterator: written to with call.write
    await call.write(pb.UploadRequest(header=pb.UploadHeader(path=path)))
    # More than one S3 / GCS part, so the backends have started a multipart or resumable upload.
    for _ in range(40):
        await call.write(pb.UploadRequest(chunk=b"n" * (256 * 1024)))
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    assert await client.files.download_bytes(path) == b"the old version"
    fresh = f"{run_id}/cut-fresh.bin"
    call = stub.Upload()  # type: ignore[call-arg]  # no iterator: written to with call.write
    await call.write(pb.UploadRequest(header=pb.UploadHeader(path=fresh)))
    for _ in range(40):
        await call.write(pb.UploadRequest(chunk=b"n" * (256 * 1024)))
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    assert not await client.files.exists(fresh)
    assert [info.path async for info in client.files.list(f"{run_id}/")] == [path]
    if implementation.name == "files-local":
        # The part written so far is removed, not only hidden.
        temp = implementation.work_dir / "files-root" / "tmp"
        await eventually(lambda: not any(temp.iterdir()), what="the cut upload's temp file to go")
    if implementation.pending_uploads is not None:
        # The multipart uploads were aborted, not left to accumulate parts.
        deadline = asyncio.get_running_loop().time() + 5
        while (pending := await implementation.pending_uploads()) != 0:
            assert asyncio.get_running_loop().time() < deadline, f"{pending} multipart upload(s) left behind"
            await asyncio.sleep(0.05)


# --- signed URLs -------------------------------------------------------------------------------------


async def test_signed_urls_upload_and_download_without_a_token(files: FilesClient, run_id: str) -> None:
    data = pattern(MiB + 5, seed=11)
    path = f"{run_id}/via url/ü.bin"
    write = await files.signed_url(path, "write", expires_in=300, content_type="application/pdf")
    assert write.method == "PUT"
    async with httpx.AsyncClient(timeout=30) as http:
        put = await http.put(write.url, content=data, headers=write.headers)
        assert put.status_code == 200, put.text
        meta = await files.metadata(path)
        assert (meta.size, meta.content_type) == (len(data), "application/pdf")
        read = await files.signed_url(path, "read", expires_in=300)
        assert read.method == "GET"
        got = await http.get(read.url)
        assert got.status_code == 200
        assert got.content == data


async def test_signed_urls_refuse_tampering_and_other_paths(
    files: FilesClient, implementation: Implementation, run_id: str, request: pytest.FixtureRequest
) -> None:
    _expect_signature_checks(implementation, request)
    await files.upload(f"{run_id}/mine.txt", b"mine")
    await files.upload(f"{run_id}/other.txt", b"other")
    read = await files.signed_url(f"{run_id}/mine.txt", "read", expires_in=300)
    write = await files.signed_url(f"{run_id}/mine.txt", "write", expires_in=300)
    async with httpx.AsyncClient(timeout=10) as http:
        assert (await http.get(read.url)).status_code == 200
        other_path = read.url.replace("mine.txt", "other.txt")
        assert (await http.get(other_path)).status_code == 403
        parts = urlsplit(read.url)
        flipped = parts.query[:-1] + ("0" if parts.query[-1] != "0" else "1")
        assert (await http.get(urlunsplit(parts._replace(query=flipped)))).status_code == 403
        # A read URL does not allow a write, nor a write URL with another content type.
        assert (await http.put(read.url, content=b"evil")).status_code == 403
        evil = await http.put(write.url, content=b"evil", headers={"Content-Type": "text/html"})
        assert evil.status_code == 403
    assert await files.download_bytes(f"{run_id}/mine.txt") == b"mine"


async def test_signed_urls_expire(
    files: FilesClient, implementation: Implementation, run_id: str, request: pytest.FixtureRequest
) -> None:
    _expect_signature_checks(implementation, request)
    await files.upload(f"{run_id}/soon.txt", b"soon")
    clock = implementation.clock
    # files-local's clock is injected and moved past the expiry; S3 and GCS are given 1 s and polled.
    lifetime = 60 if clock is not None else 1
    read = await files.signed_url(f"{run_id}/soon.txt", "read", expires_in=lifetime)
    write = await files.signed_url(f"{run_id}/soon.txt", "write", expires_in=lifetime)
    async with httpx.AsyncClient(timeout=10) as http:
        if clock is not None:
            assert (await http.get(read.url)).status_code == 200
            clock.offset += lifetime + 1
        try:
            deadline = asyncio.get_running_loop().time() + 3
            while (status := (await http.get(read.url)).status_code) != 403:
                assert asyncio.get_running_loop().time() < deadline, f"an expired read URL still answers {status}"
                await asyncio.sleep(0.2)
            put = await http.put(write.url, content=b"late", headers=write.headers)
            assert put.status_code == 403
        finally:
            if clock is not None:
                clock.offset -= lifetime + 1
    assert await files.download_bytes(f"{run_id}/soon.txt") == b"soon"


def _expect_signature_checks(implementation: Implementation, request: pytest.FixtureRequest) -> None:
    if not implementation.checks_signatures:
        # Strict: the day the emulator starts checking signatures, this xfail fails and gets removed.
        request.applymarker(
            pytest.mark.xfail(
                strict=True,
                raises=AssertionError,
                reason=f"{implementation.name}'s test server (moto / gcp-storage-emulator) does not verify "
                "presigned URLs; AWS S3, MinIO and GCS do",
            )
        )


# --- the backend going away ------------------------------------------------------------------------


async def test_backend_down_is_unavailable_then_recovers(
    files: FilesClient, implementation: Implementation, run_id: str
) -> None:
    path = f"{run_id}/survivor.txt"
    await files.upload(path, b"before")
    await asyncio.to_thread(implementation.take_down)
    try:
        with pytest.raises(FilesUnavailable, match="unavailable"):
            await files.exists(path)
        with pytest.raises(FilesUnavailable):
            await files.upload(f"{run_id}/during.txt", b"during")
        with pytest.raises(FilesUnavailable):
            await files.download_bytes(path)
    finally:
        await asyncio.to_thread(implementation.bring_back)

    async def works() -> bool:
        try:
            await files.upload(f"{run_id}/after.txt", b"after")
        except FilesUnavailable:
            return False
        return True

    # The same plugin process, not restarted: its clients reconnect by themselves.
    deadline = asyncio.get_running_loop().time() + 20
    while not await works():
        assert asyncio.get_running_loop().time() < deadline, "the plugin did not recover"
        await asyncio.sleep(0.1)
    assert await files.download_bytes(f"{run_id}/after.txt") == b"after"


# --- a large stream in constant memory ---------------------------------------------------------------

# 128 MiB in the default suite; `make test-files-large` runs the same test with 1 GiB.
LARGE_MIB = int(os.environ.get("UPF_FILES_LARGE_MIB", "128"))
# What the plugin process may grow by while streaming, whatever the size: a few S3/GCS parts of 8 MiB
# (the one filling and the one on its way), gRPC's flow-control windows and the allocator's slack.
MAX_GROWTH_MIB = 96


async def test_a_large_stream_up_and_down_in_constant_memory(
    implementation: Implementation, client: Client, run_id: str
) -> None:
    """The plugin runs as its own process (`upf plugin NAME`), so that its peak RSS (VmHWM) is its own."""
    port = free_port()
    env = {
        **os.environ,
        **implementation.cli_env,
        "UPF_REGISTRATION_CREDENTIAL": implementation.registry.credential(implementation.name),
    }
    args = [str(Path(sys.executable).parent / "upf"), "plugin", implementation.name, "--registry",
            implementation.registry.target, "--port", str(port), "--instance-id", f"{implementation.name}-large",
            "--drain-grace", "1", "--log-level", "warning", *implementation.cli_args]  # fmt: skip
    process = Process(args, env=env, log=implementation.work_dir / f"large-{port}.log")
    interceptors = caller_token_interceptors(client.plugin.identity_token)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", interceptors=interceptors) as channel:
            files = FilesClient(channel, chunk_size=MiB)
            deadline = asyncio.get_running_loop().time() + 20
            while True:
                assert process.alive(), process.output()
                try:
                    await files.features()
                    break
                except FilesError:
                    assert asyncio.get_running_loop().time() < deadline, "the plugin process did not serve"
                    await asyncio.sleep(0.05)
            # Warm up every code path first, so that the baseline holds the libraries and pools.
            await files.upload(f"{run_id}/warm", pattern(MiB, seed=1))
            await files.download_bytes(f"{run_id}/warm")
            baseline = _peak_rss_mib(process.pid)

            sent = hashlib.sha256()

            async def chunks() -> AsyncIterator[bytes]:
                block = pattern(MiB, seed=5)
                for n in range(LARGE_MIB):
                    chunk = n.to_bytes(8, "big") + block[8:]
                    sent.update(chunk)
                    yield chunk

            info = await files.upload(f"{run_id}/large.bin", chunks())
            assert info.size == LARGE_MIB * MiB
            after_upload = _peak_rss_mib(process.pid)
            received = hashlib.sha256()
            size = 0
            async for chunk in files.download(f"{run_id}/large.bin"):
                received.update(chunk)
                size += len(chunk)
            assert (size, received.hexdigest()) == (LARGE_MIB * MiB, sent.hexdigest())
            peak = _peak_rss_mib(process.pid)
            await files.delete(f"{run_id}/large.bin")
    finally:
        process.stop()
    print(
        f"{implementation.name}: {LARGE_MIB} MiB up and down; plugin peak RSS {baseline} MiB before, "
        f"{after_upload} MiB after the upload, {peak} MiB after the download"
    )
    assert peak - baseline < MAX_GROWTH_MIB, f"the plugin grew by {peak - baseline} MiB streaming {LARGE_MIB} MiB"


def _peak_rss_mib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    kib = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:"))
    return kib // 1024
