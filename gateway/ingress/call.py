"""One native gRPC call: a client stream of the ingress (gateway/ingress/server.py) proxied to one
upstream stream, through the shared call path (gateway/proxy/).

The request headers become the upstream call's metadata (`start_call`); request DATA goes upstream
as bytes straight from the connection's data_received (half-close as END_STREAM), checked prefix by
prefix (size, flag byte); the upstream's response headers (as soon as they arrive, ahead of the
first message), messages and status come back to the client.

Flow control, both ways, keeps memory bounded whatever the peers do:
- client -> upstream: the client's stream and connection windows are credited only as the
  upstream accepts the bytes, so a slow upstream holds the client back;
- upstream -> client: DATA goes out only within the client's windows; until it does, the call
  reads no further from its upstream stream, whose window is then not refilled.

A call whose whole request had arrived when it began can be sent again to another replica.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import grpc

from common.http2.client import Http2Stream, NeverProcessed, StreamError
from common.http2.frames import CANCEL, NO_ERROR, PROTOCOL_ERROR, RST_STREAM, WINDOW_UPDATE, frame
from common.http2.headers import encode_header
from common.http2.server import STREAM_WINDOW, ServerConnection
from gateway.edge.identity_headers import is_identity_header
from gateway.errors import GatewayError, MessageTooLarge
from gateway.proxy import Refused, admit, run_attempts
from gateway.upstream.outcome import Outcome, explain, outcome
from gateway.upstream.pool import Replica
from gateway.wire.framing import check_request_flags
from gateway.wire.metadata import response_metadata
from gateway.wire.status import percent_encode
from gateway.wire.timeout import parse_timeout

if TYPE_CHECKING:
    from gateway.ingress.server import IngressServer

# Opens a call the gateway answers itself (gateway/ingress/local.py) on a stream: (conn, stream id, path, scope).
OpenLocal = Callable[["ServerConnection[IngressServer]", int, str, dict[str, Any]], "IngressCall"]

__all__ = ["RESPONSE_START", "IngressCall", "OpenLocal", "refuse_call", "start_call"]

logger = logging.getLogger(__name__)

# Window updates to the client go out in batches this large, not one per message.
_STREAM_CREDIT_BATCH = STREAM_WINDOW // 4

# Headers the upstream request does not carry from the client: pseudo-headers and these are rebuilt
# by the HTTP/2 client (content-type, te, user-agent, grpc-accept-encoding: the gateway decompresses
# answers itself), or are hop-by-hop (RFC 9110 7.6.1). grpc-timeout becomes the upstream deadline.
# grpc-encoding is forwarded: request messages go upstream exactly as the client compressed them.
# traceparent / tracestate: each attempt sends the call's own (gateway/telemetry/calls.py).
_NOT_FORWARDED = frozenset(
    {
        b"te", b"content-type", b"user-agent", b"grpc-accept-encoding", b"grpc-timeout", b"host",
        b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade", b"content-length",
        b"traceparent", b"tracestate",
    }
)  # fmt: skip

# HPACK: ":status: 200" is static index 8; content-type (static name 31) as a literal without indexing.
_STATUS_200 = b"\x88"
_GRPC_CONTENT_TYPE = b"\x0f\x10" + bytes((len(b"application/grpc"),)) + b"application/grpc"
RESPONSE_START = _STATUS_200 + _GRPC_CONTENT_TYPE


class IngressCall:
    """One client stream, proxied to one upstream stream."""

    __slots__ = (
        "body",
        "body_left",
        "closed",
        "conn",
        "headers_sent",
        "id",
        "metadata",
        "method",
        "path",
        "pending",
        "pending_bytes",
        "prefix",
        "recv_window",
        "request_ended",
        "requested_timeout",
        "scope",
        "send_window",
        "service",
        "task",
        "uncredited",
        "upstream",
        "window_waiter",
    )  # fmt: skip

    def __init__(
        self,
        conn: ServerConnection[IngressServer],
        stream_id: int,
        path: str,
        service: str,
        method: str,
        metadata: bytes,
        requested_timeout: float | None,
        scope: dict[str, Any],
    ) -> None:
        self.conn = conn
        # The request as auth and the rate limiter read it (peer, headers, path).
        self.scope = scope
        self.id = stream_id
        self.path = path
        self.service = service
        self.method = method
        self.metadata = metadata
        self.requested_timeout = requested_timeout  # grpc-timeout, before the caps
        self.body: bytes | None = None  # the whole request, when the client had sent it before the call began
        self.upstream: Http2Stream | None = None
        self.task: asyncio.Task[None] | None = None
        # Request bytes the upstream has not taken yet (the stream is opening, or its window is shut).
        self.pending: deque[bytes | memoryview] = deque()
        self.pending_bytes = 0
        self.request_ended = False  # the client half-closed (END_STREAM)
        self.recv_window = STREAM_WINDOW  # what the client may still send on this stream
        self.uncredited = 0  # bytes the upstream took, not yet given back to the client's stream window
        self.send_window = conn.peer_initial_window  # what we may still send the client on this stream
        self.prefix = bytearray()  # the start of a gRPC message prefix split between DATA frames
        self.body_left = 0  # bytes of the current request message still to come
        self.headers_sent = False
        self.closed = False  # no more frames for the client: answered, reset by either side, or lost
        self.window_waiter: asyncio.Future[None] | None = None

    # --- client -> upstream -----------------------------------------------------------------

    def on_data(self, data: bytes, end_stream: bool) -> None:
        if self.closed:  # answered already: what the client still sends is dropped
            self.conn.credit(len(data))
            return
        refusal = self._check_frames(data) if data else None
        if refusal is not None:
            self._answer_locally(refusal.code, refusal.message)
            self._drop_upstream(refusal.message)
            self.conn.credit(len(data))
            return
        if end_stream:
            self.request_ended = True
        if data or end_stream:
            self.pending.append(data)
            self.pending_bytes += len(data)
        if self.upstream is not None:
            self.pump()

    def _check_frames(self, data: bytes) -> GatewayError | None:
        """Follow the gRPC message prefixes across DATA frames: why the request is refused, once a
        prefix announces too large a message or carries a flag byte other than 0 or 1."""
        offset, size = 0, len(data)
        while offset < size:
            if self.body_left:
                step = min(self.body_left, size - offset)
                self.body_left -= step
                offset += step
                continue
            need = 5 - len(self.prefix)
            self.prefix += data[offset : offset + need]
            offset += need
            if len(self.prefix) == 5:
                flags = self.prefix[0]
                self.body_left = int.from_bytes(self.prefix[1:5], "big")
                self.prefix.clear()
                limit = self.conn.server.max_message_bytes
                if self.body_left > limit:
                    return MessageTooLarge(f"request message larger than the gateway's limit of {limit} bytes")
                try:
                    check_request_flags(flags)
                except GatewayError as exc:
                    return exc
        return None

    def pump(self) -> None:
        """Hand the upstream what its windows take now; called again when they open."""
        upstream = self.upstream
        if upstream is None:
            return
        pending = self.pending
        while pending:
            chunk = pending[0]
            last = self.request_ended and len(pending) == 1
            taken = upstream.send_nowait(chunk, end_stream=last)
            self.pending_bytes -= taken
            self._credit(taken)
            if taken < len(chunk):
                pending[0] = memoryview(chunk)[taken:]
                return
            pending.popleft()

    def _credit(self, size: int) -> None:
        if size <= 0:
            return
        self.conn.credit(size)
        if self.request_ended or self.closed:
            return  # the client sends nothing more on this stream: its window no longer matters
        self.uncredited += size
        if self.uncredited >= _STREAM_CREDIT_BATCH:
            self.recv_window += self.uncredited
            self.conn.write(frame(WINDOW_UPDATE, 0, self.id, struct.pack(">I", self.uncredited)))
            self.uncredited = 0

    # --- upstream -> client -----------------------------------------------------------------

    async def run(self) -> None:
        try:
            await self._proxy()
        except asyncio.CancelledError:
            self._drop_upstream("the call was cancelled")
            raise
        except Exception:
            logger.exception("native gRPC call %s failed inside the gateway", self.path)
            self._drop_upstream("the gateway failed")
            if not self.closed:
                self._answer_locally(grpc.StatusCode.INTERNAL, "the gateway failed while handling this call")
        finally:
            self._close()

    async def _proxy(self) -> None:
        if self.closed:  # answered before the task ran (a request message over the limit)
            return
        config = self.conn.server.config
        try:
            admitted = await admit(
                config,
                protocol="grpc",
                path=self.path,
                service=self.service,
                method=self.method,
                credentials=self.scope["headers"],
                scope=self.scope,
            )
        except GatewayError as exc:
            self._answer_locally(exc.code, exc.message, exc.headers)
            return
        self.metadata += admitted.identity_metadata
        if self.request_ended:
            # The whole request is here (a unary or server-streaming call, nearly always): HEADERS and
            # DATA leave in one write, and a refused attempt can be sent again.
            self.body = self._take_body()
        timeout = admitted.deadline(self.requested_timeout)
        try:
            await run_attempts(config, admitted, timeout, self.attempt, resendable=self.body is not None)
        except GatewayError as exc:  # every replica's breaker is open
            self._answer_locally(exc.code, exc.message, exc.headers)

    def _take_body(self) -> bytes:
        """The whole request (the client half-closed), taken from `pending`."""
        body = self.pending[0] if len(self.pending) == 1 else b"".join(self.pending)
        self.pending.clear()
        self.pending_bytes = 0
        self.conn.credit(len(body))  # the gateway holds these bytes no longer, whatever happens
        return bytes(body)

    async def attempt(self, replica: Replica, timeout: float | None) -> grpc.StatusCode | Refused:
        """Run the call on `replica`; returns how it ended. A refusal before anything reached the
        client is not answered but handed back (Refused): the attempts driver may try another replica."""
        if self.closed:  # the client reset the stream while an earlier attempt was refused
            return grpc.StatusCode.CANCELLED
        client, body = replica.client, self.body
        try:
            if body is not None:
                upstream = await client.unary(self.path, self.metadata, body, timeout)
            else:
                # Request messages follow as they come (pump); until the stream opens they wait in
                # `pending`, so a call that never reached this replica can still go to another.
                upstream = await client.open(self.path, self.metadata, timeout)
        except StreamError as exc:
            code, reason = exc.code, explain(exc, self.service)

            async def answer() -> None:
                self._answer_locally(code, reason)

            return Refused(code, answer, unsent=isinstance(exc, NeverProcessed))
        if self.closed:  # the client reset the stream while the upstream one was opening
            upstream.cancel("the client cancelled the call")
            return grpc.StatusCode.CANCELLED
        self.upstream = upstream
        if self.pending or not self.request_ended:
            upstream.on_writable = self.pump
            self.pump()
        await upstream.wait_for_headers()
        if upstream.headers is not None and not upstream.ended and not upstream.has_message and not self.closed:
            # Headers ahead of the first message (a stream whose server answers later): the client
            # gets them now, as from a direct call, not with that message.
            self._send_headers(upstream)
        message = await upstream.read()
        if message is not None:
            if not self.headers_sent:
                self._send_headers(upstream)
            while message is not None:
                # Within the client's windows: until it reads, the call reads no further upstream.
                await self.conn.send_data(self, message, False)
                if self.closed:
                    return grpc.StatusCode.CANCELLED
                message = await upstream.read()
        if self.closed:
            return grpc.StatusCode.CANCELLED
        result = outcome(upstream, self.service)
        if result.code is grpc.StatusCode.UNAVAILABLE and not self.headers_sent:
            self.upstream = None  # a next attempt opens its own

            async def finish() -> None:
                self._finish(upstream, result)

            # Refused by GOAWAY or REFUSED_STREAM: another replica may take it, if the gateway still
            # holds the request (a streamed one went out to this replica as it came).
            unsent = isinstance(upstream.error, NeverProcessed) and body is not None
            return Refused(result.code, finish, unsent=unsent)
        self._finish(upstream, result)
        return result.code

    def _finish(self, upstream: Http2Stream, result: Outcome) -> None:
        """The status, after the messages (if any)."""
        if not self.headers_sent and upstream.headers is not None and response_metadata(upstream.headers):
            self._send_headers(upstream)  # response metadata, but no message
        block = [encode_header(b"grpc-status", result.status)]
        if result.message:
            block.append(encode_header(b"grpc-message", result.message))
        block += [encode_header(name, value) for name, value in result.metadata]
        self._end(b"".join(block))

    def _send_headers(self, upstream: Http2Stream) -> None:
        fields = [encode_header(name, value) for name, value in response_metadata(upstream.headers or ())]
        self.headers_sent = True
        self.conn.write_headers(self.id, RESPONSE_START + b"".join(fields), end_stream=False)

    @property
    def done_sending(self) -> bool:
        return self.closed

    def wake(self) -> None:
        waiter = self.window_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _answer_locally(self, code: grpc.StatusCode, message: str, metadata: dict[str, str] | None = None) -> None:
        """Trailers-only: the call ends before any answer from an upstream."""
        self._end(_status_block(code, message, metadata))

    def _end(self, trailers: bytes) -> None:
        if self.closed:
            return
        conn = self.conn
        conn.write_headers(self.id, trailers if self.headers_sent else RESPONSE_START + trailers, end_stream=True)
        if not self.request_ended:
            # Answered before the client finished sending: it may stop (RFC 9113 8.1).
            conn.write(frame(RST_STREAM, 0, self.id, struct.pack(">I", NO_ERROR)))
        self.closed = True

    # --- endings ----------------------------------------------------------------------------

    def on_reset(self) -> None:
        """The client reset the stream, or the connection is gone: the upstream call is cancelled."""
        self.closed = True
        self.wake()
        if self.upstream is not None:
            self._drop_upstream("the client cancelled the call")
        elif self.task is not None:
            self.task.cancel()  # still opening the upstream stream
        self._close()

    def abort(self) -> None:
        """Shutdown past the grace period: the client gets RST_STREAM CANCEL."""
        if not self.closed:
            self.conn.write(frame(RST_STREAM, 0, self.id, struct.pack(">I", CANCEL)))
        self.on_reset()

    def _drop_upstream(self, reason: str) -> None:
        upstream = self.upstream
        if upstream is not None and not upstream.ended:
            upstream.cancel(reason)

    def _close(self) -> None:
        conn = self.conn
        if conn.streams.get(self.id) is self:
            del conn.streams[self.id]
            # Request bytes that will never go upstream still count against the connection window.
            conn.credit(self.pending_bytes)
            self.pending.clear()
            self.pending_bytes = 0
            conn.send_waiters.discard(self)
            if self.upstream is not None:
                self.upstream.on_writable = None
            conn.stream_closed()


def _status_block(code: grpc.StatusCode, message: str, metadata: dict[str, str] | None = None) -> bytes:
    block = encode_header(b"grpc-status", str(code.value[0]).encode())
    if message:
        block += encode_header(b"grpc-message", percent_encode(message).encode("ascii"))
    for key, value in (metadata or {}).items():
        block += encode_header(key.encode("ascii"), value.encode("latin-1"))
    return block


def refuse_call(conn: ServerConnection[IngressServer], stream_id: int, end_stream: bool, error: GatewayError) -> None:
    """Answer a stream trailers-only with `error`, before any call starts for it."""
    conn.write_headers(stream_id, RESPONSE_START + _status_block(error.code, error.message), end_stream=True)
    if not end_stream:
        conn.write(frame(RST_STREAM, 0, stream_id, struct.pack(">I", NO_ERROR)))  # its DATA is not wanted


def start_call(
    conn: ServerConnection[IngressServer], stream_id: int, headers: list[tuple[bytes, bytes]], end_stream: bool
) -> None:
    """A client opened a stream: answer what is not a gRPC call, start the call task for what is
    (proxied, or answered by the gateway for the paths in the server's `local`)."""
    method = path = content_type = b""
    timeout: float | None = None
    fields = []
    forward_authorization = conn.server.config.forward_authorization
    for name, value in headers:
        if name[:1] == b":":
            if name == b":path":
                path = value
            elif name == b":method":
                method = value
            continue
        if (
            name.startswith(b"x-upf-")
            or is_identity_header(name)  # other proxies' identity headers (gateway/edge/identity_headers.py)
            or (name == b"authorization" and not forward_authorization)
        ):
            continue  # identity headers are the gateway's to set (see gateway/auth/verify.py)
        if name in _NOT_FORWARDED:
            if name == b"grpc-timeout":
                try:
                    timeout = parse_timeout(value)
                except GatewayError:
                    timeout = None  # grpc servers ignore a malformed timeout too
            elif name == b"content-type":
                content_type = value
            continue
        fields.append(encode_header(name, value))
    if not path or not method:
        conn.write(frame(RST_STREAM, 0, stream_id, struct.pack(">I", PROTOCOL_ERROR)))  # malformed request
        return
    if method != b"POST" or not content_type.startswith(b"application/grpc"):
        status = b"405" if method != b"POST" else b"415"
        conn.write_headers(stream_id, b"\x08\x03" + status, end_stream=True)  # :status, static name 8
        if not end_stream:
            conn.write(frame(RST_STREAM, 0, stream_id, struct.pack(">I", NO_ERROR)))
        return
    text_path = path.decode("latin-1")
    service, _, method_name = text_path[1:].partition("/")
    # Auth and the limiter's identity functions read an ASGI-like scope.
    scope = {"type": "http", "client": conn.peer, "headers": headers, "path": text_path}
    open_local = conn.server.local.get(text_path)
    call: IngressCall
    if open_local is not None:  # a method the gateway serves itself (server reflection)
        call = open_local(conn, stream_id, text_path, scope)
    else:
        call = IngressCall(conn, stream_id, text_path, service, method_name, b"".join(fields), timeout, scope)
    conn.streams[stream_id] = call
    if end_stream:
        call.on_data(b"", True)
    call.task = conn.loop.create_task(call.run())
