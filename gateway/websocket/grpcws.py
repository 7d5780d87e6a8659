"""The grpc-websockets bridge: gRPC calls of every kind from browsers, one WebSocket per call.

The protocol as improbable-eng/grpc-web's and nice-grpc-web's WebsocketTransport speak it, and the
choices made here (origin check, limits, flow control, drain): gateway/websocket/GRPCWS.md.
Admission and the attempts on replicas are the shared call path's (gateway/proxy/).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable, Sequence

import grpc
from starlette.types import Message, Receive, Scope, Send

from common.http2.client import Http2Stream, NeverProcessed, StreamError
from gateway.auth.identity import identity_of
from gateway.errors import BadRequest, GatewayError, MessageTooLarge, RateLimited
from gateway.proxy import ProxyConfig, Refused, admit, run_attempts
from gateway.upstream.outcome import gateway_error, outcome
from gateway.upstream.pool import Replica
from gateway.websocket.handshake import Upgrade
from gateway.websocket.open_sockets import CLOSE_GOING_AWAY, SHUTTING_DOWN, OpenSockets
from gateway.wire.framing import TRAILER_FLAG, encode_frame
from gateway.wire.metadata import RequestMetadata, parse_request_headers, response_metadata
from gateway.wire.request_frames import RequestFrames
from gateway.wire.status import status_lines

__all__ = [
    "CLOSE_GOING_AWAY",
    "CLOSE_NORMAL",
    "CLOSE_TOO_BIG",
    "MESSAGE_SLACK",
    "SUBPROTOCOL",
    "GrpcWebSocketEndpoint",
    "OpenSockets",
    "UnsupportedContentType",
    "max_websocket_message",
    "parse_header_block",
]

logger = logging.getLogger(__name__)

SUBPROTOCOL = "grpc-websockets"
# Room in one WebSocket message beyond a gRPC message of maxMessageBytes: its control byte and
# prefix, and a few small frames sent along with it. A header block is held to the same size.
MESSAGE_SLACK = 64 * 1024
CLOSE_NORMAL = 1000
CLOSE_TOO_BIG = 1009  # RFC 6455 "message too big"
CLOSE_TRY_AGAIN_LATER = 1013  # IANA WebSocket close code: a rate limit refused the call
CLOSE_POLICY = 1008  # RFC 6455 "policy violation": no header block in time

_HALF_CLOSE = b"\x01"
_CONTENT_TYPE = b"application/grpc-web+proto"
_BINARY_TYPES = frozenset((b"", b"application/grpc-web", b"application/grpc-web+proto"))
_TEXT_TYPES = b"application/grpc-web-text"

Headers = list[tuple[bytes, bytes]]


def max_websocket_message(max_message_bytes: int) -> int:
    """The largest WebSocket message a client may send (uvicorn's ws_max_size)."""
    return max_message_bytes + MESSAGE_SLACK


class UnsupportedContentType(GatewayError):
    code = grpc.StatusCode.UNIMPLEMENTED


class _ClientGone(Exception):
    """The socket was closed or lost on the client's side: nobody is left to answer."""


def parse_header_block(block: bytes) -> Headers:
    """The first client message, `name: value\\r\\n` lines, as (lower-case name, value) pairs."""
    pairs: Headers = []
    for raw in block.split(b"\n"):
        line = raw.strip()
        if not line:
            continue
        name, colon, value = line.partition(b":")
        name = name.strip().lower()
        if not colon or not name:
            shown = line[:80].decode("latin-1")
            raise BadRequest(f"the header block has a line that is not `name: value`: {shown!r}")
        value = value.strip()
        if name.endswith(b"-bin"):
            # improbable joins the values of one name with ", "; base64 has no comma of its own.
            pairs.extend((name, part.strip()) for part in value.split(b","))
        else:
            pairs.append((name, value))
    return pairs


def _request_metadata(
    pairs: list[tuple[bytes, bytes]],
    upgrade_headers: Iterable[tuple[bytes, bytes]],
    forward_cookies: bool,
    forward_authorization: bool,
) -> RequestMetadata:
    media = b""
    for name, value in pairs:
        if name == b"content-type":
            media = value.split(b";", 1)[0].strip().lower()
    if media.startswith(_TEXT_TYPES):
        raise UnsupportedContentType(
            "the grpc-web-text format is not supported over WebSocket: send application/grpc-web+proto"
        )
    if media not in _BINARY_TYPES:
        raise UnsupportedContentType(
            f"content-type {media.decode('latin-1')!r} is not supported over WebSocket: send application/grpc-web+proto"
        )
    if forward_cookies:
        # The browser sends its cookies on the upgrade request, not in the header block.
        pairs += [(name, value) for name, value in upgrade_headers if name == b"cookie"]
    return parse_request_headers(pairs, forward_cookies=forward_cookies, forward_authorization=forward_authorization)


def _block(lines: Iterable[tuple[bytes, bytes]]) -> bytes:
    return b"".join(name + b": " + value + b"\r\n" for name, value in lines)


class _Socket:
    """Everything the client gets, in order: one header frame, message frames, one trailer frame, a close."""

    __slots__ = ("_send", "_sockets", "closed", "cut", "ended", "headers_sent", "in_call")

    def __init__(self, send: Send, sockets: OpenSockets) -> None:
        self._send = send
        self._sockets = sockets
        self.headers_sent = False
        self.ended = False  # the trailer frame went out
        self.closed = False
        self.in_call = False  # the header block arrived: a drain lets the call finish
        self.cut = False  # the drain's grace ran out and cancelled this call

    async def _write(self, data: bytes) -> None:
        try:
            await self._send({"type": "websocket.send", "bytes": data})
        except OSError:  # uvicorn's ClientDisconnected: the socket is gone
            raise _ClientGone from None

    async def headers(self, metadata: Headers) -> None:
        if not self.headers_sent:
            self.headers_sent = True
            await self._write(encode_frame(_block([(b"content-type", _CONTENT_TYPE), *metadata]), TRAILER_FLAG))

    async def messages(self, frames: list[bytes]) -> None:
        await self._write(frames[0] if len(frames) == 1 else b"".join(frames))

    async def end(self, lines: Headers, metadata: Headers, close_code: int = CLOSE_NORMAL) -> None:
        await self.headers(metadata)
        self.ended = True
        await self._write(encode_frame(_block(lines), TRAILER_FLAG))
        await self.close(close_code)

    async def fail(
        self, code: grpc.StatusCode, message: str, close_code: int = CLOSE_NORMAL, metadata: Headers | None = None
    ) -> None:
        """End the call with the gateway's own status, as far as the socket still allows."""
        try:
            if not self.ended:
                await self.end([*status_lines(code, message), *(metadata or [])], [], close_code)
            else:
                await self.close(close_code)
        except _ClientGone:
            pass

    async def close(self, code: int, reason: str = "") -> None:
        if code == CLOSE_NORMAL and self._sockets.draining:
            code = CLOSE_GOING_AWAY  # the call is over, but the client must not come back to this process
        if not self.closed:
            self.closed = True
            with contextlib.suppress(OSError):  # gone already: nothing to close
                await self._send({"type": "websocket.close", "code": code, "reason": reason})

    async def going_away(self) -> None:
        """The drain: a socket without a call (its handler waits for the header block) closes now."""
        if not self.in_call:
            await self.close(CLOSE_GOING_AWAY)


class _Requests:
    """Client -> upstream, in a task of its own while the call relays the answer.

    Ends in one of three ways, which the call reads once the upstream stream has ended: the client
    left (`gone`), the client broke the protocol or a limit (`failure`), or the call ended first and
    this task was cancelled. The first two cancel the upstream stream, which ends the relay.
    """

    __slots__ = ("_frames", "_max_size", "_next", "_receive", "_stream", "failure", "gone")

    def __init__(self, receive: Receive, stream: Http2Stream, frames: RequestFrames, max_size: int) -> None:
        self._receive = receive
        self._stream = stream
        self._frames = frames
        self._max_size = max_size
        # A message read early, while waiting for the upstream's window, to notice a client that leaves.
        self._next: asyncio.Task[Message] | None = None
        self.gone = False
        self.failure: GatewayError | None = None

    async def run(self) -> None:
        try:
            await self._forward()
        except _ClientGone:
            self.gone = True
            self._stream.cancel("the client closed the WebSocket")
        except GatewayError as exc:
            self.failure = exc
            self._stream.cancel(exc.message)
        except Exception:
            logger.exception("grpc-websockets: forwarding a request stream failed inside the gateway")
            self.failure = GatewayError("the gateway failed while handling this call")
            self._stream.cancel()
        finally:
            if self._next is not None:
                self._next.cancel()

    async def _message(self) -> Message:
        if self._next is not None:
            task, self._next = self._next, None
            return await task
        return await self._receive()

    async def _forward(self) -> None:
        half_closed = False
        while True:
            message = await self._message()
            if message["type"] != "websocket.receive":
                raise _ClientGone  # websocket.disconnect: closed by the client, lost, or too big for the server
            data: bytes | None = message.get("bytes")
            if data is None:
                raise BadRequest("grpc-websockets messages are binary; the client sent a text message")
            if half_closed:
                raise BadRequest("the client sent a message after its half-close (0x01)")
            if len(data) > self._max_size:
                raise MessageTooLarge(
                    f"a WebSocket message of {len(data)} bytes is larger than the gateway's limit of "
                    f"{self._max_size} bytes"
                )
            if data == _HALF_CLOSE:
                self._frames.close()
                half_closed = True
                await self._upstream(b"", end_stream=True)
            elif data[:1] == b"\x00":
                payload = self._frames.feed(memoryview(data)[1:])
                if payload:
                    await self._upstream(payload, end_stream=False)
            else:
                control = f"0x{data[0]:02x}" if data else "none (an empty message)"
                raise BadRequest(f"unknown grpc-websockets control byte: {control}; expected 0x00 (data) or 0x01")

    async def _upstream(self, data: bytes | memoryview, end_stream: bool) -> None:
        """Send within the upstream's flow-control windows; the next message is read only after."""
        stream = self._stream
        view = memoryview(data)
        taken = stream.send_nowait(view, end_stream)
        while taken < len(view):
            await self._writable()
            taken += stream.send_nowait(view[taken:], end_stream)

    async def _writable(self) -> None:
        """Until the upstream's windows may have opened; meanwhile a client that leaves is noticed."""
        opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def wake() -> None:
            if not opened.done():
                opened.set_result(None)

        self._stream.on_writable = wake
        try:
            if self._next is None:
                self._next = asyncio.ensure_future(self._receive())
            if self._next.done():
                await opened  # the next message is already held: only the window matters now
            else:
                await asyncio.wait((opened, self._next), return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._stream.on_writable = None
        if self._next.done() and self._next.result()["type"] != "websocket.receive":
            raise _ClientGone


class GrpcWebSocketEndpoint:
    """Mounted with WebSocketRoute on the gRPC-Web paths; expects `service` and `method` in `path_params`."""

    def __init__(
        self,
        config: ProxyConfig,
        *,
        allow_origins: Sequence[str],
        sockets: OpenSockets | None = None,
        header_timeout: float = 10.0,
    ) -> None:
        self.config = config
        self.sockets = sockets if sockets is not None else OpenSockets(grace=10.0)
        self.upgrade = Upgrade(self.sockets, allow_origins, SUBPROTOCOL, required=True)
        self.header_timeout = header_timeout
        self.max_size = max_websocket_message(config.max_message_bytes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not await self.upgrade.accept(scope, receive, send):
            return
        socket = _Socket(send, self.sockets)
        with self.sockets.registered(socket, "grpc-websockets"):
            await self._serve(scope, receive, socket)

    async def _serve(self, scope: Scope, receive: Receive, socket: _Socket) -> None:
        params = scope["path_params"]
        service: str = params["service"]
        path = f"/{service}/{params['method']}"
        try:
            await self._call(scope, receive, socket, service, path)
        except _ClientGone:
            return
        except RateLimited as exc:
            # The trailer carries retry-after and the RateLimit fields; the close code says "later".
            metadata = [(key.encode("latin-1"), value.encode("latin-1")) for key, value in exc.headers.items()]
            await socket.fail(exc.code, exc.message, CLOSE_TRY_AGAIN_LATER, metadata)
        except GatewayError as exc:
            close_code = CLOSE_TOO_BIG if isinstance(exc, MessageTooLarge) else CLOSE_NORMAL
            await socket.fail(exc.code, exc.message, close_code)
        except asyncio.CancelledError:
            if not socket.cut:
                raise
            # The drain's own cancellation (the upstream stream was cancelled on the way out): the
            # client still gets a status, and the task goes on as uncancelled.
            current = asyncio.current_task()
            if current is not None:
                current.uncancel()
            await socket.fail(grpc.StatusCode.UNAVAILABLE, SHUTTING_DOWN, CLOSE_GOING_AWAY)
        except Exception:
            logger.exception("grpc-websockets call %s failed inside the gateway", path)
            await socket.fail(grpc.StatusCode.INTERNAL, "the gateway failed while handling this call")

    async def _call(self, scope: Scope, receive: Receive, socket: _Socket, service: str, path: str) -> None:
        try:
            async with asyncio.timeout(self.header_timeout):
                message = await receive()
        except TimeoutError:
            # A socket that never starts its call would otherwise be held (and pinged) for ever.
            await socket.close(CLOSE_POLICY, f"no header block within {self.header_timeout:g} s")
            raise _ClientGone from None
        if message["type"] != "websocket.receive" or socket.closed:
            raise _ClientGone  # gone, or closed by a drain while the header block was on its way
        socket.in_call = True  # before any await: a drain from now on lets the call finish
        block: bytes | None = message.get("bytes")
        if block is None:
            raise BadRequest("the first grpc-websockets message must be the header block, in a binary message")
        if len(block) > self.max_size:
            raise MessageTooLarge(f"the header block is larger than the gateway's limit of {self.max_size} bytes")
        pairs = parse_header_block(block)
        config = self.config
        # A browser cannot put a token on the upgrade request: it comes in the header block, unless
        # the upgrade carried one for this very call (the auth middleware checked it). One call per
        # socket, so one rate-limit token per socket, keyed like HTTP requests (the upgrade request's
        # peer and headers: an apiKey sent only in the header block is not seen yet).
        admitted = await admit(
            config,
            protocol="grpc-websockets",
            path=scope["path"],
            service=service,
            method=path.rpartition("/")[2],
            credentials=pairs,
            scope=scope,
            identity=identity_of(scope),
        )
        try:
            request = _request_metadata(pairs, scope["headers"], config.forward_cookies, config.forward_authorization)
        except GatewayError as exc:
            admitted.record.end(exc.code)  # refused after admission: the call ends here
            raise
        call = _Call(receive, socket, service, path, request, request.block + admitted.identity_metadata, self)
        await run_attempts(config, admitted, admitted.deadline(request.timeout), call.attempt, resendable=False)


class _Call:
    """One admitted call: `attempt` opens it on a replica, then relays both ways."""

    __slots__ = ("endpoint", "metadata", "path", "receive", "request", "service", "socket")

    def __init__(
        self,
        receive: Receive,
        socket: _Socket,
        service: str,
        path: str,
        request: RequestMetadata,
        metadata: bytes,
        endpoint: GrpcWebSocketEndpoint,
    ) -> None:
        self.receive = receive
        self.socket = socket
        self.service = service
        self.path = path
        self.request = request
        self.metadata = metadata
        self.endpoint = endpoint

    async def attempt(self, replica: Replica, timeout: float | None) -> grpc.StatusCode | Refused:
        socket, service = self.socket, self.service
        try:
            stream = await replica.client.open(self.path, self.metadata, timeout)
        except StreamError as exc:
            # Nothing was read from the client yet: another replica can still take the call.
            return Refused.raising(gateway_error(exc, service), unsent=isinstance(exc, NeverProcessed))
        endpoint = self.endpoint
        frames = RequestFrames(endpoint.config.max_message_bytes, self.request.encoding)
        requests = _Requests(self.receive, stream, frames, endpoint.max_size)
        forwarding = asyncio.ensure_future(requests.run())
        try:
            await stream.wait_for_headers()
            if stream.headers is not None:
                # Now, not with the first message: a server may send its headers and then wait
                # (for this client's first message, say). A trailers-only answer has none.
                await socket.headers(response_metadata(stream.headers))
            frame = await stream.read()
            while frame is not None:
                if not socket.headers_sent:
                    await socket.headers(response_metadata(stream.headers or ()))
                # Everything that has arrived goes out in one message; nothing waits for more.
                await socket.messages([frame, *stream.read_queued()])
                frame = await stream.read()
            if requests.gone:
                raise _ClientGone
            if requests.failure is not None:
                raise requests.failure
            result = outcome(stream, service)
            await socket.end(result.lines(), response_metadata(stream.headers or ()))
            return result.code
        finally:
            forwarding.cancel()
            if not stream.ended:
                stream.cancel("the client went away")
