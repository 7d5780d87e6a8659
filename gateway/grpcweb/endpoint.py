"""The gRPC-Web endpoint: a raw ASGI app that turns one gRPC-Web request into one upstream gRPC call.

Request: `POST /<package.Service>/<Method>` (or under `/api/`), any of the four gRPC-Web content
types. The body is read whole (HTTP/1.1 gRPC-Web carries unary and server-streaming calls only),
then passed upstream as raw bytes. Responses are written frame by frame as the upstream produces
them, each flushed at once, and the response head as soon as the upstream's headers arrive (a
server that answers later still shows its headers now); the status always travels in `grpc-status`
with HTTP 200:

- no message and no response headers from upstream -> trailers-only (status in HTTP headers,
  empty body, and no empty trailer frame: traefik/traefik#13842);
- otherwise headers, data frames, then one trailer frame (0x80) as the last frame.

Admission (auth, rate limit, method policy, deadline, route) and the attempts on replicas are the
shared call path's (gateway/proxy/); an allowed call's response carries the RateLimit fields.
"""

from __future__ import annotations

import asyncio
import logging

import grpc
from starlette.types import Receive, Scope, Send

from common.http2.client import Http2Stream, NeverProcessed, StreamError
from gateway.errors import GatewayError, MissingMessage
from gateway.grpcweb.responses import CONTENT_TYPE_BINARY, CONTENT_TYPE_TEXT, negotiate
from gateway.grpcweb.text import TextDecoder, encode_text
from gateway.proxy import Admitted, ProxyConfig, Refused, admit, run_attempts
from gateway.upstream.outcome import Outcome, gateway_error, outcome
from gateway.upstream.pool import Replica
from gateway.wire.framing import PREFIX, TRAILER_FLAG, encode_frame
from gateway.wire.metadata import parse_request_headers, response_metadata
from gateway.wire.request_frames import RequestFrames
from gateway.wire.status import status_lines

__all__ = ["DisconnectWatch", "GrpcWebEndpoint"]

logger = logging.getLogger(__name__)


class _Disconnected(Exception):
    """The client went away while the request body was being read."""


Headers = list[tuple[bytes, bytes]]


class _Response:
    """The answer to one request, written as the upstream call progresses."""

    __slots__ = ("content_type", "quota", "send", "started", "text")

    def __init__(self, send: Send, text: bool) -> None:
        self.send = send
        self.text = text
        self.content_type = CONTENT_TYPE_TEXT if text else CONTENT_TYPE_BINARY
        self.started = False
        self.quota: Headers = []  # the RateLimit fields of an allowed call, on whatever answer it gets

    def _encode(self, frame: bytes) -> bytes:
        return encode_text(frame) if self.text else frame

    async def start(self, headers: Headers) -> None:
        headers.append((b"content-type", self.content_type))
        headers += self.quota
        self.started = True
        await self.send({"type": "http.response.start", "status": 200, "headers": headers})

    async def messages(self, frames: list[bytes]) -> None:
        body = b"".join(map(self._encode, frames)) if len(frames) > 1 else self._encode(frames[0])
        await self.send({"type": "http.response.body", "body": body, "more_body": True})

    async def trailers(self, lines: Headers) -> None:
        block = b"".join(key + b": " + value + b"\r\n" for key, value in lines)
        await self.send({"type": "http.response.body", "body": self._encode(encode_frame(block, TRAILER_FLAG))})

    async def whole(self, headers: Headers, frames: list[bytes], lines: Headers) -> None:
        """Everything at once: one write, with a content-length instead of chunked encoding."""
        block = b"".join(key + b": " + value + b"\r\n" for key, value in lines)
        frames.append(encode_frame(block, TRAILER_FLAG))
        body = b"".join(map(encode_text, frames)) if self.text else b"".join(frames)
        headers.append((b"content-type", self.content_type))
        headers.append((b"content-length", str(len(body)).encode()))
        headers += self.quota
        self.started = True
        await self.send({"type": "http.response.start", "status": 200, "headers": headers})
        await self.send({"type": "http.response.body", "body": body})

    async def trailers_only(self, lines: Headers) -> None:
        lines.append((b"content-type", self.content_type))
        lines.append((b"content-length", b"0"))
        lines += self.quota
        self.started = True
        await self.send({"type": "http.response.start", "status": 200, "headers": lines})
        await self.send({"type": "http.response.body", "body": b""})

    async def fail(self, code: grpc.StatusCode, message: str, headers: dict[str, str] | None = None) -> None:
        lines = status_lines(code, message)
        if self.started:
            await self.trailers(lines)
            return
        lines += [(key.encode("latin-1"), value.encode("latin-1")) for key, value in (headers or {}).items()]
        await self.trailers_only(lines)


class GrpcWebEndpoint:
    """Mounted on the gRPC-Web paths; expects `service` and `method` in `scope["path_params"]`."""

    def __init__(self, config: ProxyConfig) -> None:
        self.config = config

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] != "POST":
            await _plain(send, 405, b"gRPC-Web calls use POST\n", [(b"allow", b"POST, OPTIONS")])
            return
        grpc_web, text_request, text_response = negotiate(scope)
        if not grpc_web:
            await _plain(send, 415, b"expected a gRPC-Web content type (application/grpc-web[-text][+proto])\n")
            return
        params = scope["path_params"]
        service: str = params["service"]
        method: str = params["method"]
        path = f"/{service}/{method}"
        response = _Response(send, text_response)
        config = self.config
        # Between admission and the end of the body: an error then leaves the rest of the body unread.
        reading = False
        admitted: Admitted | None = None
        try:
            admitted = await admit(
                config,
                protocol="grpc-web",
                path=scope["path"],
                service=service,
                method=method,
                credentials=scope["headers"],
                scope=scope,
            )
            response.quota = admitted.quota
            reading = True
            request = parse_request_headers(
                scope["headers"],
                forward_cookies=config.forward_cookies,
                forward_authorization=config.forward_authorization,
            )
            body = await self._read_body(receive, text_request, request.encoding)
            reading = False
            if not body:
                # A grpc.aio server answers a unary or server-streaming method that gets no message
                # with nothing at all, so the call would hang until its deadline (or forever).
                # grpcio's sync server says UNIMPLEMENTED "requires exactly one request message".
                raise MissingMessage(f"{path} requires a request message; the request body carries none")
            metadata = request.block + admitted.identity_metadata
            call = _Call(response, receive, service, path, body, metadata)
            await run_attempts(config, admitted, admitted.deadline(request.timeout), call.attempt, resendable=True)
        except _Disconnected:
            return
        except GatewayError as exc:
            if admitted is not None:  # refused after admission (the body): the call ends here
                admitted.record.end(exc.code)
            headers = exc.headers
            if reading:
                # Answered before the body was read (a 4 GiB length prefix, say): close the connection
                # after the answer instead of reading the rest only to throw it away.
                headers = {**headers, "connection": "close"}
            await response.fail(exc.code, exc.message, headers)
        except asyncio.CancelledError:
            raise
        except Exception:
            # Never an HTML 500 to a gRPC-Web client: the failure becomes an INTERNAL status.
            logger.exception("gRPC-Web call %s failed inside the gateway", path)
            if admitted is not None:
                admitted.record.end(grpc.StatusCode.INTERNAL)
            await response.fail(grpc.StatusCode.INTERNAL, "the gateway failed while handling this call")
        finally:
            if admitted is not None:
                admitted.record.end(grpc.StatusCode.CANCELLED)  # the client left (ended calls stay as they were)

    async def _read_body(self, receive: Receive, text_request: bool, encoding: str | None) -> bytes:
        """The request's gRPC frames, checked as they arrive (RequestFrames), as they go upstream."""
        limit = self.config.max_message_bytes
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _Disconnected
        chunk: bytes = message.get("body", b"")
        more: bool = message.get("more_body", False)
        if not text_request and not more and _plain_frames(chunk, limit):
            return chunk  # the usual case, a binary body in one piece: forwarded without a copy
        frames = RequestFrames(limit, encoding)
        text = TextDecoder() if text_request else None
        parts: list[bytes | memoryview] = []
        while True:
            if text is not None:
                chunk = text.feed(chunk)
            if chunk:
                parts.append(frames.feed(chunk))
            if not more:
                break
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _Disconnected
            chunk = message.get("body", b"")
            more = message.get("more_body", False)
        if text is not None and (tail := text.close()):
            parts.append(frames.feed(tail))
        frames.close()
        # Uncompressed frames go upstream exactly as they came, joined once.
        return b"".join(parts)


class _Call:
    """One admitted call, its whole request in hand: `attempt` runs it on one replica."""

    __slots__ = ("body", "metadata", "path", "receive", "response", "service")

    def __init__(
        self, response: _Response, receive: Receive, service: str, path: str, body: bytes, metadata: bytes
    ) -> None:
        self.response = response
        self.receive = receive
        self.service = service
        self.path = path
        self.body = body
        self.metadata = metadata

    async def attempt(self, replica: Replica, timeout: float | None) -> grpc.StatusCode | Refused:
        """Relay the answer of `replica`; a refusal before anything reached the client is handed back."""
        response, service = self.response, self.service
        try:
            stream = await replica.client.unary(self.path, self.metadata, self.body, timeout)
        except StreamError as exc:
            return Refused.raising(gateway_error(exc, service), unsent=isinstance(exc, NeverProcessed))
        watch = DisconnectWatch(self.receive, stream)
        try:
            await stream.wait_for_headers()
            if stream.headers is not None and not stream.ended and not stream.has_message:
                # Headers ahead of the first message (a stream whose server answers later): the
                # client gets them now, as from a direct call, not with that message.
                await response.start(response_metadata(stream.headers))
            frame = await stream.read()
            if frame is not None:
                if stream.ended and not response.started:
                    # The whole answer is here already (a unary call, usually): send it in one piece.
                    frames = [frame]
                    while (frame := await stream.read()) is not None:
                        frames.append(frame)
                    result = outcome(stream, service)
                    await response.whole(response_metadata(stream.headers or ()), frames, result.lines())
                    return result.code
                if not response.started:
                    await response.start(response_metadata(stream.headers or ()))
                while frame is not None:
                    # Everything that has arrived goes out in one write; nothing waits for more.
                    await response.messages([frame, *stream.read_queued()])
                    frame = await stream.read()
            if watch.disconnected:
                return grpc.StatusCode.CANCELLED  # nobody is listening; the upstream call was cancelled
            result = outcome(stream, service)
            if result.code is grpc.StatusCode.UNAVAILABLE and not response.started:
                unsent = isinstance(stream.error, NeverProcessed)  # refused by GOAWAY or REFUSED_STREAM
                return Refused(result.code, lambda: _finish(response, stream, result), unsent=unsent)
            await _finish(response, stream, result)
            return result.code
        finally:
            watch.stop()
            if not stream.ended:
                stream.cancel()


async def _finish(response: _Response, stream: Http2Stream, result: Outcome) -> None:
    """The status of a call whose messages (if any) are out."""
    lines = result.lines()
    if response.started:
        await response.trailers(lines)
    elif stream.headers is not None and (headers := response_metadata(stream.headers)):
        # Response metadata but no message: headers, then the status in a trailer frame.
        await response.start(headers)
        await response.trailers(lines)
    else:
        await response.trailers_only(lines)


def _plain_frames(body: bytes, limit: int) -> bool:
    """Whether `body` is whole, uncompressed message frames within the limit (else the slow path judges)."""
    offset, size = 0, len(body)
    while offset < size:
        if size - offset < 5:
            return False
        flags, length = PREFIX.unpack_from(body, offset)
        if flags or length > limit:
            return False
        offset += 5 + length
    return offset == size and size > 0


# A disconnect is noticed by a task that waits on `receive`. Most calls end sooner than this, and
# then no such task is ever made; a call that outlives a departed client is cancelled this late.
_WATCH_AFTER = 0.05


class DisconnectWatch:
    """Cancels the upstream stream of a call whose client goes away after its request was read (the
    HTTP codecs share it: gRPC-Web and Connect)."""

    __slots__ = ("_handle", "_receive", "_stream", "_task", "disconnected")

    def __init__(self, receive: Receive, stream: Http2Stream) -> None:
        self._receive = receive
        self._stream = stream
        self._task: asyncio.Task[None] | None = None
        self.disconnected = False
        self._handle: asyncio.TimerHandle | None = asyncio.get_running_loop().call_later(_WATCH_AFTER, self._start)

    def _start(self) -> None:
        self._handle = None
        self._task = asyncio.ensure_future(self._watch())

    async def _watch(self) -> None:
        # After the body, the next ASGI message can only be http.disconnect.
        while (await self._receive())["type"] != "http.disconnect":
            pass
        self.disconnected = True
        self._stream.cancel("the client went away")

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
        if self._task is not None:
            self._task.cancel()


async def _plain(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    start_headers = [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": start_headers + (headers or [])})
    await send({"type": "http.response.body", "body": body})
