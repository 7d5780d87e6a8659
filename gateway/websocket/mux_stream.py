"""One call's stream on a upf-mux.v1 socket: its state and its flow control, both ways.

- client -> upstream: DATA from the client waits in `pending` until the upstream HTTP/2 stream
  takes it (`pump`, which never waits: it runs in the socket's reader and in the upstream
  connection's data_received); only then is the client given its window back (`credit`).
- upstream -> client: `window` is what the client accepts now; `sendable` waits until it is open
  and the socket's outbox has room.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Sequence
from typing import Protocol

import grpc

from common.http2.client import Http2Stream
from gateway.errors import GatewayError
from gateway.websocket.mux_frames import MAX_WINDOW, ErrorCode, MuxProtocolError, Settings, window_update
from gateway.websocket.mux_outbox import MuxOutbox
from gateway.wire.request_frames import RequestFrames

__all__ = ["MuxStream", "Status", "StreamSocket"]

Status = tuple[grpc.StatusCode, str, Sequence[tuple[bytes, bytes]]]


class StreamSocket(Protocol):
    """What a stream needs of its socket."""

    settings: Settings
    outbox: MuxOutbox

    def queue(self, frame: bytes) -> None: ...

    def credit(self, size: int) -> None:
        """`size` of the client's bytes have left the gateway: the socket's window gets them back."""
        ...


class MuxStream:
    """One call on the socket."""

    __slots__ = (
        "_current",
        "_current_cost",
        "_window_open",
        "abort_status",
        "conn",
        "end_sent",
        "failure",
        "frames",
        "half_closed",
        "id",
        "owed",
        "pending",
        "receive_window",
        "task",
        "upstream",
        "window",
    )  # fmt: skip

    def __init__(self, conn: StreamSocket, stream_id: int, window: int) -> None:
        self.conn = conn
        self.id = stream_id
        self.window = window  # response DATA bytes the client accepts now
        self.receive_window = conn.settings.stream_window  # request DATA bytes the client may send now
        self.owed = 0  # request bytes the upstream took, not yet given back to the client
        self.pending: deque[memoryview] = deque()  # request bytes waiting for the upstream
        self._current: bytes | memoryview | None = None  # what is left of the chunk being sent
        self._current_cost = 0  # the client's bytes that chunk came from (it may have been inflated)
        self.half_closed = False  # HALF_CLOSE arrived
        self.end_sent = False  # END_STREAM went upstream
        self.upstream: Http2Stream | None = None
        self.frames: RequestFrames | None = None
        self.failure: GatewayError | None = None  # the request broke a rule; the call ends with it
        self.abort_status: Status | None = None  # why the task was cancelled; None: no TRAILERS to send
        self.task: asyncio.Task[None] | None = None
        self._window_open: asyncio.Future[None] | None = None

    @property
    def pending_cost(self) -> int:
        return sum(len(chunk) for chunk in self.pending) + (self._current_cost if self._current is not None else 0)

    # --- client -> upstream -------------------------------------------------------------------

    def attach(self, upstream: Http2Stream, frames: RequestFrames) -> None:
        self.upstream = upstream
        self.frames = frames
        upstream.on_writable = self._on_writable
        self.pump()

    def pump(self) -> None:
        """Hand the upstream what it takes now; the rest waits for `on_writable`. Never waits itself:
        it runs in the reader and in the upstream connection's data_received."""
        upstream, frames = self.upstream, self.frames
        if upstream is None or frames is None or self.failure is not None:
            return
        try:
            while True:
                if self._current is None:
                    if not self.pending:
                        break
                    chunk = self.pending.popleft()
                    self._current_cost = len(chunk)
                    self._current = b""  # counted as pending until fed, should `feed` refuse it
                    self._current = frames.feed(chunk)
                if self._current:
                    taken = upstream.send_nowait(self._current, end_stream=False)
                    if taken < len(self._current):
                        self._current = memoryview(self._current)[taken:]
                        return
                self._current = None
                self.credit(self._current_cost)
            if self.half_closed and not self.end_sent:
                frames.close()
                self.end_sent = True
                upstream.send_nowait(b"", end_stream=True)
        except GatewayError as exc:
            self.fail(exc)

    def credit(self, size: int) -> None:
        """The upstream took `size` of the client's bytes: give them back, in batches."""
        self.owed += size
        if self.owed >= self.conn.settings.stream_window // 2 and self.abort_status is None:
            self.conn.queue(window_update(self.id, self.owed))
            self.receive_window += self.owed
            self.owed = 0
        self.conn.credit(size)

    # --- endings ------------------------------------------------------------------------------

    def fail(self, error: GatewayError) -> None:
        """The client's request broke a rule (size, framing): the call ends with `error`."""
        if self.failure is None:
            self.failure = error
            dropped = self.pending_cost  # never going upstream: the socket's window gets it back
            self.pending.clear()
            self._current = None
            self.conn.credit(dropped)
            if self.upstream is not None:
                self.upstream.cancel(error.message)  # the relay sees the end and reports `failure`

    def abort(self, status: Status | None) -> None:
        """End the call from outside its task: TRAILERS with `status`, or none when the socket is gone."""
        if self.task is not None and not self.task.done() and self.abort_status is None:
            self.abort_status = status
            self.task.cancel()

    # --- upstream -> client -------------------------------------------------------------------

    def open_window(self, increment: int) -> None:
        self.window += increment
        if self.window > MAX_WINDOW:
            raise MuxProtocolError(f"stream {self.id}: WINDOW_UPDATE past {MAX_WINDOW}", ErrorCode.FLOW_CONTROL_ERROR)
        self._wake()

    def _on_writable(self) -> None:
        self.pump()
        if self.upstream is not None and self.upstream.ended:
            self._wake()  # a relay waiting for window learns that the call is over

    def _wake(self) -> None:
        waiter = self._window_open
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def sendable(self) -> bool:
        """Until the client's window for this stream is open and the writer has room; False once
        the upstream call has failed meanwhile (its status is what is left to send)."""
        room = self.conn.outbox.room
        while True:
            upstream = self.upstream
            if upstream is not None and upstream.error is not None:
                return False
            if self.window > 0:
                if room.is_set():
                    return True
                await room.wait()
                continue
            self._window_open = asyncio.get_running_loop().create_future()
            try:
                await self._window_open
            finally:
                self._window_open = None
