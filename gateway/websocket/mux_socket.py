"""One upf-mux.v1 socket, served in uvicorn's task for it.

The reader (that task) takes WebSocket messages, splits them into frames and dispatches them; it
never waits on a call, so a call whose upstream is slow cannot hold up the others. Each call
(mux_stream.py, mux_call.py) runs in a task of its own, and one writer (mux_outbox.py) sends what
the calls queue.

Request DATA is counted against the socket's window (`connectionWindow`) as well as its stream's;
the gateway gives credit back (`credit`) only once the upstream has taken the bytes, so a client
that sends past the windows is cut (1002) and what waits for a slow upstream stays bounded.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

import grpc
from starlette.types import Message, Receive, Scope, Send

from gateway.errors import MessageTooLarge
from gateway.proxy import ProxyConfig
from gateway.websocket.mux_call import run_call
from gateway.websocket.mux_frames import (
    CLIENT_FRAMES,
    CLOSE_INTERNAL,
    CLOSE_PROTOCOL_ERROR,
    CLOSE_TOO_BIG,
    ErrorCode,
    FrameType,
    MuxProtocolError,
    frame_name,
    goaway,
    parse_increment,
    parse_open,
    settings,
    split_message,
    trailers,
    window_update,
)
from gateway.websocket.mux_outbox import MuxOutbox
from gateway.websocket.mux_stream import MuxStream, Status
from gateway.websocket.open_sockets import CLOSE_GOING_AWAY, SHUTTING_DOWN

if TYPE_CHECKING:
    from gateway.websocket.mux import MuxEndpoint

__all__ = ["MuxSocket"]

logger = logging.getLogger(__name__)

_CANCELLED_BY_CLIENT: Status = (grpc.StatusCode.CANCELLED, "cancelled by the client", ())


class MuxSocket:
    """One upf-mux.v1 socket (see the module docstring)."""

    def __init__(self, endpoint: MuxEndpoint, scope: Scope, receive: Receive, send: Send) -> None:
        self.endpoint = endpoint
        self.config: ProxyConfig = endpoint.config
        self.settings = endpoint.settings
        self.scope = scope
        self._receive = receive
        self.outbox = MuxOutbox(send)
        self.streams: dict[int, MuxStream] = {}
        self.highest = 0  # the highest stream id opened so far
        self.window = self.settings.connection_window  # request DATA bytes the client may send now
        self.owed = 0  # request bytes the upstreams took, not yet given back to the client
        self.going = False  # GOAWAY sent: no new calls
        self.cut = False  # set by OpenSockets before it cancels this socket's task

    # --- the drain's side ---------------------------------------------------------------------

    async def going_away(self) -> None:
        if self.going:
            return
        self.going = True
        self.queue(goaway(self.highest, ErrorCode.NO_ERROR, SHUTTING_DOWN))
        if not self.streams:
            self.outbox.close_after(CLOSE_GOING_AWAY)

    # --- running ------------------------------------------------------------------------------

    async def run(self) -> None:
        writer = asyncio.ensure_future(self.outbox.run())
        self.queue(settings(self.settings))
        try:
            try:
                await self._read_loop()
            except MuxProtocolError as exc:
                logger.info("upf-mux.v1: closing a socket with %s: %s", exc.code.name, exc.reason)
                self.queue(goaway(self.highest, exc.code, exc.reason))
                self.outbox.close_after(CLOSE_PROTOCOL_ERROR, exc.reason)
            except MessageTooLarge as exc:
                self.outbox.close_after(CLOSE_TOO_BIG, exc.message)
            await self._abort_all(None)  # the socket is ending: no call gets a status any more
            if self.outbox.close_with is None:
                writer.cancel()  # the client left; nothing more to send
            await asyncio.wait((writer,))
        except asyncio.CancelledError:
            if not self.cut:
                raise
            # The drain's grace is over: every call gets UNAVAILABLE, then close 1001.
            current = asyncio.current_task()
            if current is not None:
                current.uncancel()
            await self._abort_all((grpc.StatusCode.UNAVAILABLE, SHUTTING_DOWN, ()))
            self.outbox.close_after(CLOSE_GOING_AWAY)
            await asyncio.wait((writer,))
        except Exception:
            logger.exception("upf-mux.v1: a socket failed inside the gateway")
            self.queue(goaway(self.highest, ErrorCode.INTERNAL_ERROR, "the gateway failed"))
            self.outbox.close_after(CLOSE_INTERNAL, "the gateway failed")
            await self._abort_all(None)
            await asyncio.wait((writer,))
        finally:
            writer.cancel()
            for stream in list(self.streams.values()):
                stream.abort(None)

    async def _abort_all(self, status: Status | None) -> None:
        tasks = [stream.task for stream in self.streams.values() if stream.task is not None]
        for stream in list(self.streams.values()):
            stream.abort(status)
        if tasks:
            await asyncio.wait(tasks)

    async def _read_loop(self) -> None:
        max_size = self.endpoint.max_size
        max_frame = self.settings.max_frame_bytes
        while True:
            message: Message = await self._receive()
            if message["type"] != "websocket.receive":
                return  # closed by the client (or by us), or lost
            data: bytes | None = message.get("bytes")
            if data is None:
                raise MuxProtocolError("upf-mux.v1 messages are binary; the client sent a text message")
            if len(data) > max_size:
                # uvicorn enforces this first (ws_max_size); checked here for servers that do not.
                raise MessageTooLarge(f"a WebSocket message of {len(data)} bytes is over the limit of {max_size}")
            for kind, stream_id, payload in split_message(memoryview(data), max_frame):
                self._on_frame(kind, stream_id, payload)

    # --- frames from the client ---------------------------------------------------------------

    def _on_frame(self, kind: int, stream_id: int, payload: memoryview) -> None:
        if kind not in CLIENT_FRAMES:
            raise MuxProtocolError(f"frame type {frame_name(kind)} is not one a client sends")
        if stream_id == 0:
            raise MuxProtocolError(f"{FrameType(kind).name} on stream 0")
        if kind == FrameType.OPEN:
            self._on_open(stream_id, payload)
            return
        if stream_id > self.highest:
            raise MuxProtocolError(f"{FrameType(kind).name} on stream {stream_id}, which was never opened")
        stream = self.streams.get(stream_id)  # None: the call has ended, and the frame crossed its TRAILERS
        if kind == FrameType.DATA:
            self._on_data(stream, payload)
        elif kind == FrameType.WINDOW_UPDATE:
            increment = parse_increment(payload)
            if stream is not None:
                stream.open_window(increment)
        else:
            if payload:
                message = f"{FrameType(kind).name} carries {len(payload)} bytes; it has no payload"
                raise MuxProtocolError(message, ErrorCode.FRAME_SIZE_ERROR)
            if stream is None:
                return
            if kind == FrameType.HALF_CLOSE:
                if stream.half_closed:
                    raise MuxProtocolError(f"a second HALF_CLOSE on stream {stream_id}")
                stream.half_closed = True
                stream.pump()
            else:
                stream.abort(_CANCELLED_BY_CLIENT)

    def _on_open(self, stream_id: int, payload: memoryview) -> None:
        if stream_id <= self.highest:
            raise MuxProtocolError(f"OPEN on stream {stream_id}, not above the highest opened so far ({self.highest})")
        self.highest = stream_id
        request = parse_open(payload)
        if self.going or self.endpoint.sockets.draining:
            self.queue(trailers(stream_id, grpc.StatusCode.UNAVAILABLE.value[0], SHUTTING_DOWN.encode(), ()))
            return
        if len(self.streams) >= self.settings.max_streams:
            message = f"more than {self.settings.max_streams} calls at once on one socket"
            self.queue(trailers(stream_id, grpc.StatusCode.RESOURCE_EXHAUSTED.value[0], message.encode(), ()))
            return
        stream = MuxStream(self, stream_id, request.window)
        self.streams[stream_id] = stream
        stream.task = asyncio.get_running_loop().create_task(run_call(self, stream, request))

    def _on_data(self, stream: MuxStream | None, payload: memoryview) -> None:
        size = len(payload)
        if size > self.window:
            raise MuxProtocolError(
                f"DATA of {size} bytes past the connection window ({self.window} left)", ErrorCode.FLOW_CONTROL_ERROR
            )
        self.window -= size
        if stream is None:
            self.credit(size)  # nobody will take these bytes: the socket's window gets them back at once
            return
        if size > stream.receive_window:
            raise MuxProtocolError(
                f"DATA of {size} bytes past stream {stream.id}'s window ({stream.receive_window} left)",
                ErrorCode.FLOW_CONTROL_ERROR,
            )
        stream.receive_window -= size
        if stream.half_closed:
            raise MuxProtocolError(f"DATA on stream {stream.id} after its HALF_CLOSE")
        if stream.failure is not None or stream.abort_status is not None:
            self.credit(size)
            return
        if size:
            stream.pending.append(payload)
            stream.pump()

    # --- for the calls ------------------------------------------------------------------------

    def forget(self, stream: MuxStream) -> None:
        """The call has ended: its leftover request bytes are given back; a draining socket may close."""
        if self.streams.pop(stream.id, None) is None:
            return
        leftover = stream.pending_cost
        stream.pending.clear()
        if leftover:
            self.credit(leftover)  # bytes the upstream will never take: the socket's window gets them back
        if self.going and not self.streams:
            self.outbox.close_after(CLOSE_GOING_AWAY)

    def credit(self, size: int) -> None:
        self.owed += size
        if self.owed >= self.settings.connection_window // 2:
            self.queue(window_update(0, self.owed))
            self.window += self.owed
            self.owed = 0

    def queue(self, frame: bytes) -> None:
        self.outbox.queue(frame)
