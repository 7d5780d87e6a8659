"""The contract between the IFiles servicer and a storage backend (a directory, S3, GCS).

Backends see full keys ("<namespace>/<path>", already checked by paths.py) and raise the errors
below; the servicer turns them into gRPC status codes. Every backend must make `write` atomic: the
object becomes visible only when the chunk iterator has ended normally, and an iterator that raises
(the client went away, a checksum did not match) leaves nothing behind.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

__all__ = [
    "CAPABILITIES",
    "Backend",
    "BackendUnavailable",
    "BadRequest",
    "Conflict",
    "ListPage",
    "NotFound",
    "ObjectInfo",
    "SignedUrl",
    "Unsupported",
]

# The optional parts of IFiles; a backend has a subset (Features answers it, the manifest lists it).
CAPABILITIES = (
    "range",  # Download with an offset or length
    "signed-urls",  # GetSignedUrl
    "user-metadata",  # metadata on Upload kept and returned
    "server-side-copy",  # Copy and Move without the bytes passing through the plugin
)


class NotFound(Exception):
    """No object under that key."""


class BackendUnavailable(Exception):
    """The backend cannot be reached or answered with a server error; the message says which."""


class BadRequest(Exception):
    """A request field the backend cannot use (e.g. a page token it did not give); the message names it."""


class Conflict(Exception):
    """The key cannot be used as asked (files-local: a file where a folder is needed, or the reverse)."""


class Unsupported(Exception):
    """The backend lacks the capability (the message says which and why)."""


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    key: str
    size: int
    content_type: str
    etag: str
    last_modified: datetime
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ListPage:
    objects: list[ObjectInfo]
    common_prefixes: list[str]  # full keys ending with the delimiter
    next_token: str  # "" at the end


@dataclass(frozen=True, slots=True)
class SignedUrl:
    url: str
    method: str
    expires_at: datetime
    headers: dict[str, str]


class Backend(Protocol):
    capabilities: frozenset[str]

    async def write(
        self, key: str, chunks: AsyncIterator[bytes], *, content_type: str, metadata: dict[str, str]
    ) -> ObjectInfo: ...

    async def read(self, key: str, offset: int, length: int | None) -> tuple[ObjectInfo, AsyncIterator[bytes]]:
        """The object's info and its bytes from `offset` (`length` of them, or to the end); NotFound.
        `offset` is at most the size (the servicer checks it against `stat` first)."""
        ...

    async def stat(self, key: str) -> ObjectInfo | None: ...

    async def delete(self, key: str) -> bool: ...

    async def copy(self, source: str, destination: str) -> ObjectInfo: ...

    async def move(self, source: str, destination: str) -> ObjectInfo: ...

    async def list(self, prefix: str, delimiter: str, page_size: int, page_token: str) -> ListPage: ...

    async def signed_url(self, key: str, method: str, expires_in: int, content_type: str) -> SignedUrl: ...

    async def close(self) -> None: ...
