"""A typed async client for IFiles (upf.files.v1.Files), for plugins that store files.

    files = await plugin.files()                       # or FilesClient(await plugin.channel("IFiles"))
    info = await files.upload("invoices/1.pdf", pdf_bytes, content_type="application/pdf")
    async for chunk in files.download("invoices/1.pdf", offset=0, length=1024): ...
    data = await files.download_bytes("invoices/1.pdf")
    url = await files.signed_url("invoices/1.pdf", "read", expires_in=300)

`upload` takes bytes, an (async) iterable of chunks, a binary file object or a pathlib.Path, and sends
them in chunks so that large files never sit in memory whole. Paths are relative to the calling
plugin's own namespace. Errors are FilesError subclasses named for what happened; each keeps the gRPC
status code and the provider's message.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC as _UTC, datetime
from typing import IO, Literal

import grpc
from upf.files.v1 import files_pb2 as pb, files_pb2_grpc

from plugins.sdk.grants import owner_metadata

__all__ = [
    "FileInfo",
    "FileNotFound",
    "FilesClient",
    "FilesError",
    "FilesUnavailable",
    "FilesUnsupported",
    "InvalidFileRequest",
    "ListPage",
    "SignedUrl",
    "UploadRejected",
]

CHUNK_SIZE = 1024 * 1024  # per Upload message: fewer messages cost less CPU, well under gRPC's 4 MiB limit
UploadData = bytes | bytearray | memoryview | AsyncIterable[bytes] | Iterable[bytes] | IO[bytes] | os.PathLike[str]


class FilesError(Exception):
    """An IFiles call failed; `code` is the gRPC status, the message the provider's."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


class FileNotFound(FilesError):
    """No such file (NOT_FOUND)."""


class InvalidFileRequest(FilesError):
    """A bad path, range, page token or option (INVALID_ARGUMENT, OUT_OF_RANGE); the message names the field."""


class UploadRejected(FilesError):
    """The bytes did not match the expected size or checksum, or the path cannot be used (FAILED_PRECONDITION)."""


class FilesUnsupported(FilesError):
    """The provider lacks the capability the call needs (UNIMPLEMENTED)."""


class FilesUnavailable(FilesError):
    """The provider or its backend cannot be reached now (UNAVAILABLE); worth retrying later."""


_ERRORS: dict[grpc.StatusCode, type[FilesError]] = {
    grpc.StatusCode.NOT_FOUND: FileNotFound,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidFileRequest,
    grpc.StatusCode.OUT_OF_RANGE: InvalidFileRequest,
    grpc.StatusCode.FAILED_PRECONDITION: UploadRejected,
    grpc.StatusCode.UNIMPLEMENTED: FilesUnsupported,
    grpc.StatusCode.UNAVAILABLE: FilesUnavailable,
}


@dataclass(frozen=True, slots=True)
class FileInfo:
    path: str
    size: int
    content_type: str
    etag: str
    last_modified: datetime
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ListPage:
    files: list[FileInfo]
    prefixes: list[str]  # "folders" rolled up by the delimiter, each ending with it
    next_page_token: str  # "" : the last page


@dataclass(frozen=True, slots=True)
class SignedUrl:
    url: str
    method: str  # GET or PUT
    expires_at: datetime
    headers: dict[str, str]  # to send with the request (a PUT's Content-Type)


class FilesClient:
    def __init__(
        self,
        channel: grpc.aio.Channel,
        *,
        chunk_size: int = CHUNK_SIZE,
        timeout: float | None = None,
        owner: str | None = None,
    ) -> None:
        """`owner`: another plugin whose files to work on, as far as its manifest grants (grants.py)."""
        self._stub = files_pb2_grpc.FilesStub(channel)
        self._chunk_size = chunk_size
        self._timeout = timeout  # per unary call; streams run as long as they need
        self._metadata = owner_metadata(owner)

    async def upload(
        self,
        path: str,
        data: UploadData,
        *,
        content_type: str = "",
        metadata: Mapping[str, str] | None = None,
        expected_size: int | None = None,
        sha256: str = "",
    ) -> FileInfo:
        """Store `data` at `path` (replacing what was there); visible only once every byte has arrived."""
        header = pb.UploadHeader(
            path=path, content_type=content_type, metadata=dict(metadata or {}), expected_sha256=sha256
        )
        if expected_size is not None:
            header.expected_size = expected_size

        async def requests() -> AsyncIterator[pb.UploadRequest]:
            yield pb.UploadRequest(header=header)
            async for chunk in _chunks(data, self._chunk_size):
                yield pb.UploadRequest(chunk=chunk)

        with _errors():
            reply: pb.FileMetadata = await self._stub.Upload(requests(), metadata=self._metadata)
        return _info(reply)

    async def download(self, path: str, *, offset: int = 0, length: int | None = None) -> AsyncIterator[bytes]:
        """The file's bytes (from `offset`, `length` of them or to the end) as they arrive."""
        request = pb.DownloadRequest(path=path, offset=offset)
        if length is not None:
            request.length = length
        call = self._stub.Download(request, metadata=self._metadata)
        try:
            with _errors():
                async for reply in call:
                    if reply.chunk:
                        yield reply.chunk
        finally:
            call.cancel()  # a consumer that stops early must not leave the stream running

    async def download_bytes(self, path: str, *, offset: int = 0, length: int | None = None) -> bytes:
        return b"".join([chunk async for chunk in self.download(path, offset=offset, length=length)])

    async def delete(self, path: str) -> bool:
        """True if a file was deleted, False if there was none."""
        with _errors():
            reply: pb.DeleteResponse = await self._stub.Delete(
                pb.DeleteRequest(path=path), timeout=self._timeout, metadata=self._metadata
            )
        return reply.deleted

    async def exists(self, path: str) -> bool:
        with _errors():
            reply: pb.ExistsResponse = await self._stub.Exists(
                pb.ExistsRequest(path=path), timeout=self._timeout, metadata=self._metadata
            )
        return reply.exists

    async def copy(self, source: str, destination: str) -> FileInfo:
        with _errors():
            reply = await self._stub.Copy(
                pb.CopyRequest(source=source, destination=destination), timeout=self._timeout, metadata=self._metadata
            )
        return _info(reply)

    async def move(self, source: str, destination: str) -> FileInfo:
        with _errors():
            reply = await self._stub.Move(
                pb.MoveRequest(source=source, destination=destination), timeout=self._timeout, metadata=self._metadata
            )
        return _info(reply)

    async def metadata(self, path: str) -> FileInfo:
        with _errors():
            reply = await self._stub.GetMetadata(
                pb.GetMetadataRequest(path=path), timeout=self._timeout, metadata=self._metadata
            )
        return _info(reply)

    async def list_page(
        self, prefix: str = "", *, delimiter: str = "", page_size: int = 0, page_token: str = ""
    ) -> ListPage:
        """One page of the files (and, with delimiter "/", the folders) whose paths start with `prefix`."""
        request = pb.ListRequest(prefix=prefix, delimiter=delimiter, page_size=page_size, page_token=page_token)
        files: list[FileInfo] = []
        prefixes: list[str] = []
        token = ""
        with _errors():
            async for reply in self._stub.List(request, timeout=self._timeout, metadata=self._metadata):
                files.extend(_info(item) for item in reply.files)
                prefixes.extend(reply.common_prefixes)
                token = reply.next_page_token or token
        return ListPage(files, prefixes, token)

    async def list(self, prefix: str = "", *, page_size: int = 0) -> AsyncIterator[FileInfo]:
        """Every file under `prefix`, page after page."""
        token = ""
        while True:
            page = await self.list_page(prefix, page_size=page_size, page_token=token)
            for info in page.files:
                yield info
            if not page.next_page_token:
                return
            token = page.next_page_token

    async def signed_url(
        self, path: str, operation: Literal["read", "write"], *, expires_in: int, content_type: str = ""
    ) -> SignedUrl:
        """A URL anyone holding it can GET (read) or PUT (write, with `headers`) until it expires."""
        kinds = {"read": pb.SIGNED_URL_OPERATION_READ, "write": pb.SIGNED_URL_OPERATION_WRITE}
        request = pb.GetSignedUrlRequest(
            path=path, operation=kinds[operation], expires_in_seconds=expires_in, content_type=content_type
        )
        with _errors():
            reply: pb.GetSignedUrlResponse = await self._stub.GetSignedUrl(
                request, timeout=self._timeout, metadata=self._metadata
            )
        return SignedUrl(reply.url, reply.method, reply.expires_at.ToDatetime(tzinfo=_UTC), dict(reply.headers))

    async def features(self) -> frozenset[str]:
        """The optional capabilities the provider has now (range, signed-urls, user-metadata, server-side-copy)."""
        with _errors():
            reply: pb.FeaturesResponse = await self._stub.Features(
                pb.FeaturesRequest(), timeout=self._timeout, metadata=self._metadata
            )
        return frozenset(reply.capabilities)


class _errors:
    """Turns a failed call into the FilesError subclass for its status."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: object, exc: BaseException | None, traceback: object) -> None:
        if isinstance(exc, grpc.aio.AioRpcError):
            error = _ERRORS.get(exc.code(), FilesError)
            raise error(exc.code(), exc.details() or exc.code().name) from None


async def _chunks(data: UploadData, size: int) -> AsyncIterator[bytes]:
    if isinstance(data, bytes | bytearray | memoryview):
        view = memoryview(data)
        for start in range(0, len(view), size):
            yield bytes(view[start : start + size])
    elif isinstance(data, os.PathLike):
        with open(data, "rb") as handle:  # noqa: ASYNC230  # each read is on a worker thread below
            while chunk := await asyncio.to_thread(handle.read, size):
                yield chunk
    elif hasattr(data, "read"):
        while chunk := await asyncio.to_thread(data.read, size):
            yield chunk
    elif isinstance(data, AsyncIterable):
        async for chunk in data:
            yield bytes(chunk)
    else:
        for chunk in data:
            yield bytes(chunk)


def _info(reply: pb.FileMetadata) -> FileInfo:
    return FileInfo(
        path=reply.path,
        size=reply.size,
        content_type=reply.content_type,
        etag=reply.etag,
        last_modified=reply.last_modified.ToDatetime(tzinfo=_UTC),
        metadata=dict(reply.metadata),
    )
