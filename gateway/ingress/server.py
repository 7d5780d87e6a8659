"""Native gRPC ingress: the gateway's own HTTP/2 server (h2c, prior knowledge) proxying every call to the upstreams.

Why not grpc.aio's server: its machinery costs ~150 us of CPU per call, plus an async generator
and a pump task per proxied call, about as much again. The four call kinds differ on the wire
only in how many messages each side sends, so the proxy works at the frame level and needs no
descriptors: request headers open an upstream stream through the gateway's HTTP/2 client (the
service in :path picks the upstream), request DATA goes upstream as bytes (half-close as
END_STREAM), the upstream's response headers (as soon as they arrive, ahead of the first message),
messages and status come back to the client.

One asyncio.Protocol per connection. A call is one task (open upstream, then relay the answer);
request bytes go upstream straight from data_received, without a task or a copy.

Flow control, both ways, keeps memory bounded whatever the peers do:
- client -> upstream: the client's stream and connection windows are credited only as the
  upstream accepts the bytes, so a slow upstream holds the client back;
- upstream -> client: DATA goes out only within the client's windows; until it does, the call
  reads no further from its upstream stream, whose window is then not refilled.

A method's manifest policy caps the deadline (`timeout`); a call to an idempotent method whose
request was complete when it started is retried on another replica when one refuses it before
answering (gateway/upstream/retry.py).

Shutdown: GOAWAY (new streams are refused), running calls finish within the grace period, then
the rest are cancelled. A client that breaks the protocol gets GOAWAY with the error code and
its connection closed; other connections are untouched.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
from collections import deque
from collections.abc import Callable
from typing import Any, cast

import grpc
import hpack

from gateway.auth.authenticator import Authenticator
from gateway.auth.identity import IDENTITY_SCOPE_KEY
from gateway.corking import CorkedTransport
from gateway.errors import GatewayError, RateLimited
from gateway.http2.frames import (
    ACK,
    CANCEL,
    COMPRESSION_ERROR,
    CONTINUATION,
    DATA,
    DEFAULT_WINDOW,
    END_HEADERS,
    END_STREAM,
    ENHANCE_YOUR_CALM,
    FLOW_CONTROL_ERROR,
    FRAME_HEADER,
    FRAME_SIZE_ERROR,
    GOAWAY,
    HEADERS,
    INTERNAL_ERROR,
    MAX_MAX_FRAME,
    MAX_STREAM_ID,
    MAX_WINDOW,
    MIN_MAX_FRAME,
    NO_ERROR,
    PADDED,
    PING,
    PREFACE,
    PRIORITY,
    PRIORITY_FLAG,
    PROTOCOL_ERROR,
    PUSH_PROMISE,
    REFUSED_STREAM,
    RST_STREAM,
    SETTINGS,
    SETTINGS_ENABLE_PUSH,
    SETTINGS_HEADER_TABLE_SIZE,
    SETTINGS_INITIAL_WINDOW_SIZE,
    SETTINGS_MAX_CONCURRENT_STREAMS,
    SETTINGS_MAX_FRAME_SIZE,
    SETTINGS_MAX_HEADER_LIST_SIZE,
    STREAM_CLOSED,
    WINDOW_UPDATE,
    Gatherer,
    frame,
    frame_need,
)
from gateway.ratelimit.calls import CallLimiter
from gateway.ratelimit.keys import Identify
from gateway.upstream.client import UpstreamClient
from gateway.upstream.headers import encode_header
from gateway.upstream.http2 import Http2Stream, StreamError
from gateway.upstream.outcome import Outcome, explain, outcome
from gateway.upstream.policies import MethodPolicies, cap_timeout
from gateway.upstream.pool import UpstreamPool
from gateway.upstream.retry import Retries
from gateway.wire.metadata import response_metadata
from gateway.wire.status import percent_encode
from gateway.wire.timeout import parse_timeout

__all__ = ["IngressServer"]

logger = logging.getLogger(__name__)

MAX_CONCURRENT_STREAMS = 1000
# What a client may send on one stream, and on the connection, before the upstream has taken it:
# the most request data the gateway holds for a client.
STREAM_WINDOW = 1024 * 1024
CONNECTION_WINDOW = 16 * 1024 * 1024
MAX_FRAME = 1024 * 1024  # the largest frame a client may send us (and so the most a partial frame holds)
MAX_HEADER_LIST = 64 * 1024
HEADER_TABLE_SIZE = 4096  # the protocol default: hpack.Decoder's own limit
# Window updates to the client go out in batches this large, not one per message.
_STREAM_CREDIT_BATCH = STREAM_WINDOW // 4
_CONNECTION_CREDIT_BATCH = CONNECTION_WINDOW // 4

# Headers the upstream request does not carry from the client: pseudo-headers and these are rebuilt
# by the HTTP/2 client (content-type, te, user-agent, grpc-accept-encoding: the gateway decompresses
# answers itself), or are hop-by-hop (RFC 9110 7.6.1). grpc-timeout becomes the upstream deadline.
# grpc-encoding is forwarded: request messages go upstream exactly as the client compressed them.
_NOT_FORWARDED = frozenset(
    {
        b"te", b"content-type", b"user-agent", b"grpc-accept-encoding", b"grpc-timeout", b"host",
        b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade", b"content-length",
    }
)  # fmt: skip

# HPACK: ":status: 200" is static index 8; content-type (static name 31) as a literal without indexing.
_STATUS_200 = b"\x88"
_GRPC_CONTENT_TYPE = b"\x0f\x10" + bytes((len(b"application/grpc"),)) + b"application/grpc"
_RESPONSE_START = _STATUS_200 + _GRPC_CONTENT_TYPE


class _Refused:
    """An attempt the upstream refused before answering anything; `answer` tells the client so."""

    __slots__ = ("answer", "code")

    def __init__(self, code: grpc.StatusCode, answer: Callable[[], None]) -> None:
        self.code = code
        self.answer = answer


class _ConnectionError(Exception):
    """The client broke the protocol: GOAWAY with this code, then the connection closes."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class _Call:
    """One client stream, proxied to one upstream stream."""

    __slots__ = (
        "body_left",
        "closed",
        "conn",
        "headers_sent",
        "id",
        "idempotent",
        "metadata",
        "path",
        "pending",
        "pending_bytes",
        "prefix",
        "recv_window",
        "request_ended",
        "scope",
        "send_window",
        "service",
        "task",
        "timeout",
        "uncredited",
        "upstream",
        "waiter",
    )  # fmt: skip

    def __init__(
        self,
        conn: _Connection,
        stream_id: int,
        path: str,
        service: str,
        metadata: bytes,
        timeout: float | None,
        scope: dict[str, Any] | None = None,
        idempotent: bool = False,
    ) -> None:
        self.conn = conn
        self.idempotent = idempotent  # the manifest says so: may be retried when the request is complete
        # The request as auth and the rate limiter read it (peer, headers, path); None when neither runs.
        self.scope = scope
        self.id = stream_id
        self.path = path
        self.service = service
        self.metadata = metadata
        self.timeout = timeout
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
        self.waiter: asyncio.Future[None] | None = None

    # --- client -> upstream -----------------------------------------------------------------

    def on_data(self, data: bytes, end_stream: bool) -> None:
        if self.closed:  # answered already: what the client still sends is dropped
            self.conn.credit(len(data))
            return
        if data and not self._within_limit(data):
            limit = self.conn.server.max_message_bytes
            self._answer_locally(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"request message larger than the gateway's limit of {limit} bytes",
            )
            self._drop_upstream("the request message is too large")
            self.conn.credit(len(data))
            return
        if end_stream:
            self.request_ended = True
        if data or end_stream:
            self.pending.append(data)
            self.pending_bytes += len(data)
        if self.upstream is not None:
            self.pump()

    def _within_limit(self, data: bytes) -> bool:
        """Follow the gRPC message prefixes across DATA frames: False once one announces too large a message."""
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
                self.body_left = int.from_bytes(self.prefix[1:5], "big")
                self.prefix.clear()
                if self.body_left > self.conn.server.max_message_bytes:
                    return False
        return True

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
        try:
            server = self.conn.server
            scope = self.scope
            if server.authenticator is not None and scope is not None:
                identity = await server.authenticator.authenticate(self.path, scope["headers"])
                if identity is not None:
                    scope[IDENTITY_SCOPE_KEY] = identity  # before the limiter: `token` keys read it
                    self.metadata += identity.metadata
            limiter = server.limiter
            if limiter is not None and server.identify is not None and scope is not None:
                limit = await limiter.check(server.identify(scope), self.path)
                if limit is not None and not limit[1].allowed:
                    policy, decision = limit
                    wait = policy.retry_after(decision)
                    raise RateLimited(f"rate limit exceeded; retry in {wait} s", headers=policy.headers(decision))
            route = self.conn.server.pool.route(self.service)
            endpoint = route.pick()
        except GatewayError as exc:
            self._answer_locally(exc.code, exc.message, exc.headers)
            return
        retries = self.conn.server.retries
        if retries is None or not self.idempotent or not self.request_ended:
            verdict: grpc.StatusCode | _Refused = grpc.StatusCode.CANCELLED  # the breaker learns nothing, unless set
            try:
                verdict = await self._relay(endpoint.client)
            finally:
                endpoint.report(verdict if isinstance(verdict, grpc.StatusCode) else verdict.code)
            return
        # Retryable: the whole request is here, so it can be sent again.
        body = self._take_body()
        retries.budget.deposit()
        loop = self.conn.loop
        deadline = None if self.timeout is None else loop.time() + self.timeout
        attempt = 1
        while True:
            ended: grpc.StatusCode | _Refused = grpc.StatusCode.CANCELLED
            try:
                ended = await self._relay(endpoint.client, body, retryable=attempt < retries.max_attempts)
            finally:
                endpoint.report(ended if isinstance(ended, grpc.StatusCode) else ended.code)
            if not isinstance(ended, _Refused):
                if attempt > 1:
                    retries.finished(ended)
                return
            retry = retries.next_replica(route, endpoint) if not self.closed else None
            if retry is not None and deadline is not None and (left := deadline - loop.time()) <= 0:
                retry.report(grpc.StatusCode.CANCELLED)
                retry = None
            if retry is None:
                ended.answer()
                return
            if deadline is not None:
                self.timeout = left
            endpoint, attempt = retry, attempt + 1

    def _take_body(self) -> bytes:
        """The whole request (the client half-closed), taken from `pending`."""
        body = self.pending[0] if len(self.pending) == 1 else b"".join(self.pending)
        self.pending.clear()
        self.pending_bytes = 0
        self.conn.credit(len(body))  # the gateway holds these bytes no longer, whatever happens
        return bytes(body)

    async def _relay(
        self, client: UpstreamClient, body: bytes | None = None, *, retryable: bool = False
    ) -> grpc.StatusCode | _Refused:
        """Run the call on `client`; returns how it ended, for the replica's circuit breaker. With
        `retryable` (`body` given), a refusal before anything reached the client is not answered
        but handed back (_Refused)."""
        try:
            if body is None and self.request_ended:
                # The whole request is here (a unary or server-streaming call, nearly always): HEADERS
                # and DATA leave in one write.
                body = self._take_body()
            if body is not None:
                upstream = await client.unary(self.path, self.metadata, body, self.timeout)
            else:
                upstream = await client.open(self.path, self.metadata, self.timeout)
        except StreamError as exc:
            code, reason = exc.code, explain(exc, self.service)
            if retryable and code is grpc.StatusCode.UNAVAILABLE:
                return _Refused(code, lambda: self._answer_locally(code, reason))
            self._answer_locally(code, reason)
            return code
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
                if not self._send_now(message):
                    await self._send_later(message)
                if self.closed:
                    return grpc.StatusCode.CANCELLED
                message = await upstream.read()
        if self.closed:
            return grpc.StatusCode.CANCELLED
        result = outcome(upstream, self.service)
        if retryable and result.code is grpc.StatusCode.UNAVAILABLE and not self.headers_sent:
            self.upstream = None  # the next attempt opens its own
            return _Refused(result.code, lambda: self._finish(upstream, result))
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
        self.conn.write_headers(self.id, _RESPONSE_START + b"".join(fields), end_stream=False)

    def _send_now(self, data: bytes) -> bool:
        """DATA within the client's windows: True when all of it went out (the usual case)."""
        conn = self.conn
        size = len(data)
        if size <= self.send_window and size <= conn.send_window and size <= conn.peer_max_frame:
            self.send_window -= size
            conn.send_window -= size
            conn.write(FRAME_HEADER.pack((size << 8) | DATA, 0, self.id) + data)
            return True
        return False

    async def _send_later(self, data: bytes) -> None:
        conn = self.conn
        view = memoryview(data)
        while view and not self.closed:
            size = min(len(view), self.send_window, conn.send_window, conn.peer_max_frame)
            if size > 0:
                self.send_window -= size
                conn.send_window -= size
                conn.write(frame(DATA, 0, self.id, view[:size]))
                view = view[size:]
                continue
            # The client has not read what it was sent: wait for its WINDOW_UPDATE, reading no
            # further from the upstream meanwhile.
            self.waiter = conn.loop.create_future()
            if conn.send_window <= 0:
                conn.send_waiters.add(self)
            try:
                await self.waiter
            finally:
                self.waiter = None

    def wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _answer_locally(self, code: grpc.StatusCode, message: str, metadata: dict[str, str] | None = None) -> None:
        """Trailers-only: the call ends before any answer from an upstream."""
        block = encode_header(b"grpc-status", str(code.value[0]).encode())
        if message:
            block += encode_header(b"grpc-message", percent_encode(message).encode("ascii"))
        for key, value in (metadata or {}).items():
            block += encode_header(key.encode("ascii"), value.encode("latin-1"))
        self._end(block)

    def _end(self, trailers: bytes) -> None:
        if self.closed:
            return
        conn = self.conn
        conn.write_headers(self.id, trailers if self.headers_sent else _RESPONSE_START + trailers, end_stream=True)
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


class _Connection(asyncio.Protocol):
    def __init__(self, server: IngressServer) -> None:
        self.server = server
        self.loop = asyncio.get_running_loop()
        self.transport: CorkedTransport | None = None
        self.streams: dict[int, _Call] = {}
        self.send_waiters: set[_Call] = set()
        self.last_stream_id = 0
        self.peer_max_frame = MIN_MAX_FRAME
        self.peer_initial_window = DEFAULT_WINDOW
        self.send_window = DEFAULT_WINDOW  # what we may still send the client on the connection
        self.recv_window = CONNECTION_WINDOW  # what the client may still send us on the connection
        self._uncredited = 0
        self._decoder = hpack.Decoder(max_header_list_size=MAX_HEADER_LIST)
        self._decoder.max_allowed_table_size = HEADER_TABLE_SIZE
        self._preface = False
        self._gatherer = Gatherer()
        self._header_block: tuple[int, int, bytearray] | None = None  # stream, flags, fragments so far
        self.going_away = False
        self.peer: tuple[str, int] | None = None  # the client's address, for rate-limit keys

    # --- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        self.peer = (str(peer[0]), int(peer[1])) if peer else None
        # Frames written during one loop iteration (often several calls' worth) leave in one send().
        # uvloop's transports do not subclass asyncio's, hence the cast.
        self.transport = CorkedTransport(cast(asyncio.Transport, transport), asyncio.get_running_loop())
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        settings = struct.pack(
            ">HIHIHIHIHIHI",
            SETTINGS_HEADER_TABLE_SIZE, HEADER_TABLE_SIZE,
            SETTINGS_ENABLE_PUSH, 0,
            SETTINGS_MAX_CONCURRENT_STREAMS, MAX_CONCURRENT_STREAMS,
            SETTINGS_INITIAL_WINDOW_SIZE, STREAM_WINDOW,
            SETTINGS_MAX_FRAME_SIZE, MAX_FRAME,
            SETTINGS_MAX_HEADER_LIST_SIZE, MAX_HEADER_LIST,
        )  # fmt: skip
        window = struct.pack(">I", CONNECTION_WINDOW - DEFAULT_WINDOW)
        self.transport.write(frame(SETTINGS, 0, 0, settings) + frame(WINDOW_UPDATE, 0, 0, window))
        self.server.connections.add(self)
        if self.server.closing:
            self.go_away()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        for call in list(self.streams.values()):
            call.on_reset()
        self.server.connection_closed(self)

    def data_received(self, data: bytes) -> None:
        if self.transport is None:
            return
        buffer = self._gatherer.take(data)
        if buffer is None:
            return  # part of a frame (or of the preface): more to come
        offset, size = 0, len(buffer)
        try:
            if not self._preface:
                if size < len(PREFACE):
                    if not PREFACE.startswith(buffer):
                        raise _ConnectionError(PROTOCOL_ERROR, "not an HTTP/2 connection preface")
                    self._gatherer.keep(buffer, 0, len(PREFACE))
                    return
                if not buffer.startswith(PREFACE):
                    raise _ConnectionError(PROTOCOL_ERROR, "not an HTTP/2 connection preface")
                self._preface = True
                offset = len(PREFACE)
            while size - offset >= 9:
                head, flags, stream_id = FRAME_HEADER.unpack_from(buffer, offset)
                length = head >> 8
                if length > MAX_FRAME:
                    raise _ConnectionError(FRAME_SIZE_ERROR, f"frame of {length} bytes exceeds SETTINGS_MAX_FRAME_SIZE")
                end = offset + 9 + length
                if end > size:
                    break
                self._on_frame(head & 0xFF, flags, stream_id & MAX_STREAM_ID, buffer[offset + 9 : end])
                offset = end
                if self.transport is None or self.transport.is_closing():
                    return
        except _ConnectionError as exc:
            self._fail(exc.code, str(exc))
            return
        except Exception:
            logger.exception("native gRPC connection failed inside the gateway")
            self._fail(INTERNAL_ERROR, "internal error")
            return
        if offset < size:
            self._gatherer.keep(buffer, offset, frame_need(buffer, offset))

    # --- frames -----------------------------------------------------------------------------

    def _on_frame(self, kind: int, flags: int, stream_id: int, payload: bytes) -> None:
        if self._header_block is not None and (kind != CONTINUATION or stream_id != self._header_block[0]):
            raise _ConnectionError(PROTOCOL_ERROR, "header block interrupted")
        if kind == DATA:
            self._on_data(flags, stream_id, payload)
        elif kind == HEADERS:
            if stream_id == 0:
                raise _ConnectionError(PROTOCOL_ERROR, "HEADERS on stream 0")
            if flags & PADDED:
                if not payload or payload[0] >= len(payload):
                    raise _ConnectionError(PROTOCOL_ERROR, "padding longer than the frame")
                payload = payload[1 : len(payload) - payload[0]]
            if flags & PRIORITY_FLAG:
                if len(payload) < 5:
                    raise _ConnectionError(FRAME_SIZE_ERROR, "HEADERS too short for its priority")
                payload = payload[5:]
            if flags & END_HEADERS:
                self._on_header_block(stream_id, flags, payload)
            else:
                self._header_block = (stream_id, flags, bytearray(payload))
        elif kind == CONTINUATION:
            if self._header_block is None:
                raise _ConnectionError(PROTOCOL_ERROR, "CONTINUATION without HEADERS")
            block_stream, block_flags, fragments = self._header_block
            fragments += payload
            if len(fragments) > MAX_HEADER_LIST:
                raise _ConnectionError(ENHANCE_YOUR_CALM, "header block too large")
            if flags & END_HEADERS:
                self._header_block = None
                self._on_header_block(block_stream, block_flags, bytes(fragments))
        elif kind == RST_STREAM:
            if stream_id == 0 or stream_id > self.last_stream_id:
                raise _ConnectionError(PROTOCOL_ERROR, "RST_STREAM on an idle stream")
            if len(payload) != 4:
                raise _ConnectionError(FRAME_SIZE_ERROR, "RST_STREAM is 4 bytes")
            call = self.streams.get(stream_id)
            if call is not None:
                call.on_reset()
        elif kind == SETTINGS:
            if stream_id != 0:
                raise _ConnectionError(PROTOCOL_ERROR, "SETTINGS on a stream")
            if flags & ACK:
                if payload:
                    raise _ConnectionError(FRAME_SIZE_ERROR, "SETTINGS ACK with a payload")
            else:
                self._on_settings(payload)
                self.write(frame(SETTINGS, ACK, 0))
        elif kind == PING:
            if stream_id != 0 or len(payload) != 8:
                raise _ConnectionError(PROTOCOL_ERROR if stream_id else FRAME_SIZE_ERROR, "malformed PING")
            if not flags & ACK:
                self.write(frame(PING, ACK, 0, payload))
        elif kind == WINDOW_UPDATE:
            if len(payload) != 4:
                raise _ConnectionError(FRAME_SIZE_ERROR, "WINDOW_UPDATE is 4 bytes")
            self._on_window_update(stream_id, struct.unpack(">I", payload)[0] & MAX_WINDOW)
        elif kind == GOAWAY:
            if stream_id != 0 or len(payload) < 8:
                raise _ConnectionError(PROTOCOL_ERROR, "malformed GOAWAY")
            # The client opens no more streams; the running ones finish, then the connection closes.
            self.going_away = True
            self.stream_closed()
        elif kind == PUSH_PROMISE:
            raise _ConnectionError(PROTOCOL_ERROR, "a client cannot push")
        elif kind == PRIORITY and (stream_id == 0 or len(payload) != 5):
            raise _ConnectionError(PROTOCOL_ERROR, "malformed PRIORITY")
        # Unknown frame types are ignored, as RFC 9113 requires.

    def _on_data(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id == 0:
            raise _ConnectionError(PROTOCOL_ERROR, "DATA on stream 0")
        if stream_id > self.last_stream_id:
            raise _ConnectionError(PROTOCOL_ERROR, "DATA on an idle stream")
        flow_length = len(payload)  # flow control counts the whole frame, padding included
        self.recv_window -= flow_length
        if self.recv_window < 0:
            raise _ConnectionError(FLOW_CONTROL_ERROR, "client overran the connection window")
        if flags & PADDED:
            if not payload or payload[0] >= len(payload):
                raise _ConnectionError(PROTOCOL_ERROR, "padding longer than the frame")
            payload = payload[1 : len(payload) - payload[0]]
        call = self.streams.get(stream_id)
        if call is None or call.request_ended:
            # A stream already answered or reset: the bytes are dropped, and given back at once.
            self.credit(flow_length)
            return
        call.recv_window -= flow_length
        if call.recv_window < 0:
            self.credit(flow_length)
            self.write(frame(RST_STREAM, 0, stream_id, struct.pack(">I", FLOW_CONTROL_ERROR)))
            call.on_reset()
            return
        self.credit(flow_length - len(payload))  # padding never goes upstream
        call.on_data(payload, bool(flags & END_STREAM))

    def _on_header_block(self, stream_id: int, flags: int, block: bytes) -> None:
        try:
            headers: list[tuple[bytes, bytes]] = self._decoder.decode(block, raw=True)  # type: ignore[assignment]
        except hpack.OversizedHeaderListError:
            raise _ConnectionError(ENHANCE_YOUR_CALM, "header list too large") from None
        except Exception as exc:  # hpack raises several types; all leave the decoder unusable
            raise _ConnectionError(COMPRESSION_ERROR, f"undecodable header block: {exc}") from None
        end_stream = bool(flags & END_STREAM)
        call = self.streams.get(stream_id)
        if call is not None:
            # Trailers from the client (gRPC clients send none): they can only end the request.
            if not end_stream:
                raise _ConnectionError(PROTOCOL_ERROR, "request trailers without END_STREAM")
            if not call.request_ended:
                call.on_data(b"", True)
            return
        if stream_id <= self.last_stream_id:
            raise _ConnectionError(STREAM_CLOSED, "HEADERS on a closed stream")
        if stream_id % 2 == 0:
            raise _ConnectionError(PROTOCOL_ERROR, "a client stream id must be odd")
        self.last_stream_id = stream_id
        if self.going_away or len(self.streams) >= MAX_CONCURRENT_STREAMS:
            # Never processed, so the client may safely retry it (on another connection).
            self.write(frame(RST_STREAM, 0, stream_id, struct.pack(">I", REFUSED_STREAM)))
            return
        self._start_call(stream_id, headers, end_stream)

    def _start_call(self, stream_id: int, headers: list[tuple[bytes, bytes]], end_stream: bool) -> None:
        method = path = content_type = b""
        timeout: float | None = None
        fields = []
        forward_authorization = self.server.forward_authorization
        for name, value in headers:
            if name[:1] == b":":
                if name == b":path":
                    path = value
                elif name == b":method":
                    method = value
                continue
            if name.startswith(b"x-upf-") or (name == b"authorization" and not forward_authorization):
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
            self.write(frame(RST_STREAM, 0, stream_id, struct.pack(">I", PROTOCOL_ERROR)))  # malformed request
            return
        if method != b"POST" or not content_type.startswith(b"application/grpc"):
            status = b"405" if method != b"POST" else b"415"
            self.write_headers(stream_id, b"\x08\x03" + status, end_stream=True)  # :status, static name 8
            if not end_stream:
                self.write(frame(RST_STREAM, 0, stream_id, struct.pack(">I", NO_ERROR)))
            return
        text_path = path.decode("latin-1")
        service, _, method_name = text_path[1:].partition("/")
        server = self.server
        policy = server.policies.get(service, method_name) if server.policies is not None else None
        timeout = cap_timeout(timeout, server.max_timeout, policy.timeout if policy is not None else None)
        scope = None
        if server.authenticator is not None or server.limiter is not None:
            # Auth and the limiter's identity functions read an ASGI-like scope.
            scope = {"type": "http", "client": self.peer, "headers": headers, "path": text_path}
        idempotent = policy is not None and policy.idempotent
        call = _Call(self, stream_id, text_path, service, b"".join(fields), timeout, scope, idempotent)
        self.streams[stream_id] = call
        if end_stream:
            call.on_data(b"", True)
        if service not in self.server.pool:
            refusal = self.server.pool.unroutable(service)
            call._answer_locally(refusal.code, refusal.message)
            call._close()
            return
        call.task = self.loop.create_task(call.run())

    def _on_settings(self, payload: bytes) -> None:
        if len(payload) % 6:
            raise _ConnectionError(FRAME_SIZE_ERROR, "SETTINGS length is not a multiple of 6")
        for offset in range(0, len(payload), 6):
            key, value = struct.unpack_from(">HI", payload, offset)
            if key == SETTINGS_INITIAL_WINDOW_SIZE:
                if value > MAX_WINDOW:
                    raise _ConnectionError(FLOW_CONTROL_ERROR, "SETTINGS_INITIAL_WINDOW_SIZE too large")
                delta = value - self.peer_initial_window
                self.peer_initial_window = value
                for call in self.streams.values():
                    call.send_window += delta
                    if delta > 0:
                        call.wake()
            elif key == SETTINGS_MAX_FRAME_SIZE:
                if not MIN_MAX_FRAME <= value <= MAX_MAX_FRAME:
                    raise _ConnectionError(PROTOCOL_ERROR, "SETTINGS_MAX_FRAME_SIZE out of range")
                self.peer_max_frame = value
            elif key == SETTINGS_ENABLE_PUSH and value > 1:
                raise _ConnectionError(PROTOCOL_ERROR, "SETTINGS_ENABLE_PUSH must be 0 or 1")
            # SETTINGS_HEADER_TABLE_SIZE: our responses never use the dynamic table, any size suits them.

    def _on_window_update(self, stream_id: int, increment: int) -> None:
        if stream_id == 0:
            if increment == 0:
                raise _ConnectionError(PROTOCOL_ERROR, "WINDOW_UPDATE of 0")
            self.send_window += increment
            if self.send_window > MAX_WINDOW:
                raise _ConnectionError(FLOW_CONTROL_ERROR, "connection window above 2^31-1")
            waiting = list(self.send_waiters)
            self.send_waiters.clear()
            for blocked in waiting:
                blocked.wake()
            return
        call = self.streams.get(stream_id)
        if call is None:
            return  # a closed stream: updates may still be in flight
        if increment == 0 or call.send_window + increment > MAX_WINDOW:
            code = PROTOCOL_ERROR if increment == 0 else FLOW_CONTROL_ERROR
            self.write(frame(RST_STREAM, 0, stream_id, struct.pack(">I", code)))
            call.on_reset()
            return
        call.send_window += increment
        call.wake()

    # --- used by calls and the server -------------------------------------------------------

    def write(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)

    def write_headers(self, stream_id: int, block: bytes, *, end_stream: bool) -> None:
        flags = END_STREAM if end_stream else 0
        limit = self.peer_max_frame
        if len(block) <= limit:
            self.write(FRAME_HEADER.pack((len(block) << 8) | HEADERS, flags | END_HEADERS, stream_id) + block)
            return
        chunks = [block[i : i + limit] for i in range(0, len(block), limit)]
        frames = [frame(HEADERS, flags, stream_id, chunks[0])]
        frames += [frame(CONTINUATION, 0, stream_id, chunk) for chunk in chunks[1:-1]]
        frames.append(frame(CONTINUATION, END_HEADERS, stream_id, chunks[-1]))
        self.write(b"".join(frames))

    def credit(self, size: int) -> None:
        """`size` request bytes are gone from the gateway (upstream or dropped): the client may send more."""
        if size <= 0:
            return
        self._uncredited += size
        if self._uncredited >= _CONNECTION_CREDIT_BATCH:
            self.recv_window += self._uncredited
            self.write(frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", self._uncredited)))
            self._uncredited = 0

    def stream_closed(self) -> None:
        if self.going_away and not self.streams:
            self.close()

    def go_away(self) -> None:
        """Graceful: streams up to the last one seen run to their end; the client opens no new ones."""
        if not self.going_away and self.transport is not None:
            self.going_away = True
            self.write(frame(GOAWAY, 0, 0, struct.pack(">II", self.last_stream_id, NO_ERROR)))
        self.stream_closed()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def abort_calls(self) -> None:
        for call in list(self.streams.values()):
            call.abort()
        self.close()

    def _fail(self, code: int, message: str) -> None:
        logger.info("native gRPC client broke the protocol (HTTP/2 error code %d): %s", code, message)
        self.write(frame(GOAWAY, 0, 0, struct.pack(">II", self.last_stream_id, code) + message.encode()[:256]))
        for call in list(self.streams.values()):
            call.on_reset()
        self.close()


def _listening_socket(host: str, port: int) -> socket.socket:
    """A listening socket with SO_REUSEPORT, so every worker process can listen on grpcPort."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


class IngressServer:
    def __init__(
        self,
        pool: UpstreamPool,
        *,
        host: str,
        port: int,
        max_message_bytes: int,
        max_timeout: float | None = None,
        limiter: CallLimiter | None = None,
        identify: Identify | None = None,
        authenticator: Authenticator | None = None,
        forward_authorization: bool = True,
        policies: MethodPolicies | None = None,
        retries: Retries | None = None,
    ) -> None:
        self.pool = pool
        self.authenticator = authenticator
        self.forward_authorization = forward_authorization
        self.policies = policies  # per-method deadline caps and idempotency, from the manifests
        self.retries = retries
        # Rate limiting as for HTTP: the same buckets, so a client's gRPC-Web and native calls add up.
        self.limiter = limiter if identify is not None else None
        self.identify = identify
        self.max_timeout = max_timeout
        self.address = f"{host}:{port}"
        self.max_message_bytes = max_message_bytes
        self.port = 0
        self.connections: set[_Connection] = set()
        self.closing = False
        self._host = host.strip("[]")
        self._requested_port = port
        self._server: asyncio.AbstractServer | None = None
        self._idle: asyncio.Event | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            sock = _listening_socket(self._host, self._requested_port)
        except OSError as exc:
            raise OSError(f"cannot listen for native gRPC on {self.address}: {exc}") from None
        self.port = sock.getsockname()[1]
        self._server = await loop.create_server(lambda: _Connection(self), sock=sock, backlog=1024)
        self._idle = asyncio.Event()
        self._idle.set()
        logger.info("native gRPC ingress listening on %s", self.address)

    def connection_closed(self, conn: _Connection) -> None:
        self.connections.discard(conn)
        if not self.connections and self._idle is not None:
            self._idle.set()

    async def stop(self, grace: float) -> None:
        server = self._server
        if server is None:
            return
        self._server = None
        self.closing = True
        server.close()  # no new connections
        for conn in list(self.connections):
            conn.go_away()
        if self.connections and self._idle is not None:
            self._idle.clear()
            try:
                await asyncio.wait_for(self._idle.wait(), grace)
            except TimeoutError:
                logger.warning("native gRPC calls still running after %g s: cancelled", grace)
        for conn in list(self.connections):
            conn.abort_calls()
        # Let the closed transports report connection_lost before the loop moves on.
        await asyncio.sleep(0)
