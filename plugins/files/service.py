"""`upf.files.v1.Files` over any Backend: input checks, the caller's namespace, status codes.

Every path a caller names is checked (paths.py) and put under the caller's namespace, its plugin id
from the registry-signed identity token, so that one plugin can never name another's files; answers
carry paths without it. A caller that names another plugin (`upf-owner`) works under that plugin's
namespace instead, on the paths the owner's manifest grants it (plugins/sdk/grants.py: every path,
and a List prefix, is checked; a write needs read-write). Backend errors become status codes with a
message a caller can act on: NotFound -> NOT_FOUND, BackendUnavailable -> UNAVAILABLE, Unsupported ->
UNIMPLEMENTED, Conflict -> FAILED_PRECONDITION; anything unexpected is logged here and answered
INTERNAL without its trace.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, NoReturn, TypeAlias

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from upf.files.v1 import files_pb2 as pb, files_pb2_grpc

from plugins.files.backend import Backend, BackendUnavailable, BadRequest, Conflict, NotFound, ObjectInfo, Unsupported
from plugins.files.paths import InvalidPath, check_path, check_prefix
from plugins.sdk.grants import Sharing, SharingError

__all__ = ["DEFAULT_CONTENT_TYPE", "FilesService", "NamespaceOf"]

logger = logging.getLogger(__name__)

_Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"
NamespaceOf = Callable[[_Context], Awaitable[str]]

DEFAULT_CONTENT_TYPE = "application/octet-stream"
DOWNLOAD_CHUNK = 1024 * 1024  # per message; gRPC's default limit is 4 MiB, and fewer messages cost less CPU
MAX_PAGE_SIZE = 1000
LIST_BATCH = 100  # entries per streamed message of a page
MAX_SIGNED_URL_SECONDS = 7 * 24 * 3600  # S3 and GCS refuse longer
# User metadata travels as HTTP headers in S3 and GCS: keys are header-safe tokens, values printable
# ASCII, and S3 allows 2 KiB in all.
_METADATA_KEY = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
_METADATA_VALUE = re.compile(r"[\x20-\x7e]{0,1024}")
MAX_METADATA_BYTES = 2048
_CONTENT_TYPE = re.compile(r"[\x21-\x7e][\x20-\x7e]{0,254}")


class _BadUpload(Exception):
    """The uploaded bytes do not match the header's expected size or checksum."""


class FilesService(files_pb2_grpc.FilesServicer):
    def __init__(self, backend: Backend, namespace_of: NamespaceOf, sharing: Sharing | None = None) -> None:
        self._backend = backend
        self._namespace_of = namespace_of
        self._sharing = sharing or Sharing("files", None)

    async def _namespace(self, context: _Context, touches: list[tuple[str, str]], *, write: bool) -> str:
        """The namespace the call works in, once the caller may read (or `write`) each (checked path,
        field) there."""
        try:
            scope = await self._sharing.scope(context, await self._namespace_of(context))
            for path, field in touches:
                scope.require(path, write=write, field=field)
        except SharingError as exc:
            await _abort(context, exc.code, exc.message)
        return scope.namespace

    # --- unary ----------------------------------------------------------------------------------

    async def Delete(self, request: pb.DeleteRequest, context: _Context) -> pb.DeleteResponse:
        key = await self._key(context, "path", request.path, write=True)
        deleted = await _call(context, self._backend.delete(key))
        return pb.DeleteResponse(deleted=deleted)

    async def Exists(self, request: pb.ExistsRequest, context: _Context) -> pb.ExistsResponse:
        key = await self._key(context, "path", request.path, write=False)
        return pb.ExistsResponse(exists=await _call(context, self._backend.stat(key)) is not None)

    async def GetMetadata(self, request: pb.GetMetadataRequest, context: _Context) -> pb.FileMetadata:
        path = await _checked(context, check_path, "path", request.path)
        namespace = await self._namespace(context, [(path, "path")], write=False)
        info = await _call(context, self._backend.stat(_under(namespace, path)))
        if info is None:
            await _abort(context, grpc.StatusCode.NOT_FOUND, f"path: no file {request.path!r}")
        return _metadata(info, namespace)

    async def Copy(self, request: pb.CopyRequest, context: _Context) -> pb.FileMetadata:
        return await self._transfer(request.source, request.destination, context, move=False)

    async def Move(self, request: pb.MoveRequest, context: _Context) -> pb.FileMetadata:
        return await self._transfer(request.source, request.destination, context, move=True)

    async def _transfer(self, source: str, destination: str, context: _Context, *, move: bool) -> pb.FileMetadata:
        source_path = await _checked(context, check_path, "source", source)
        destination_path = await _checked(context, check_path, "destination", destination)
        namespace = await self._namespace(context, [(source_path, "source")], write=move)
        await self._namespace(context, [(destination_path, "destination")], write=True)
        source_key, destination_key = _under(namespace, source_path), _under(namespace, destination_path)
        if source_key == destination_key:
            # Nothing to do, and S3 refuses a copy onto itself: answer what is there.
            info = await _call(context, self._backend.stat(source_key))
            if info is None:
                await _abort(context, grpc.StatusCode.NOT_FOUND, f"source: no file {source!r}")
            return _metadata(info, namespace)
        operation = self._backend.move if move else self._backend.copy
        try:
            info = await _call(context, operation(source_key, destination_key))
        except NotFound:
            await _abort(context, grpc.StatusCode.NOT_FOUND, f"source: no file {source!r}")
        return _metadata(info, namespace)

    async def GetSignedUrl(self, request: pb.GetSignedUrlRequest, context: _Context) -> pb.GetSignedUrlResponse:
        writing = request.operation == pb.SIGNED_URL_OPERATION_WRITE
        key = await self._key(context, "path", request.path, write=writing)
        await self._require(context, "signed-urls", "GetSignedUrl")
        methods = {pb.SIGNED_URL_OPERATION_READ: "GET", pb.SIGNED_URL_OPERATION_WRITE: "PUT"}
        method = methods.get(request.operation)
        if method is None:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, "operation: say READ or WRITE")
        if not 1 <= request.expires_in_seconds <= MAX_SIGNED_URL_SECONDS:
            await _abort(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                f"expires_in_seconds: {request.expires_in_seconds} is not between 1 and {MAX_SIGNED_URL_SECONDS}",
            )
        content_type = await _content_type(context, "content_type", request.content_type)
        signed = await _call(context, self._backend.signed_url(key, method, request.expires_in_seconds, content_type))
        expires_at = Timestamp()
        expires_at.FromDatetime(signed.expires_at)
        return pb.GetSignedUrlResponse(
            url=signed.url, method=signed.method, expires_at=expires_at, headers=signed.headers
        )

    async def Features(self, request: pb.FeaturesRequest, context: _Context) -> pb.FeaturesResponse:
        return pb.FeaturesResponse(capabilities=sorted(self._backend.capabilities))

    # --- streams --------------------------------------------------------------------------------

    async def Upload(self, request_iterator: AsyncIterator[pb.UploadRequest], context: _Context) -> pb.FileMetadata:
        await self._namespace_of(context)  # an unknown caller is refused before it sends any bytes
        first = await anext(aiter(request_iterator), None)
        if first is None or first.WhichOneof("part") != "header":
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, "header: the first message must be the header")
        header = first.header
        path = await _checked(context, check_path, "header.path", header.path)
        namespace = await self._namespace(context, [(path, "header.path")], write=True)
        key = _under(namespace, path)
        content_type = await _content_type(context, "header.content_type", header.content_type)
        await _check_metadata(context, dict(header.metadata))
        if header.HasField("expected_size") and header.expected_size < 0:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, "header.expected_size: must not be negative")
        expected_sha256 = header.expected_sha256.lower()
        if expected_sha256 and not re.fullmatch(r"[0-9a-f]{64}", expected_sha256):
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, "header.expected_sha256: not 64 hex digits")
        expected_size = header.expected_size if header.HasField("expected_size") else None
        chunks = _checked_chunks(request_iterator, expected_size, expected_sha256)
        try:
            info = await _call(
                context, self._backend.write(key, chunks, content_type=content_type, metadata=dict(header.metadata))
            )
        except _BadUpload as exc:
            await _abort(context, grpc.StatusCode.FAILED_PRECONDITION, f"{exc}; nothing was stored")
        except _SecondHeader:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, "header: only the first message may be a header")
        return _metadata(info, namespace)

    async def Download(self, request: pb.DownloadRequest, context: _Context) -> AsyncIterator[pb.DownloadResponse]:
        path = await _checked(context, check_path, "path", request.path)
        namespace = await self._namespace(context, [(path, "path")], write=False)
        key = _under(namespace, path)
        ranged = request.offset != 0 or request.HasField("length")
        if ranged:
            await self._require(context, "range", "Download with an offset or length")
        if request.offset < 0:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, "offset: must not be negative")
        if request.HasField("length") and request.length < 0:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, "length: must not be negative")
        info = await _call(context, self._backend.stat(key))
        if info is None:
            await _abort(context, grpc.StatusCode.NOT_FOUND, f"path: no file {request.path!r}")
        if request.offset > info.size:
            await _abort(
                context, grpc.StatusCode.OUT_OF_RANGE, f"offset: {request.offset} is past the end ({info.size} bytes)"
            )
        length = request.length if request.HasField("length") else None
        try:
            info, chunks = await _call(context, self._backend.read(key, request.offset, length))
        except NotFound:
            await _abort(context, grpc.StatusCode.NOT_FOUND, f"path: no file {request.path!r}")
        first = True
        try:
            async for chunk in chunks:
                # Backends pick their own read sizes; gRPC messages stay well under the 4 MiB default limit.
                for start in range(0, len(chunk), DOWNLOAD_CHUNK):
                    piece = chunk[start : start + DOWNLOAD_CHUNK]
                    yield pb.DownloadResponse(metadata=_metadata(info, namespace) if first else None, chunk=piece)
                    first = False
        except BackendUnavailable as exc:
            await _abort(context, grpc.StatusCode.UNAVAILABLE, f"the file backend is unavailable: {exc}")
        except Exception:
            logger.exception("files backend failed during a download")
            await _abort(
                context, grpc.StatusCode.INTERNAL, "the file backend failed unexpectedly (see the plugin's log)"
            )
        finally:
            await _close(chunks)
        if first:  # an empty file (or range): the metadata still comes
            yield pb.DownloadResponse(metadata=_metadata(info, namespace))

    async def List(self, request: pb.ListRequest, context: _Context) -> AsyncIterator[pb.ListResponse]:
        prefix = await _checked(context, check_prefix, "prefix", request.prefix)
        namespace = await self._namespace(context, [(prefix, "prefix")], write=False)
        if request.delimiter not in ("", "/"):
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, 'delimiter: only "" and "/" are supported')
        if not 0 <= request.page_size <= MAX_PAGE_SIZE:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, f"page_size: 0 to {MAX_PAGE_SIZE}")
        page_size = request.page_size or MAX_PAGE_SIZE
        page = await _call(
            context, self._backend.list(_under(namespace, prefix), request.delimiter, page_size, request.page_token)
        )
        files = [_metadata(info, namespace) for info in page.objects]
        prefixes = [_strip(namespace, p) for p in page.common_prefixes]
        batches = max(1, -(-(len(files) + len(prefixes)) // LIST_BATCH))
        for index in range(batches):
            last = index == batches - 1
            yield pb.ListResponse(
                files=files[index * LIST_BATCH : (index + 1) * LIST_BATCH],
                common_prefixes=prefixes[index * LIST_BATCH : (index + 1) * LIST_BATCH],
                next_page_token=page.next_token if last else "",
            )

    # --- helpers --------------------------------------------------------------------------------

    async def _key(self, context: _Context, field: str, path: str, *, write: bool) -> str:
        checked = await _checked(context, check_path, field, path)
        return _under(await self._namespace(context, [(checked, field)], write=write), checked)

    async def _require(self, context: _Context, capability: str, what: str) -> None:
        if capability not in self._backend.capabilities:
            await _abort(
                context,
                grpc.StatusCode.UNIMPLEMENTED,
                f"{what} needs the {capability!r} capability, which this provider does not have "
                f"(it has: {', '.join(sorted(self._backend.capabilities)) or 'none'})",
            )


class _SecondHeader(Exception):
    pass


async def _checked_chunks(
    requests: AsyncIterator[pb.UploadRequest], expected_size: int | None, expected_sha256: str
) -> AsyncIterator[bytes]:
    # Raising here, before the iterator ends, is what makes the backend throw the upload away.
    digest = hashlib.sha256() if expected_sha256 else None
    size = 0
    async for request in requests:
        if request.WhichOneof("part") == "header":
            raise _SecondHeader()
        size += len(request.chunk)
        if expected_size is not None and size > expected_size:
            raise _BadUpload(f"header.expected_size: more than the {expected_size} bytes announced")
        if digest is not None:
            digest.update(request.chunk)
        if request.chunk:
            yield request.chunk
    if expected_size is not None and size != expected_size:
        raise _BadUpload(f"header.expected_size: {size} bytes arrived, {expected_size} were announced")
    if digest is not None and digest.hexdigest() != expected_sha256:
        raise _BadUpload(f"header.expected_sha256: the bytes hash to {digest.hexdigest()}")


async def _call(context: _Context, operation: Awaitable[Any]) -> Any:
    """Await a backend operation, ending the call with the status its error maps to."""
    try:
        return await operation
    except (NotFound, _BadUpload, _SecondHeader):
        raise  # the caller knows which field to name
    except BackendUnavailable as exc:
        await _abort(context, grpc.StatusCode.UNAVAILABLE, f"the file backend is unavailable: {exc}")
    except Unsupported as exc:
        await _abort(context, grpc.StatusCode.UNIMPLEMENTED, str(exc))
    except Conflict as exc:
        await _abort(context, grpc.StatusCode.FAILED_PRECONDITION, str(exc))
    except BadRequest as exc:
        await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
    except grpc.aio.AbortError:
        raise
    except Exception:
        logger.exception("files backend failed")
        await _abort(context, grpc.StatusCode.INTERNAL, "the file backend failed unexpectedly (see the plugin's log)")


async def _checked(context: _Context, check: Callable[[str, str], str], field: str, value: str) -> str:
    try:
        return check(field, value)
    except InvalidPath as exc:
        await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))


async def _content_type(context: _Context, field: str, value: str) -> str:
    if not value:
        return DEFAULT_CONTENT_TYPE
    if not _CONTENT_TYPE.fullmatch(value):
        await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, f"{field}: not a valid media type")
    return value


async def _check_metadata(context: _Context, metadata: dict[str, str]) -> None:
    for key, value in metadata.items():
        if not _METADATA_KEY.fullmatch(key):
            await _abort(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                f"header.metadata[{key!r}]: keys are 1-64 of a-z, 0-9, - and _ (starting with a letter or digit)",
            )
        if not _METADATA_VALUE.fullmatch(value):
            await _abort(
                context, grpc.StatusCode.INVALID_ARGUMENT, f"header.metadata[{key!r}]: values are printable ASCII"
            )
    if sum(len(k) + len(v) for k, v in metadata.items()) > MAX_METADATA_BYTES:
        await _abort(
            context, grpc.StatusCode.INVALID_ARGUMENT, f"header.metadata: more than {MAX_METADATA_BYTES} bytes"
        )


async def _abort(context: _Context, code: grpc.StatusCode, message: str) -> NoReturn:
    await context.abort(code, message)
    raise AssertionError("context.abort returned")  # pragma: no cover: abort always raises


async def _close(chunks: AsyncIterator[bytes]) -> None:
    close = getattr(chunks, "aclose", None)
    if close is not None:
        await close()


def _under(namespace: str, path: str) -> str:
    return f"{namespace}/{path}"


def _strip(namespace: str, key: str) -> str:
    return key.removeprefix(f"{namespace}/")


def _metadata(info: ObjectInfo, namespace: str) -> pb.FileMetadata:
    modified = Timestamp()
    modified.FromDatetime(info.last_modified)
    return pb.FileMetadata(
        path=_strip(namespace, info.key),
        size=info.size,
        content_type=info.content_type,
        etag=info.etag,
        last_modified=modified,
        metadata=info.metadata,
    )
