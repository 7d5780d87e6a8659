"""The gRPC-Web endpoint: a raw ASGI app that turns one gRPC-Web request into one upstream gRPC call.

Request: `POST /<package.Service>/<Method>` (or under `/api/`), any of the four gRPC-Web content
types. The body is read whole (HTTP/1.1 gRPC-Web carries unary and server-streaming calls only),
then passed upstream as raw bytes. Responses are written frame by frame as the upstream produces
them, each flushed at once; the status always travels in `grpc-status` with HTTP 200:

- no message and no response headers from upstream -> trailers-only (status in HTTP headers,
  empty body, and no empty trailer frame: traefik/traefik#13842);
- otherwise headers, data frames, then one trailer frame (0x80) as the last frame.
"""

from __future__ import annotations

import asyncio
import logging
import zlib
from collections.abc import Iterable
from typing import cast

import grpc
from starlette.types import Message, Receive, Scope, Send

from gateway.errors import GatewayError, MalformedMessage, MessageTooLarge, MissingMessage, UpstreamUnavailable
from gateway.grpcweb.framing import COMPRESSED_FLAG, TRAILER_FLAG, FrameDecoder, encode_frame, percent_encode
from gateway.grpcweb.metadata import Metadata, metadata_to_headers, parse_request_headers
from gateway.grpcweb.text import TextDecoder, encode_text
from gateway.upstream.pool import Endpoint, UpstreamPool

__all__ = ["GrpcWebEndpoint", "grpc_web_error_response", "is_grpc_web"]

logger = logging.getLogger(__name__)

CONTENT_TYPE_BINARY = b"application/grpc-web+proto"
CONTENT_TYPE_TEXT = b"application/grpc-web-text+proto"
_GRPC_WEB = b"application/grpc-web"
_GRPC_WEB_TEXT = b"application/grpc-web-text"


def _media_type(scope: Scope, name: bytes) -> bytes:
    for key, value in scope["headers"]:
        if key == name:
            media: bytes = value.split(b";", 1)[0].strip().lower()
            return media
    return b""


def is_grpc_web(scope: Scope) -> bool:
    """True for a request in any of the gRPC-Web content types, case and parameters ignored."""
    media = _media_type(scope, b"content-type")
    return media in (_GRPC_WEB, b"application/grpc-web+proto", _GRPC_WEB_TEXT, b"application/grpc-web-text+proto")


def wants_text(scope: Scope) -> bool:
    """Text responses for text requests (improbable) and for `Accept: application/grpc-web-text` (Envoy)."""
    if _media_type(scope, b"content-type").startswith(_GRPC_WEB_TEXT):
        return True
    return any(key == b"accept" and _GRPC_WEB_TEXT in value.lower() for key, value in scope["headers"])


def grpc_web_error_response(scope: Scope, exc: GatewayError) -> Message:
    """A trailers-only `http.response.start` for an error the gateway answers itself."""
    headers = [
        (b"content-type", CONTENT_TYPE_TEXT if wants_text(scope) else CONTENT_TYPE_BINARY),
        (b"grpc-status", str(exc.code.value[0]).encode()),
        (b"grpc-message", percent_encode(exc.message).encode("ascii")),
        (b"content-length", b"0"),
    ]
    headers += [(key.encode("latin-1"), value.encode("latin-1")) for key, value in exc.headers.items()]
    return {"type": "http.response.start", "status": 200, "headers": headers}


class _Disconnected(Exception):
    """The client went away while the request body was being read."""


class GrpcWebEndpoint:
    """Mounted on the gRPC-Web paths; expects `service` and `method` in `scope["path_params"]`."""

    def __init__(
        self,
        pool: UpstreamPool,
        *,
        max_message_bytes: int,
        max_timeout: float | None = None,
        forward_cookies: bool = False,
    ) -> None:
        self.pool = pool
        self.max_message_bytes = max_message_bytes
        self.max_timeout = max_timeout
        self.forward_cookies = forward_cookies

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] != "POST":
            await _plain(send, 405, b"gRPC-Web calls use POST\n", [(b"allow", b"POST, OPTIONS")])
            return
        if not is_grpc_web(scope):
            await _plain(send, 415, b"expected a gRPC-Web content type (application/grpc-web[-text][+proto])\n")
            return
        params = scope["path_params"]
        service: str = params["service"]
        path = f"/{service}/{params['method']}"
        text = wants_text(scope)
        started = False
        try:
            request = parse_request_headers(scope["headers"], forward_cookies=self.forward_cookies)
            endpoint = self.pool.route(service).pick()
            messages = await self._read_messages(scope, receive, request.encoding)
            timeout = request.timeout
            if self.max_timeout is not None:
                timeout = self.max_timeout if timeout is None else min(timeout, self.max_timeout)
            started = await self._proxy(
                send, receive, endpoint, service, path, messages, request.metadata, timeout, text
            )
        except _Disconnected:
            return
        except GatewayError as exc:
            if started:
                await _send_trailer_frame(send, exc.code, exc.message, (), text)
            else:
                await send(grpc_web_error_response(scope, exc))
                await send({"type": "http.response.body", "body": b""})
        except asyncio.CancelledError:
            raise
        except Exception:
            # Never an HTML 500 to a gRPC-Web client: the failure becomes an INTERNAL status.
            logger.exception("gRPC-Web call %s failed inside the gateway", path)
            message = "the gateway failed while handling this call"
            if started:
                await _send_trailer_frame(send, grpc.StatusCode.INTERNAL, message, (), text)
            else:
                error = GatewayError(message)
                await send(grpc_web_error_response(scope, error))
                await send({"type": "http.response.body", "body": b""})

    async def _read_messages(self, scope: Scope, receive: Receive, encoding: str | None) -> list[bytes]:
        decoder = FrameDecoder(self.max_message_bytes)
        text = TextDecoder() if _media_type(scope, b"content-type").startswith(_GRPC_WEB_TEXT) else None
        frames = []
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _Disconnected
            chunk = message.get("body", b"")
            if text is not None:
                chunk = text.feed(chunk)
            if chunk:
                frames += decoder.feed(chunk)
            if not message.get("more_body", False):
                break
        if text is not None:
            frames += decoder.feed(text.close())
        decoder.close()
        messages = []
        for flags, payload in frames:
            if flags & TRAILER_FLAG:
                raise MalformedMessage("request carries a trailer frame; only message frames are allowed")
            if flags & COMPRESSED_FLAG:
                if encoding is None:
                    raise MalformedMessage("request frame is flagged compressed but no grpc-encoding was given")
                payload = self._decompress(payload, encoding)
            messages.append(payload)
        return messages

    def _decompress(self, payload: bytes, encoding: str) -> bytes:
        wbits = 16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS
        inflater = zlib.decompressobj(wbits)
        try:
            data = inflater.decompress(payload, self.max_message_bytes)
        except zlib.error as exc:
            raise MalformedMessage(f"request frame cannot be decompressed with {encoding}: {exc}") from None
        if inflater.unconsumed_tail:
            raise MessageTooLarge(
                f"request message decompresses to more than the gateway's limit of {self.max_message_bytes} bytes"
            )
        return data

    async def _proxy(
        self,
        send: Send,
        receive: Receive,
        endpoint: Endpoint,
        service: str,
        path: str,
        messages: list[bytes],
        metadata: Metadata,
        timeout: float | None,
        text: bool,
    ) -> bool:
        """Run the upstream call and stream its answer. Returns whether a response has started."""
        if not messages:
            # A grpc.aio server answers a unary or server-streaming method that gets no message with
            # nothing at all, so the call would hang until its deadline (or forever). grpcio's sync
            # server says UNIMPLEMENTED "requires exactly one request message"; so does the gateway.
            raise MissingMessage(f"{path} requires a request message; the request body carries none")
        call: grpc.aio.UnaryStreamCall[bytes, bytes] | grpc.aio.StreamStreamCall[bytes, bytes]
        if len(messages) == 1:
            call = endpoint.unary_stream(path)(messages[0], metadata=metadata, timeout=timeout)
        else:
            # Several messages: let the upstream judge (a client-streaming method may take them).
            call = endpoint.stream_stream(path)(iter(messages), metadata=metadata, timeout=timeout)
        disconnected = asyncio.Event()
        watcher = asyncio.ensure_future(_cancel_on_disconnect(receive, call, disconnected))
        started = False
        content_type = CONTENT_TYPE_TEXT if text else CONTENT_TYPE_BINARY
        try:
            try:
                async for reply in call:
                    frame = encode_frame(reply)
                    if not started:
                        headers = metadata_to_headers(await call.initial_metadata())
                        headers.append((b"content-type", content_type))
                        await send({"type": "http.response.start", "status": 200, "headers": headers})
                        started = True
                    await send(
                        {"type": "http.response.body", "body": encode_text(frame) if text else frame, "more_body": True}
                    )
                code = await call.code()
                details = await call.details()
                trailing: Iterable[tuple[str, str | bytes]] = await call.trailing_metadata()
                initial = await call.initial_metadata()
            except grpc.aio.AioRpcError as exc:
                code, details = exc.code(), exc.details() or ""
                # At run time these are grpc.aio.Metadata (the stubs say tuple).
                trailing = cast("grpc.aio.Metadata", exc.trailing_metadata())
                initial = exc.initial_metadata()
                if code is grpc.StatusCode.UNAVAILABLE and not started and not initial:
                    # No response headers: the call most likely never reached the service.
                    raise UpstreamUnavailable(f"{service} is unavailable at {endpoint.address}: {details}") from None
        except asyncio.CancelledError:
            if disconnected.is_set():
                return started  # the client left; the upstream call is already cancelled
            raise
        finally:
            watcher.cancel()
        if started:
            await _send_trailer_frame(send, code, details, trailing, text)
        elif initial:
            # Response headers but no message: headers, then the status in a trailer frame.
            headers = metadata_to_headers(initial)
            headers.append((b"content-type", content_type))
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await _send_trailer_frame(send, code, details, trailing, text)
        else:
            headers = metadata_to_headers(trailing)
            headers += _status_headers(code, details)
            headers += [(b"content-type", content_type), (b"content-length", b"0")]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": b""})
        return True


async def _cancel_on_disconnect(receive: Receive, call: grpc.aio.Call, disconnected: asyncio.Event) -> None:
    # After the body, the next ASGI message can only be http.disconnect: the client went away.
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            disconnected.set()
            call.cancel()
            return


def _status_headers(code: grpc.StatusCode, details: str | None) -> list[tuple[bytes, bytes]]:
    headers = [(b"grpc-status", str(code.value[0]).encode())]
    if details:
        headers.append((b"grpc-message", percent_encode(details).encode("ascii")))
    return headers


async def _send_trailer_frame(
    send: Send, code: grpc.StatusCode, details: str | None, trailing: Iterable[tuple[str, str | bytes]], text: bool
) -> None:
    lines = _status_headers(code, details) + metadata_to_headers(trailing)
    block = b"".join(key + b": " + value + b"\r\n" for key, value in lines)
    frame = encode_frame(block, TRAILER_FLAG)
    await send({"type": "http.response.body", "body": encode_text(frame) if text else frame})


async def _plain(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    start_headers = [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": start_headers + (headers or [])})
    await send({"type": "http.response.body", "body": body})
