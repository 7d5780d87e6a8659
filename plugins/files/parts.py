"""Byte streams regrouped into fixed-size parts, and parts sent on while the next ones arrive: the
upload side of files-s3 (multipart parts) and files-gcs (resumable parts).

Clients send pieces of whatever size they like (1 MiB gRPC messages by the SDK's default); S3 and
GCS take parts of a set size. Each byte is copied once, when its part is joined; a piece that
already is a whole part passes through as is.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

__all__ = ["parts", "send_overlapped"]

_Item = TypeVar("_Item")
_Result = TypeVar("_Result")


async def parts(pieces: AsyncIterator[bytes], size: int) -> AsyncIterator[tuple[bytes, bool]]:
    """`pieces` as parts of `size` bytes, each with whether it is the last; the last may be shorter,
    and is empty only for an empty stream. A full part is handed on once a byte after it has arrived
    (or the stream has ended), so that `last` is known: an upload can send a short stream in one
    request, and GCS wants the total on the last part."""
    if size <= 0:
        raise ValueError("the part size must be positive")
    held: list[memoryview] = []
    count = 0
    full: bytes | None = None
    async for piece in pieces:
        view = memoryview(piece)
        while view:
            if full is not None:
                yield full, False
                full = None
            take = view[: size - count]
            held.append(take)
            count += len(take)
            view = view[len(take) :]
            if count == size:
                full = _join(held)
                held.clear()
                count = 0
    if full is not None:
        yield full, True  # nothing arrived after it (or it would have gone out above)
    else:
        yield _join(held), True  # the short tail, or b"" for an empty stream


def _join(views: list[memoryview]) -> bytes:
    if len(views) == 1:
        whole = views[0].obj
        if type(whole) is bytes and len(whole) == len(views[0]):
            return whole  # a piece that is exactly one part: no copy
    return b"".join(views)


async def send_overlapped(
    items: AsyncIterator[_Item], send: Callable[[_Item], Awaitable[_Result]], *, in_flight: int = 1
) -> list[_Result]:
    """`send` each item, up to `in_flight` at a time, while the next item is being received; the
    results in the items' order. Memory stays at `in_flight` items on their way plus the one arriving:
    the next item is not asked for while that many are under way. A failed send shows when its turn
    comes (at the latest once the next item is in); on any error or cancellation, the sends under way
    are cancelled and awaited before it goes on."""
    under_way: deque[asyncio.Future[_Result]] = deque()
    results: list[_Result] = []
    try:
        async for item in items:
            while len(under_way) >= in_flight:
                results.append(await under_way.popleft())
            under_way.append(asyncio.ensure_future(send(item)))
        while under_way:
            results.append(await under_way.popleft())
    finally:
        for future in under_way:
            future.cancel()
        if under_way:
            await asyncio.wait(under_way)
        for future in under_way:
            if not future.cancelled():
                future.exception()  # retrieved: an error beside the one under way is not logged as lost
    return results
