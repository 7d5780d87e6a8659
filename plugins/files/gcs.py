"""files-gcs: objects in a Google Cloud Storage bucket through gcloud-aio-storage.

An upload that fits one part (`part_size`, 8 MiB by default) is one request; a longer stream becomes a
resumable upload whose parts are sent as they fill, each while the next one arrives (GCS's own chunked
protocol: Content-Range `bytes a-b/*`, the total only on the last part), so memory stays at two parts
per upload and the object exists only once the last part is accepted; a cut stream cancels the session.

With `api_root` the plugin talks to an emulator (no auth); signed URLs then carry the emulator's
address instead of storage.googleapis.com. Signed URLs need a service account key (`service_file`):
without one, "signed-urls" is left out of the capabilities and GetSignedUrl answers UNIMPLEMENTED.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast
from urllib.parse import quote

import aiohttp
from gcloud.aio.storage import Blob, Bucket, Storage

from plugins.files.backend import (
    BackendUnavailable,
    BadRequest,
    ListPage,
    NotFound,
    ObjectInfo,
    SignedUrl,
    Unsupported,
)
from plugins.files.parts import parts, send_overlapped

__all__ = ["GcsBackend", "GcsSettings"]

GOOGLE_API = "https://storage.googleapis.com"
PART_MULTIPLE = 256 * 1024  # every resumable part but the last is a multiple of this
READ_CHUNK = 1024 * 1024
SEND_PIECE = 1024 * 1024


@dataclass(frozen=True, slots=True)
class GcsSettings:
    bucket: str
    api_root: str | None = None  # an emulator's URL; None: Google's API
    service_file: Path | None = None  # a service account key: auth, and signing URLs
    create_bucket: bool = False
    project: str = "upf"
    part_size: int = 8 * 1024 * 1024
    connect_timeout: float = 3.0
    read_timeout: float = 30.0


class GcsBackend:
    def __init__(self, settings: GcsSettings) -> None:
        if settings.part_size <= 0 or settings.part_size % PART_MULTIPLE:
            raise ValueError("the GCS part size must be a positive multiple of 256 KiB")
        self._settings = settings
        self._bucket = settings.bucket
        self._api_root = (settings.api_root or GOOGLE_API).rstrip("/")
        self._signing = settings.service_file is not None
        self.capabilities = frozenset(
            {"range", "user-metadata", "server-side-copy"} | ({"signed-urls"} if self._signing else set())
        )
        # The whole-call limit stays off: a download of many GiB takes as long as it takes; a stalled
        # connection is caught by the read timeout instead.
        self._timeout = aiohttp.ClientTimeout(
            total=None, connect=settings.connect_timeout, sock_read=settings.read_timeout
        )
        self._http: aiohttp.ClientSession | None = None
        self._storage: Storage | None = None

    async def open(self) -> None:
        self._http = aiohttp.ClientSession(timeout=self._timeout)
        service_file = str(self._settings.service_file) if self._settings.service_file else None
        # The library's stubs name requests' Session (its gcloud-rest twin); at run time it is aiohttp's.
        session = cast(Any, self._http)
        self._storage = Storage(service_file=service_file, session=session, api_root=self._settings.api_root)
        if self._settings.create_bucket:
            await self._ensure_bucket()

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()

    @property
    def storage(self) -> Storage:
        if self._storage is None:
            raise RuntimeError("GcsBackend.open() was not called")
        return self._storage

    @property
    def http(self) -> aiohttp.ClientSession:
        if self._http is None:
            raise RuntimeError("GcsBackend.open() was not called")
        return self._http

    async def _headers(self) -> dict[str, str]:
        if self._settings.api_root:  # an emulator takes no token
            return {}
        with _errors():
            token = await self.storage.token.get()
        return {"Authorization": f"Bearer {token}"}

    async def _ensure_bucket(self) -> None:
        headers = await self._headers()
        with _errors():
            async with self.http.get(f"{self._api_root}/storage/v1/b/{self._bucket}", headers=headers) as reply:
                if reply.status == 200:
                    return
            url = f"{self._api_root}/storage/v1/b?project={quote(self._settings.project)}"
            async with self.http.post(url, json={"name": self._bucket}, headers=headers) as reply:
                if reply.status not in (200, 409):
                    reply.raise_for_status()

    # --- Backend ----------------------------------------------------------------------------------

    async def write(
        self, key: str, chunks: AsyncIterator[bytes], *, content_type: str, metadata: dict[str, str]
    ) -> ObjectInfo:
        stream = parts(chunks, self._settings.part_size)
        first, last = await anext(stream)
        if last:
            with _errors():
                reply = await self.storage.upload(
                    self._bucket,
                    key,
                    first,
                    content_type=content_type,
                    metadata={"metadata": metadata} if metadata else None,
                    force_resumable_upload=False,
                    timeout=cast(int, self._timeout),
                )
            return self._info(reply)
        session = await self._start_resumable(key, content_type, metadata)
        placed = _placed(first, stream)
        del first  # held by `placed` alone from here, and dropped there once it is on its way
        done = False
        try:
            # GCS takes the parts of a session one after the other; the next one arrives from the
            # client meanwhile.
            replies = await send_overlapped(placed, lambda part: self._send_part(session, *part))
            done = True
        finally:
            if not done:
                await asyncio.shield(self._cancel(session))
        return self._info(replies[-1])

    async def _start_resumable(self, key: str, content_type: str, metadata: dict[str, str]) -> str:
        url = f"{self._api_root}/upload/storage/v1/b/{self._bucket}/o?uploadType=resumable"
        body = {"name": key, "contentType": content_type, "metadata": metadata}
        headers = {**await self._headers(), "X-Upload-Content-Type": content_type}
        with _errors():
            async with self.http.post(url, json=body, headers=headers) as reply:
                reply.raise_for_status()
                return reply.headers["Location"]

    async def _send_part(self, session: str, start: int, body: bytes, total: int | None) -> dict[str, Any]:
        span = f"bytes {start}-{start + len(body) - 1}/{'*' if total is None else total}"
        headers = {**await self._headers(), "Content-Range": span, "Content-Length": str(len(body))}
        with _errors():
            async with self.http.put(session, data=_pieces(body), headers=headers, allow_redirects=False) as reply:
                if reply.status == 308:  # "resume incomplete": the part is stored, more may come
                    return {}
                reply.raise_for_status()
                answer: dict[str, Any] = await reply.json(content_type=None)
                return answer

    async def _cancel(self, session: str) -> None:
        with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError, OSError):
            async with self.http.delete(session, headers=await self._headers()):
                pass

    async def read(self, key: str, offset: int, length: int | None) -> tuple[ObjectInfo, AsyncIterator[bytes]]:
        info = await self.stat(key)
        if info is None:
            raise NotFound(key)
        end = info.size if length is None else min(info.size, offset + length)
        if end <= offset:
            return info, _empty()
        url = f"{self._api_root}/storage/v1/b/{self._bucket}/o/{quote(key, safe='')}"
        headers = {**await self._headers(), "Range": f"bytes={offset}-{end - 1}"}
        # The generation read is pinned, so a concurrent overwrite cannot mix two versions' bytes.
        params = {"alt": "media", "generation": info.etag.split("/")[0]}
        with _errors():
            reply = await self.http.get(url, headers=headers, params=params, auto_decompress=False)
        if reply.status == 404:
            reply.release()
            raise NotFound(key)
        if reply.status >= 400:
            reply.release()
            raise BackendUnavailable(f"GCS answered {reply.status} to a download")
        return info, _body(reply)

    async def stat(self, key: str) -> ObjectInfo | None:
        with _errors():
            try:
                data = await self.storage.download_metadata(self._bucket, key, timeout=cast(int, self._timeout))
            except aiohttp.ClientResponseError as exc:
                if exc.status == 404:
                    return None
                raise
        return self._info(data)

    async def delete(self, key: str) -> bool:
        with _errors():
            try:
                await self.storage.delete(self._bucket, key, timeout=cast(int, self._timeout))
            except aiohttp.ClientResponseError as exc:
                if exc.status == 404:
                    return False
                raise
        return True

    async def copy(self, source: str, destination: str) -> ObjectInfo:
        with _errors():
            try:
                # rewriteTo, repeated as GCS asks: copies of any size without the bytes passing here.
                await self.storage.copy(self._bucket, source, self._bucket, new_name=destination)
            except aiohttp.ClientResponseError as exc:
                if exc.status == 404:
                    raise NotFound(source) from None
                raise
        info = await self.stat(destination)
        if info is None:
            raise BackendUnavailable(f"the copy {destination!r} is missing right after it was made")
        return info

    async def move(self, source: str, destination: str) -> ObjectInfo:
        info = await self.copy(source, destination)
        if source != destination:
            await self.delete(source)
        return info

    async def list(self, prefix: str, delimiter: str, page_size: int, page_token: str) -> ListPage:
        params = {"prefix": prefix, "maxResults": str(page_size)}
        if delimiter:
            params["delimiter"] = delimiter
        if page_token:
            params["pageToken"] = page_token
        with _errors():
            try:
                data = await self.storage.list_objects(self._bucket, params=params)
            except aiohttp.ClientResponseError as exc:
                if exc.status == 400 and page_token:
                    raise BadRequest("page_token: not a token this provider gave") from None
                raise
        if "error" in data:
            raise BackendUnavailable(f"GCS answered an error to a listing: {data['error']}")
        objects = [self._info(item) for item in data.get("items", [])]
        return ListPage(objects, list(data.get("prefixes", [])), str(data.get("nextPageToken", "")))

    async def signed_url(self, key: str, method: str, expires_in: int, content_type: str) -> SignedUrl:
        if not self._signing:
            raise Unsupported("signed URLs need a service account key (--service-file)")
        headers = {"Content-Type": content_type} if method == "PUT" else {}
        blob = Blob(Bucket(self.storage, self._bucket), key, {"size": 0})  # the signature needs no metadata
        with _errors():
            url = await blob.get_signed_url(
                expires_in, headers=dict(headers), http_method=method, session=cast(Any, self.http)
            )
        if self._settings.api_root:
            # The library signs for Google's host; an emulator is reached at its own address.
            url = url.replace(GOOGLE_API, self._api_root, 1)
        return SignedUrl(url, method, datetime.now(UTC) + timedelta(seconds=expires_in), headers)

    def _info(self, data: dict[str, Any]) -> ObjectInfo:
        updated = str(data.get("updated") or data.get("timeCreated") or "1970-01-01T00:00:00Z")
        # The generation changes on every write: with the metageneration it is GCS's version of an etag,
        # and it lets a read pin the version it started on.
        etag = f"{data.get('generation', '0')}/{data.get('metageneration', '1')}"
        return ObjectInfo(
            key=str(data["name"]),
            size=int(data.get("size", 0)),
            content_type=str(data.get("contentType") or "application/octet-stream"),
            etag=etag,
            last_modified=datetime.fromisoformat(updated.replace("Z", "+00:00")),
            metadata={str(k): str(v) for k, v in (data.get("metadata") or {}).items()},
        )


async def _placed(
    first: bytes, rest: AsyncIterator[tuple[bytes, bool]]
) -> AsyncIterator[tuple[int, bytes, int | None]]:
    """(offset, part, the total on the last part) for each part of a resumable upload."""
    start, body, last = 0, first, False
    del first
    while not last:
        size = len(body)
        yield start, body, None
        del body  # on its way: the send holds it
        start += size
        body, last = await anext(rest)
    yield start, body, start + len(body)


async def _pieces(body: bytes) -> AsyncIterator[memoryview]:
    # aiohttp sends a bytes body in one write, which it warns about above 1 MiB, and copies a
    # BytesIO (getbuffer, then reads of 256 KiB); views of the part are sent as they are.
    view = memoryview(body)
    for start in range(0, len(view), SEND_PIECE):
        yield view[start : start + SEND_PIECE]


async def _empty() -> AsyncIterator[bytes]:
    return
    yield b""  # pragma: no cover: makes this an async generator


async def _body(reply: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
    try:
        with _errors():
            async for chunk in reply.content.iter_chunked(READ_CHUNK):
                yield chunk
    finally:
        reply.release()


@contextlib.contextmanager
def _errors() -> Iterator[None]:
    """Connection failures and server errors mean the backend is down: UNAVAILABLE, not INTERNAL."""
    try:
        yield
    except aiohttp.ClientResponseError as exc:
        if exc.status >= 500 or exc.status in (401, 403, 429):
            raise BackendUnavailable(f"GCS answered {exc.status} {exc.message}") from None
        raise
    except (TimeoutError, aiohttp.ClientError, OSError, json.JSONDecodeError) as exc:
        raise BackendUnavailable(f"GCS cannot be reached: {type(exc).__name__}: {exc}") from None
