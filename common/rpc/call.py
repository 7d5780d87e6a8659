"""`ServedCall`: one client stream of common.rpc.Server, answered by a servicer's method handler.

The connection (common.http2.server.ServerConnection) hands the call its request DATA, resets and
window updates; the call cuts the DATA into messages (common/rpc/wire.py), runs the handler in a
task of its own, and writes the response headers, messages and trailers.

Flow control, both ways, keeps memory bounded whatever the client does:
- requests: bytes are given back to the client's windows as they arrive while the messages waiting
  for the handler stay under `_QUEUE_LIMIT`; past that, only as the handler reads them;
- responses: a message goes out within the client's windows, and `write` does not return until it
  has and the transport has drained (common/rpc/connection.py), so a handler that streams is held
  to the client's pace.
Ending the call (answered, reset by the client, past its deadline, shut down) cancels the handler
task if it is still running.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import TYPE_CHECKING, Any, Final

import grpc
import grpc.aio

from common.http2.frames import CANCEL, RST_STREAM, frame
from common.http2.server import STREAM_WINDOW
from common.http2.writer import window_update
from common.rpc.context import Context
from common.rpc.wire import (
    EOF,
    MESSAGE_PREFIX,
    RESPONSE_START,
    MessageError,
    Metadata,
    RequestMessages,
    metadata_block,
    status_block,
)

if TYPE_CHECKING:
    from common.rpc.connection import RpcConnection

__all__ = ["ServedCall"]

logger = logging.getLogger(__name__)

# Request bytes given back to the client's stream window in batches this large, not per message.
_CREDIT_BATCH: Final = STREAM_WINDOW // 4
# Request messages the handler has not read yet, in bytes, beyond which the client is held back.
_QUEUE_LIMIT: Final = STREAM_WINDOW // 2
# Response bytes held in the process for one connection before a streaming call waits for the socket.
_HIGH_WATER: Final = 256 * 1024
# How long a call's end waits for a client that is still sending (see end()): until it half-closes or
# sends nothing for _QUIET seconds, and never longer than _SETTLE_LIMIT.
_QUIET: Final = 0.02
_SETTLE_LIMIT: Final = 0.2
_RESET_CANCEL: Final = CANCEL.to_bytes(4, "big")


class ServedCall:
    """One client stream and its handler task."""

    __slots__ = (
        "cancelled",
        "closed",
        "conn",
        "context",
        "deadline",
        "handler",
        "headers_sent",
        "id",
        "messages",
        "metadata",
        "owed",
        "path",
        "queued",
        "reader",
        "recv_window",
        "request_ended",
        "request_waiter",
        "send_window",
        "task",
        "timer",
        "window_waiter",
    )  # fmt: skip

    def __init__(
        self,
        conn: RpcConnection,
        stream_id: int,
        path: str,
        metadata: Metadata,
        reader: RequestMessages,
        timeout: float | None,
    ) -> None:
        self.conn = conn
        self.id = stream_id
        self.path = path
        self.metadata = metadata
        self.reader = reader
        self.context = Context(self)
        self.messages: deque[tuple[bytes, int]] = deque()  # request messages not read yet, with their sizes
        self.queued = 0  # their bytes
        self.owed = 0  # request bytes received and not given back to the client's windows yet
        self.request_waiter: asyncio.Future[None] | None = None  # set while the handler waits for a message
        self.request_ended = False
        self.recv_window = STREAM_WINDOW
        self.send_window = conn.peer_initial_window
        self.window_waiter: asyncio.Future[None] | None = None
        self.headers_sent = False
        self.closed = False  # nothing more goes to the client: answered, reset, past its deadline or lost
        self.cancelled = False
        self.task: asyncio.Task[None] | None = None
        self.handler: grpc.RpcMethodHandler[Any, Any] | None = None  # once found (common/rpc/dispatch.py)
        self.deadline: float | None = None
        self.timer: asyncio.TimerHandle | None = None
        if timeout is not None:
            self.deadline = conn.loop.time() + timeout
            self.timer = conn.loop.call_later(timeout, self._deadline_passed)

    # --- the connection's side (ServerStream) ----------------------------------------------------

    @property
    def done_sending(self) -> bool:
        return self.closed

    def wake(self) -> None:
        waiter = self.window_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def on_data(self, data: bytes, end_stream: bool) -> None:
        if self.closed:
            self.conn.credit(len(data))
            self.request_ended = self.request_ended or end_stream
            return
        self.owed += len(data)
        try:
            if data:
                for message in self.reader.feed(data):
                    self.messages.append(message)
                    self.queued += message[1]
            if end_stream:
                self.request_ended = True
                if self.reader.partial:
                    raise MessageError(grpc.StatusCode.INTERNAL, "the request ended inside a message")
        except MessageError as exc:
            self.request_ended = self.request_ended or end_stream
            self.finish(exc.code, exc.message)
            return
        self._give_back()
        waiter = self.request_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def on_reset(self) -> None:
        """The client reset the stream, or the connection is gone: the handler is cancelled."""
        if not self.closed:
            self.cancelled = True
            self.closed = True
        self._stop_handler()

    def abort(self) -> None:
        """Shutdown past the grace period: the client gets RST_STREAM CANCEL."""
        if not self.closed:
            self.conn.write(frame(RST_STREAM, 0, self.id, _RESET_CANCEL))
        self.on_reset()

    def _deadline_passed(self) -> None:
        self.timer = None
        if not self.closed:
            self.cancelled = True
            self.finish(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")

    # --- the handler's side ----------------------------------------------------------------------

    async def next_message(self) -> bytes | None:
        """The next request message; None once the client has half-closed."""
        while not self.messages:
            if self.request_ended or self.closed:
                return None
            waiter = self.request_waiter = self.conn.loop.create_future()
            try:
                await waiter
            finally:
                self.request_waiter = None
        message, size = self.messages.popleft()
        self.queued -= size
        self._give_back()
        return message

    async def request_settled(self, quiet: float, limit: float) -> None:
        """Return once the client has half-closed (or the call has ended), has sent nothing for `quiet`
        seconds, or after `limit` seconds."""
        loop = self.conn.loop
        give_up = loop.time() + limit
        while not (self.request_ended or self.closed):
            wait = min(quiet, give_up - loop.time())
            if wait <= 0:
                return
            waiter = self.request_waiter = loop.create_future()
            timer = loop.call_later(wait, _resolve, waiter)
            try:
                await waiter  # resolved by the next DATA frame, or by the timer
            finally:
                timer.cancel()
                self.request_waiter = None
            if loop.time() >= timer.when():
                return  # nothing arrived: the client is not in the middle of sending

    async def read(self) -> Any:
        message = await self.next_message()
        return EOF if message is None else self.deserialize(message)

    def deserialize(self, message: bytes) -> Any:
        deserialize = self.handler.request_deserializer if self.handler is not None else None
        if deserialize is None:
            return message
        try:
            return deserialize(message)
        except Exception:  # protobuf's DecodeError, or whatever a custom deserializer raises
            raise MessageError(grpc.StatusCode.INTERNAL, "the request message does not deserialize") from None

    async def write(self, response: Any) -> None:
        if self.closed:
            raise asyncio.CancelledError("the call has ended")
        serialize = self.handler.response_serializer if self.handler is not None else None
        await self.send_message(serialize(response) if serialize is not None else response)

    async def send_message(self, payload: bytes) -> None:
        conn = self.conn
        streaming = self.headers_sent  # not the first message (a unary answer skips the checks below)
        if not streaming:
            self.send_headers(b"")
        await conn.send_data(self, MESSAGE_PREFIX.pack(0, len(payload)) + payload, False)
        if streaming:
            transport = conn.transport
            # Writes wait in the corked transport until the loop turns; a handler whose window is open
            # may not yield before then, so past the mark they go to the socket now, which tells
            # whether it keeps up.
            if transport is not None and transport.get_write_buffer_size() > _HIGH_WATER:
                transport.flush()
            drained = conn.drained
            if drained is not None:
                await asyncio.shield(drained)  # the client is not reading: wait before the next message

    def send_headers(self, metadata: bytes) -> None:
        self.headers_sent = True
        self.conn.write_headers(self.id, RESPONSE_START + metadata, end_stream=False)

    async def end(self, code: grpc.StatusCode, details: str | None) -> None:
        """The call's trailers, once the client has finished sending its request or paused.

        grpcio's asyncio client fails a client-streaming call with INTERNAL ("Internal error from Core"),
        not the status sent, when the stream ends while it is still sending a message. A call that ends
        before reading all of its request (an unknown method, an abort up front) ended that early in
        70 % of 400 tries of a two-message request (grpc.aio's server, slower to answer: 4 %), and the
        gateway's descriptor fetch, which asks for reflection v1 before v1alpha, failed now and then.
        Waiting for the request's end (already there for a unary request) while the client keeps
        sending, and sending no RST_STREAM in finish: 0 in 800.
        """
        if not (self.request_ended or self.closed):
            await self.request_settled(_QUIET, _SETTLE_LIMIT)
        self.finish(code, details)

    def finish(self, code: grpc.StatusCode, details: str | None) -> None:
        """Trailers (trailers-only when nothing was sent yet); the handler is cancelled if still running."""
        if self.closed:
            return
        self.closed = True
        conn = self.conn
        trailing = self.context.trailing_metadata()
        block = status_block(code, details, metadata_block(trailing) if trailing else b"")
        # No RST_STREAM (NO_ERROR) follows when the client has not finished sending, though HTTP/2
        # allows one (RFC 9113 8.1): grpcio's asyncio client, still writing, may take the reset for a
        # failure of its own and report INTERNAL instead of the status (common/rpc/dispatch.py, _end).
        # What it sends before it reads the trailers is dropped, and given back to its window.
        conn.write_headers(self.id, block if self.headers_sent else RESPONSE_START + block, end_stream=True)
        self._stop_handler()

    def time_remaining(self) -> float | None:
        return None if self.deadline is None else max(0.0, self.deadline - self.conn.loop.time())

    def peer(self) -> str:
        peer = self.conn.peer
        if peer is None:
            return "unknown"
        host, port = peer
        return f"ipv6:[{host}]:{port}" if ":" in host else f"ipv4:{host}:{port}"

    # --- endings ---------------------------------------------------------------------------------

    def _stop_handler(self) -> None:
        self.wake()
        waiter = self.request_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        task = self.task
        if task is not None and not task.done() and task is not asyncio.current_task():
            task.cancel()
        self.release()

    def release(self) -> None:
        """The stream leaves its connection: unread request bytes are given back, done callbacks run."""
        conn = self.conn
        if conn.streams.get(self.id) is not self:
            return
        del conn.streams[self.id]
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        conn.credit(self.owed)
        self.owed = 0
        self.messages.clear()
        conn.send_waiters.discard(self)
        conn.stream_closed()
        self.context.call_done_callbacks()

    def _give_back(self) -> None:
        """Give received bytes back to the client's windows while the handler keeps up (a small request's
        come back at `release`)."""
        if self.queued > _QUEUE_LIMIT or self.owed < _CREDIT_BATCH:
            return
        owed, self.owed = self.owed, 0
        self.conn.credit(owed)
        if not self.request_ended:  # a stream the client has ended needs no more window
            self.recv_window += owed
            self.conn.write(window_update(self.id, owed))


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
