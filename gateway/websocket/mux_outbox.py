"""What a upf-mux.v1 socket sends: one writer for all its calls.

Calls queue whole frames (`queue`); one writer task (`run`) sends them, the frames of one moment
joined into one WebSocket message of at most `_BATCH` bytes, and closes the socket once everything
queued before `close_after` has gone. `room` is clear while more than `_OUTBOX_HIGH` bytes wait:
calls stop queueing DATA then, so a client that does not read holds up its upstreams, not the
gateway's memory.
"""

from __future__ import annotations

import asyncio
from typing import Final

from starlette.types import Message, Send

__all__ = ["MuxOutbox"]

_OUTBOX_HIGH: Final = 256 * 1024  # bytes queued for the socket past which calls stop queueing DATA
_BATCH: Final = 256 * 1024  # frames joined into one WebSocket message, up to this many bytes


class _ClientGone(Exception):
    """The socket was closed or lost: nobody is left to answer."""


class MuxOutbox:
    """The frames waiting for one socket, and the task that sends them."""

    def __init__(self, send: Send) -> None:
        self._send = send
        self._frames: list[bytes] = []
        self._bytes = 0
        self.room = asyncio.Event()  # fewer than _OUTBOX_HIGH bytes wait
        self.room.set()
        self._flush = asyncio.Event()
        self.close_with: tuple[int, str] | None = None  # what the writer closes with once the queue is sent
        self.closed = False  # the writer has ended: nothing more leaves

    def queue(self, frame: bytes) -> None:
        if self.closed or self.close_with is not None:
            return
        self._frames.append(frame)
        self._bytes += len(frame)
        if self._bytes >= _OUTBOX_HIGH:
            self.room.clear()
        self._flush.set()

    def close_after(self, code: int, reason: str = "") -> None:
        """Close once everything queued so far has been sent; the first request wins."""
        if self.close_with is None:
            # A close reason is at most 123 bytes of UTF-8 (RFC 6455 5.5).
            self.close_with = (code, reason.encode()[:123].decode("utf-8", "ignore"))
            self._flush.set()

    async def run(self) -> None:
        """The writer task: until the socket is closed (`close_after`) or lost."""
        try:
            while True:
                if not self._frames:
                    if self.close_with is not None:
                        break
                    self._flush.clear()
                    await self._flush.wait()
                    continue
                batch = self._take_batch()
                await self._write({"type": "websocket.send", "bytes": batch})
            code, reason = self.close_with
            await self._write({"type": "websocket.close", "code": code, "reason": reason})
        except _ClientGone:
            pass
        finally:
            self.closed = True
            self._frames.clear()
            self.room.set()  # nobody waits for a socket that is gone

    def _take_batch(self) -> bytes:
        frames = self._frames
        count, size = 1, len(frames[0])
        while count < len(frames) and size + len(frames[count]) <= _BATCH:
            size += len(frames[count])
            count += 1
        batch = frames[0] if count == 1 else b"".join(frames[:count])
        del frames[:count]
        self._bytes -= size
        if self._bytes < _OUTBOX_HIGH:
            self.room.set()
        return batch

    async def _write(self, message: Message) -> None:
        try:
            await self._send(message)
        except OSError:  # uvicorn's ClientDisconnected: the socket is gone
            raise _ClientGone from None
