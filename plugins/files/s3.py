"""files-s3: objects in an S3 bucket through aiobotocore (the async botocore that aioboto3 wraps).

The same backend is files-minio with an endpoint: any S3 API (MinIO, Ceph, moto's server) is reached
with path-style addressing. An upload that fits one part (`part_size`, 8 MiB by default) is one
PutObject; a longer stream becomes a multipart upload whose parts are sent as they fill, each while
the next one arrives, so a plugin holds two parts per upload however large the file, and the object
appears only on CompleteMultipartUpload; a stream cut off aborts the upload, leaving nothing visible.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import aiohttp
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import BotoCoreError, ClientError

from plugins.files.backend import BackendUnavailable, BadRequest, ListPage, NotFound, ObjectInfo, SignedUrl
from plugins.files.parts import parts, send_overlapped

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client
    from types_aiobotocore_s3.type_defs import CompletedPartTypeDef

__all__ = ["S3Backend", "S3Settings"]

MIN_PART_SIZE = 5 * 1024 * 1024  # S3's lower limit for every part but the last
READ_CHUNK = 1024 * 1024
# Parts on their way to S3 while the next one arrives. Two showed no gain against moto (which is CPU
# bound on this machine) and hold one more part; against a distant S3 they may.
PARTS_IN_FLIGHT = 1


@dataclass(frozen=True, slots=True)
class S3Settings:
    bucket: str
    endpoint_url: str | None = None  # None: AWS
    region: str = "us-east-1"
    create_bucket: bool = False
    part_size: int = 8 * 1024 * 1024
    # Only where the usual AWS sources (environment, ~/.aws, roles) are not wanted, e.g. tests.
    access_key_id: str | None = None
    secret_access_key: str | None = None
    connect_timeout: float = 3.0
    read_timeout: float = 30.0


class S3Backend:
    capabilities = frozenset({"range", "signed-urls", "user-metadata", "server-side-copy"})

    def __init__(self, settings: S3Settings) -> None:
        if not MIN_PART_SIZE <= settings.part_size <= 512 * 1024 * 1024:
            raise ValueError("the S3 part size must be between 5 MiB and 512 MiB")
        self._settings = settings
        self._bucket = settings.bucket
        self._stack = AsyncExitStack()
        self._client: S3Client | None = None

    async def open(self) -> None:
        """Open the client (in the running event loop) and, if asked, create the bucket."""
        settings = self._settings
        config = AioConfig(
            connect_timeout=settings.connect_timeout,
            read_timeout=settings.read_timeout,
            # A few quick retries ride over a dropped connection; a backend that is down answers
            # UNAVAILABLE within seconds rather than after botocore's long default schedule.
            retries={"max_attempts": 3, "mode": "standard"},
            s3={"addressing_style": "path" if settings.endpoint_url else "auto"},
        )
        self._client = await self._stack.enter_async_context(
            get_session().create_client(
                "s3",
                region_name=settings.region,
                endpoint_url=settings.endpoint_url,
                aws_access_key_id=settings.access_key_id,
                aws_secret_access_key=settings.secret_access_key,
                config=config,
            )
        )
        if settings.create_bucket:
            with _errors():
                try:
                    await self._client.head_bucket(Bucket=self._bucket)
                except ClientError as exc:
                    if _status(exc) != 404:
                        raise
                    await self._client.create_bucket(Bucket=self._bucket)

    @property
    def client(self) -> S3Client:
        if self._client is None:
            raise RuntimeError("S3Backend.open() was not called")
        return self._client

    async def close(self) -> None:
        await self._stack.aclose()

    # --- Backend ----------------------------------------------------------------------------------

    async def write(
        self, key: str, chunks: AsyncIterator[bytes], *, content_type: str, metadata: dict[str, str]
    ) -> ObjectInfo:
        stream = parts(chunks, self._settings.part_size)
        first, last = await anext(stream)
        if last:
            with _errors():
                await self.client.put_object(
                    Bucket=self._bucket, Key=key, Body=first, ContentType=content_type, Metadata=metadata
                )
        else:
            upload_id = await self._start_multipart(key, content_type, metadata)
            numbered = _numbered(first, stream)
            del first  # held by `numbered` alone from here, and dropped there once it is on its way
            await self._send_parts(key, upload_id, numbered)
        info = await self.stat(key)
        if info is None:
            raise BackendUnavailable(f"the object {key!r} is missing right after it was written")
        return info

    async def _send_parts(self, key: str, upload_id: str, numbered: AsyncIterator[tuple[int, bytes]]) -> None:
        completed = False
        try:
            # The next part arrives from the client while the previous ones go to S3.
            done = await send_overlapped(
                numbered, lambda part: self._upload_part(key, upload_id, *part), in_flight=PARTS_IN_FLIGHT
            )
            with _errors():
                await self.client.complete_multipart_upload(
                    Bucket=self._bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": done}
                )
            completed = True
        finally:
            if not completed:
                # The parts stored so far cost money and are never visible; drop them even when this
                # task is being cancelled (a client that went away).
                await asyncio.shield(self._abort(key, upload_id))

    async def _start_multipart(self, key: str, content_type: str, metadata: dict[str, str]) -> str:
        create = asyncio.ensure_future(
            self.client.create_multipart_upload(
                Bucket=self._bucket, Key=key, ContentType=content_type, Metadata=metadata
            )
        )
        try:
            with _errors():
                created = await asyncio.shield(create)
        except asyncio.CancelledError:
            # Cut off while S3 was creating the upload: it may exist already, and nobody else knows its
            # id. Wait for the answer and abort it, or it would keep its parts until a lifecycle rule.
            with contextlib.suppress(Exception):
                await self._abort(key, (await create)["UploadId"])
            raise
        return created["UploadId"]

    async def _upload_part(self, key: str, upload_id: str, number: int, body: bytes) -> CompletedPartTypeDef:
        with _errors():
            reply = await self.client.upload_part(
                Bucket=self._bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=body
            )
        return {"ETag": reply["ETag"], "PartNumber": number}

    async def _abort(self, key: str, upload_id: str) -> None:
        with contextlib.suppress(ClientError, BotoCoreError, aiohttp.ClientError, OSError):
            await self.client.abort_multipart_upload(Bucket=self._bucket, Key=key, UploadId=upload_id)

    async def read(self, key: str, offset: int, length: int | None) -> tuple[ObjectInfo, AsyncIterator[bytes]]:
        info = await self.stat(key)
        if info is None:
            raise NotFound(key)
        end = info.size if length is None else min(info.size, offset + length)
        if end <= offset:
            return info, _empty()
        with _errors():
            try:
                reply = await self.client.get_object(Bucket=self._bucket, Key=key, Range=f"bytes={offset}-{end - 1}")
            except ClientError as exc:
                if _status(exc) == 404:
                    raise NotFound(key) from None
                raise
        return info, _body(reply["Body"])

    async def stat(self, key: str) -> ObjectInfo | None:
        with _errors():
            try:
                reply = await self.client.head_object(Bucket=self._bucket, Key=key)
            except ClientError as exc:
                if _status(exc) == 404:
                    return None
                raise
        return ObjectInfo(
            key=key,
            size=reply["ContentLength"],
            content_type=reply.get("ContentType", "application/octet-stream"),
            etag=reply["ETag"].strip('"'),
            last_modified=reply["LastModified"],
            metadata=dict(reply.get("Metadata", {})),
        )

    async def delete(self, key: str) -> bool:
        # DeleteObject answers the same whether or not the key existed; the contract says which.
        if await self.stat(key) is None:
            return False
        with _errors():
            await self.client.delete_object(Bucket=self._bucket, Key=key)
        return True

    async def copy(self, source: str, destination: str) -> ObjectInfo:
        if await self.stat(source) is None:
            raise NotFound(source)
        with _errors():
            # Single-request copy: up to 5 GiB, S3's limit for CopyObject (larger needs UploadPartCopy).
            await self.client.copy_object(
                Bucket=self._bucket,
                Key=destination,
                CopySource={"Bucket": self._bucket, "Key": source},
                MetadataDirective="COPY",
            )
        info = await self.stat(destination)
        if info is None:
            raise BackendUnavailable(f"the copy {destination!r} is missing right after it was made")
        return info

    async def move(self, source: str, destination: str) -> ObjectInfo:
        # S3 has no rename: a copy, then the source goes.
        info = await self.copy(source, destination)
        if source != destination:
            with _errors():
                await self.client.delete_object(Bucket=self._bucket, Key=source)
        return info

    async def list(self, prefix: str, delimiter: str, page_size: int, page_token: str) -> ListPage:
        arguments: dict[str, Any] = {"Bucket": self._bucket, "Prefix": prefix, "MaxKeys": page_size}
        if delimiter:
            arguments["Delimiter"] = delimiter
        if page_token:
            arguments["ContinuationToken"] = page_token
        with _errors():
            try:
                reply = await self.client.list_objects_v2(**arguments)
            except ClientError as exc:
                if _code(exc) == "InvalidArgument" and page_token:
                    raise BadRequest("page_token: not a token this provider gave") from None
                raise
        objects = [
            # A listing has no content type or user metadata (GetMetadata has them).
            ObjectInfo(item["Key"], item["Size"], "", item["ETag"].strip('"'), item["LastModified"], {})
            for item in reply.get("Contents", [])
        ]
        prefixes = [item["Prefix"] for item in reply.get("CommonPrefixes", [])]
        token = reply.get("NextContinuationToken", "") if reply.get("IsTruncated") else ""
        return ListPage(objects, prefixes, token)

    async def signed_url(self, key: str, method: str, expires_in: int, content_type: str) -> SignedUrl:
        params: dict[str, Any] = {"Bucket": self._bucket, "Key": key}
        headers: dict[str, str] = {}
        if method == "PUT":
            params["ContentType"] = content_type
            headers["Content-Type"] = content_type
        operation = "put_object" if method == "PUT" else "get_object"
        with _errors():
            url = await self.client.generate_presigned_url(operation, Params=params, ExpiresIn=expires_in)
        return SignedUrl(url, method, datetime.now(UTC) + timedelta(seconds=expires_in), headers)


async def _numbered(first: bytes, rest: AsyncIterator[tuple[bytes, bool]]) -> AsyncIterator[tuple[int, bytes]]:
    yield 1, first
    del first
    number = 1
    async for body, _last in rest:
        number += 1
        yield number, body


async def _empty() -> AsyncIterator[bytes]:
    return
    yield b""  # pragma: no cover: makes this an async generator


async def _body(body: Any) -> AsyncIterator[bytes]:
    try:
        with _errors():
            async for chunk in body.iter_chunks(READ_CHUNK):
                yield chunk
    finally:
        body.close()


@contextlib.contextmanager
def _errors() -> Iterator[None]:
    """Connection failures and server errors mean the backend is down: UNAVAILABLE, not INTERNAL."""
    try:
        yield
    except ClientError as exc:
        status = _status(exc)
        if status >= 500 or _code(exc) in ("NoSuchBucket", "SlowDown", "AccessDenied", "InvalidAccessKeyId"):
            raise BackendUnavailable(f"S3 answered {_code(exc)} ({status})") from None
        raise
    except (TimeoutError, BotoCoreError, aiohttp.ClientError, OSError) as exc:
        raise BackendUnavailable(f"S3 cannot be reached: {type(exc).__name__}: {exc}") from None


def _status(exc: ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))
