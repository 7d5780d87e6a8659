"""files-local: objects as plain files under a directory, the embedded default.

Layout under the root: `objects/<namespace>/<path>` holds the bytes, `meta/<namespace>/<path>.json`
the content type and user metadata, `tmp/` the uploads in progress. A write goes to a file in tmp/
(same file system) and is renamed into place only when every byte has arrived, so a reader sees the
old file or the new one, never a part; a cut upload's temp file is removed. The meta file records the
data file's inode (a rename keeps it): a meta file that does not match the data beside it (a crash
between the two renames) is ignored rather than trusted.

Listing walks the folders under the prefix and sorts the names on every page: right for the embedded
default, not for millions of files (S3 or GCS then). A path that is a file cannot also be a folder
("a" and "a/b"), which object stores allow: such a write answers FAILED_PRECONDITION.

The root's subfolders are made at start only: if the directory disappears later (an unmounted volume)
calls answer UNAVAILABLE instead of writing into the bare mount point, and work again once it is back.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import errno
import json
import os
import shutil
import stat
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from plugins.files.backend import (
    BackendUnavailable,
    BadRequest,
    Conflict,
    ListPage,
    NotFound,
    ObjectInfo,
    SignedUrl,
    Unsupported,
)
from plugins.files.signing import UrlSigner

__all__ = ["LocalBackend"]

READ_CHUNK = 1024 * 1024
_T = TypeVar("_T")
_Entries = list[tuple[str, bool]]  # (key or common prefix, is a prefix)
_DEFAULT_TYPE = "application/octet-stream"


class LocalBackend:
    def __init__(self, root: Path, *, signer: UrlSigner | None, clock: Callable[[], float]) -> None:
        self.root = root
        self._objects = root / "objects"
        self._meta = root / "meta"
        self._tmp = root / "tmp"
        self._signer = signer
        self._clock = clock
        base = {"range", "user-metadata", "server-side-copy"}
        self.capabilities = frozenset(base | ({"signed-urls"} if signer is not None else set()))

    def create(self) -> None:
        for folder in (self._objects, self._meta, self._tmp):
            folder.mkdir(parents=True, exist_ok=True)
        # Temp files left by a crash are parts of uploads that never finished.
        for stale in self._tmp.iterdir():
            with contextlib.suppress(OSError):
                stale.unlink()

    # --- Backend ----------------------------------------------------------------------------------

    async def write(
        self, key: str, chunks: AsyncIterator[bytes], *, content_type: str, metadata: dict[str, str]
    ) -> ObjectInfo:
        self._require_root()
        temp = self._tmp / uuid.uuid4().hex
        try:
            handle = await _io(open, temp, "xb")
            try:
                async for chunk in chunks:
                    await _io(handle.write, chunk)
                await _io(_flush, handle)
            finally:
                handle.close()
            return await _io(self._commit, temp, key, content_type, metadata)
        finally:
            # Nothing to remove after a commit; after a cut stream or an error this drops the part.
            with contextlib.suppress(OSError):
                temp.unlink()

    async def read(self, key: str, offset: int, length: int | None) -> tuple[ObjectInfo, AsyncIterator[bytes]]:
        self._require_root()
        try:
            handle = await _io(open, self._objects / key, "rb")
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise NotFound(key) from None
        try:
            info = await _io(self._info, key, os.fstat(handle.fileno()))
        except BaseException:
            handle.close()
            raise
        return info, _chunks(handle, offset, length)

    async def stat(self, key: str) -> ObjectInfo | None:
        self._require_root()
        try:
            status = await _io(os.stat, self._objects / key)
        except (FileNotFoundError, NotADirectoryError):
            return None
        if not _is_file(status):
            return None
        return await _io(self._info, key, status)

    async def delete(self, key: str) -> bool:
        self._require_root()
        return await _io(self._delete, key)

    async def copy(self, source: str, destination: str) -> ObjectInfo:
        self._require_root()
        return await _io(self._copy, source, destination)

    async def move(self, source: str, destination: str) -> ObjectInfo:
        self._require_root()
        return await _io(self._move, source, destination)

    async def list(self, prefix: str, delimiter: str, page_size: int, page_token: str) -> ListPage:
        self._require_root()
        after = _decode_token(page_token)
        entries = await _io(self._entries, prefix, delimiter)
        chosen = [entry for entry in entries if entry[0] > after][: page_size + 1]
        more = len(chosen) > page_size
        chosen = chosen[:page_size]
        objects: list[ObjectInfo] = []
        prefixes: list[str] = []
        for name, is_prefix in chosen:
            if is_prefix:
                prefixes.append(name)
                continue
            info = await self.stat(name)
            if info is not None:  # deleted since the walk
                objects.append(info)
        next_token = _encode_token(chosen[-1][0]) if more else ""
        return ListPage(objects, prefixes, next_token)

    async def signed_url(self, key: str, method: str, expires_in: int, content_type: str) -> SignedUrl:
        if self._signer is None:
            raise Unsupported("signed URLs need files-local's HTTP listener (--http-port)")
        expires_at = int(self._clock()) + expires_in
        url = self._signer.sign(method, key, expires_at=expires_at, content_type=content_type)
        headers = {"Content-Type": content_type} if method == "PUT" else {}
        return SignedUrl(url, method, datetime.fromtimestamp(expires_at, UTC), headers)

    async def close(self) -> None:
        return None

    # --- on a worker thread -----------------------------------------------------------------------

    def _require_root(self) -> None:
        if not self._objects.is_dir() or not self._tmp.is_dir():
            raise BackendUnavailable(f"the directory {self.root} (objects/, tmp/) is missing or not mounted")

    def _commit(self, temp: Path, key: str, content_type: str, metadata: dict[str, str]) -> ObjectInfo:
        target = self._objects / key
        self._make_parents(target)
        meta_temp = self._tmp / f"{uuid.uuid4().hex}.json"
        status = os.stat(temp)
        meta = {"content_type": content_type, "metadata": metadata, "inode": status.st_ino}
        meta_temp.write_text(json.dumps(meta), encoding="utf-8")
        try:
            _rename(temp, target, key)
            meta_target = self._meta_path(key)
            meta_target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(meta_temp, meta_target)
        finally:
            with contextlib.suppress(OSError):
                meta_temp.unlink()
        return self._info(key, os.stat(target))

    def _info(self, key: str, status: os.stat_result) -> ObjectInfo:
        content_type, metadata = _DEFAULT_TYPE, {}
        try:
            meta: dict[str, Any] = json.loads(self._meta_path(key).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            meta = {}
        if meta.get("inode") == status.st_ino:
            content_type = str(meta.get("content_type") or _DEFAULT_TYPE)
            metadata = {str(k): str(v) for k, v in dict(meta.get("metadata") or {}).items()}
        # Every write is a new file (new inode); with the time and size that makes an etag that changes
        # whenever the content does, without hashing the bytes.
        etag = f"{status.st_ino:x}-{status.st_mtime_ns:x}-{status.st_size:x}"
        modified = datetime.fromtimestamp(status.st_mtime_ns / 1e9, UTC)
        return ObjectInfo(key, status.st_size, content_type, etag, modified, metadata)

    def _delete(self, key: str) -> bool:
        try:
            status = os.stat(self._objects / key)
        except (FileNotFoundError, NotADirectoryError):
            return False
        if not _is_file(status):
            return False
        try:
            os.unlink(self._objects / key)
        except FileNotFoundError:
            return False
        with contextlib.suppress(OSError):
            os.unlink(self._meta_path(key))
        self._prune(key)
        return True

    def _copy(self, source: str, destination: str) -> ObjectInfo:
        status = self._source_status(source)
        info = self._info(source, status)
        temp = self._tmp / uuid.uuid4().hex
        try:
            shutil.copyfile(self._objects / source, temp)
            with open(temp, "rb+") as handle:
                _flush(handle)
            return self._commit(temp, destination, info.content_type, info.metadata)
        finally:
            with contextlib.suppress(OSError):
                temp.unlink()

    def _move(self, source: str, destination: str) -> ObjectInfo:
        status = self._source_status(source)
        if source == destination:
            return self._info(source, status)
        info = self._info(source, status)
        target = self._objects / destination
        self._make_parents(target)
        meta_temp = self._tmp / f"{uuid.uuid4().hex}.json"
        meta = {"content_type": info.content_type, "metadata": info.metadata, "inode": status.st_ino}
        meta_temp.write_text(json.dumps(meta), encoding="utf-8")
        try:
            _rename(self._objects / source, target, destination)
            meta_target = self._meta_path(destination)
            meta_target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(meta_temp, meta_target)
        finally:
            with contextlib.suppress(OSError):
                meta_temp.unlink()
        with contextlib.suppress(OSError):
            os.unlink(self._meta_path(source))
        self._prune(source)
        return self._info(destination, os.stat(target))

    def _source_status(self, key: str) -> os.stat_result:
        try:
            status = os.stat(self._objects / key)
        except (FileNotFoundError, NotADirectoryError):
            raise NotFound(key) from None
        if not _is_file(status):
            raise NotFound(key)
        return status

    def _entries(self, prefix: str, delimiter: str) -> _Entries:
        """(key or common prefix, is a prefix) under `prefix`, sorted by name as S3 and GCS sort keys."""
        folder_part, _, name_start = prefix.rpartition("/")
        folder = self._objects / folder_part if folder_part else self._objects
        lead = f"{folder_part}/" if folder_part else ""
        entries: _Entries = []
        try:
            names = os.listdir(folder)
        except (FileNotFoundError, NotADirectoryError):
            return []
        for name in names:
            if not name.startswith(name_start):
                continue
            path = folder / name
            if path.is_dir():
                if delimiter == "/":
                    entries.append((f"{lead}{name}/", True))
                else:
                    for dirpath, _dirs, files in os.walk(path):
                        relative = Path(dirpath).relative_to(self._objects).as_posix()
                        entries.extend((f"{relative}/{file}", False) for file in files)
            elif path.is_file():
                entries.append((f"{lead}{name}", False))
        entries.sort()
        return entries

    def _make_parents(self, target: Path) -> None:
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise Conflict(
                f"a file stands where {target.relative_to(self._objects).parent.as_posix()!r} needs a folder "
                "(files-local keeps paths as folders and files)"
            ) from None

    def _prune(self, key: str) -> None:
        # Empty folders would show up as common prefixes in a listing; S3 and GCS have none.
        namespace_root = self._objects / key.split("/", 1)[0]
        for base in (self._objects, self._meta):
            folder = (base / key).parent
            stop = base / key.split("/", 1)[0] if base is self._meta else namespace_root
            while folder != stop and folder != base:
                try:
                    folder.rmdir()
                except OSError:
                    break
                folder = folder.parent

    def _meta_path(self, key: str) -> Path:
        return self._meta / f"{key}.json"


async def _io(function: Callable[..., _T], *args: Any) -> _T:
    try:
        return await asyncio.to_thread(function, *args)
    except (NotFound, Conflict, BackendUnavailable):
        raise
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EROFS, errno.EIO, errno.EDQUOT, errno.EACCES):
            raise BackendUnavailable(f"{exc.strerror} ({exc.filename})") from None
        raise


def _rename(source: Path, target: Path, key: str) -> None:
    try:
        os.replace(source, target)
    except (IsADirectoryError, NotADirectoryError):
        raise Conflict(f"{key!r} is a folder of other files (files-local keeps paths as folders and files)") from None


def _flush(handle: Any) -> None:
    handle.flush()
    # Durable before it becomes visible: after a crash the renamed file has its bytes.
    os.fsync(handle.fileno())


def _is_file(status: os.stat_result) -> bool:
    return stat.S_ISREG(status.st_mode)


async def _chunks(handle: Any, offset: int, length: int | None) -> AsyncIterator[bytes]:
    try:
        await asyncio.to_thread(handle.seek, offset)
        remaining = length
        while remaining is None or remaining > 0:
            size = READ_CHUNK if remaining is None else min(READ_CHUNK, remaining)
            chunk: bytes = await asyncio.to_thread(handle.read, size)
            if not chunk:
                return
            if remaining is not None:
                remaining -= len(chunk)
            yield chunk
    finally:
        handle.close()


def _encode_token(after: str) -> str:
    return base64.urlsafe_b64encode(after.encode("utf-8")).decode("ascii")


def _decode_token(token: str) -> str:
    if not token:
        return ""
    try:
        return base64.urlsafe_b64decode(token.encode("ascii")).decode("utf-8")
    except (ValueError, UnicodeError):
        raise BadRequest("page_token: not a token this provider gave") from None
