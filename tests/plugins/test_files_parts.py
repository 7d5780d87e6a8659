"""plugins/files/parts.py: streams regrouped into parts, and parts sent while the next ones arrive."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest

from plugins.files.parts import parts, send_overlapped


async def _stream(*pieces: bytes) -> AsyncIterator[bytes]:
    for piece in pieces:
        yield piece


async def _parts(size: int, *pieces: bytes) -> list[tuple[bytes, bool]]:
    return [part async for part in parts(_stream(*pieces), size)]


async def test_pieces_are_regrouped_into_parts_of_the_size_and_only_the_last_is_flagged() -> None:
    assert await _parts(4, b"ab", b"cdefg", b"hij") == [(b"abcd", False), (b"efgh", False), (b"ij", True)]
    assert await _parts(4, b"abcdefghij") == [(b"abcd", False), (b"efgh", False), (b"ij", True)]


async def test_a_stream_ending_on_a_part_boundary_flags_its_last_full_part() -> None:
    assert await _parts(3, b"abc", b"def") == [(b"abc", False), (b"def", True)]
    assert await _parts(3, b"ab", b"c") == [(b"abc", True)]


async def test_an_empty_stream_is_one_empty_last_part() -> None:
    assert await _parts(3) == [(b"", True)]
    assert await _parts(3, b"", b"") == [(b"", True)]


async def test_a_piece_that_is_a_whole_part_passes_through_without_a_copy() -> None:
    piece = b"x" * 1000
    [(part, last)] = await _parts(1000, piece)
    assert part is piece
    assert last


async def test_a_part_is_handed_on_only_once_a_byte_after_it_has_arrived() -> None:
    """What lets a backend decide between one request and a multipart upload from the first part."""
    arrived: list[bytes] = []

    async def stream() -> AsyncIterator[bytes]:
        for piece in (b"abc", b"d"):
            arrived.append(piece)
            yield piece

    regrouped = parts(stream(), 3)
    assert await anext(regrouped) == (b"abc", False)
    assert arrived == [b"abc", b"d"]
    assert await anext(regrouped) == (b"d", True)


async def test_parts_need_a_positive_size() -> None:
    with pytest.raises(ValueError, match="positive"):
        await _parts(0, b"a")


async def test_sends_overlap_the_next_item_and_results_keep_the_items_order() -> None:
    released = {n: asyncio.Event() for n in range(4)}
    requested: list[int] = []
    started: list[int] = []

    async def items() -> AsyncIterator[int]:
        for n in range(4):
            requested.append(n)
            yield n

    async def send(n: int) -> str:
        started.append(n)
        await released[n].wait()
        return f"sent {n}"

    task = asyncio.create_task(send_overlapped(items(), send, in_flight=2))
    await _until(lambda: started == [0, 1])
    # Two under way: the next item is asked for (it arrives meanwhile) but not sent, and no more.
    assert requested == [0, 1, 2]
    released[1].set()
    await asyncio.sleep(0)
    assert started == [0, 1], "item 2 waits for the oldest send, so that results stay in order"
    released[0].set()
    await _until(lambda: started == [0, 1, 2, 3])
    released[2].set()
    released[3].set()
    assert await task == ["sent 0", "sent 1", "sent 2", "sent 3"]


async def test_a_failed_send_cancels_the_others_under_way() -> None:
    cancelled: list[int] = []

    async def items() -> AsyncIterator[int]:
        for n in range(3):
            yield n

    async def send(n: int) -> int:
        if n == 0:
            await asyncio.sleep(0)
            raise OSError("backend gone")
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.append(n)
            raise
        return n

    with pytest.raises(OSError, match="backend gone"):
        await send_overlapped(items(), send, in_flight=2)
    assert cancelled == [1]


async def test_a_stream_that_fails_cancels_the_sends_under_way() -> None:
    cancelled: list[int] = []

    async def items() -> AsyncIterator[int]:
        yield 0
        await asyncio.sleep(0)
        raise ValueError("checksum mismatch")

    async def send(n: int) -> int:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.append(n)
            raise
        return n

    with pytest.raises(ValueError, match="checksum"):
        await send_overlapped(items(), send)
    assert cancelled == [0]


async def _until(condition: Callable[[], bool]) -> None:
    for _ in range(100):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("the condition did not hold after 100 turns of the event loop")
