"""The Connect codec in front of the one call path: unary JSON / binary calls, GET for side-effect-free
methods, and server streams in Connect's envelopes.

What differs from gRPC-Web is only framing and how the status travels:

    unary      the message is the whole body; an answer is HTTP 200 with the message, an error the HTTP
               status of its code (gateway.errors' table) with Connect's JSON error body; response
               metadata in headers, trailing metadata in `trailer-` headers
    streaming  always HTTP 200; messages in envelopes; the status and trailing metadata in the final
               end-of-stream envelope

Admission, retries and breakers are the shared chain's (gateway/proxy/); JSON needs the method's
schema, which the descriptor catalog learns from the plugin. Binary calls are forwarded as bytes and
need no schema unless they come by GET (the method must be marked side-effect free).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import parse_qsl, unquote_to_bytes

import grpc
from google.protobuf.message import Message
from starlette.types import Receive, Scope, Send

from gateway.connect.body import ClientLeft, read_body
from gateway.connect.codec import PROTO, Codec
from gateway.connect.envelope import COMPRESSED, END_STREAM, end_stream, envelope, read_envelopes
from gateway.connect.errors import error_body, http_status
from gateway.connect.protocol import check_version, get_request, inflate, post_kind, timeout_seconds
from gateway.descriptors import DescriptorCatalog, DescriptorsUnavailable, MethodSchema
from gateway.errors import BadRequest, GatewayError, Unimplemented, UpstreamUnavailable
from gateway.grpcweb.endpoint import DisconnectWatch
from gateway.proxy import Admitted, ProxyConfig, Refused, admit, run_attempts
from gateway.upstream.http2 import Http2Stream, NeverProcessed, StreamError
from gateway.upstream.outcome import Outcome, gateway_error, outcome
from gateway.upstream.pool import Replica
from gateway.wire.framing import encode_frame
from gateway.wire.metadata import parse_request_headers, response_metadata

__all__ = ["ConnectEndpoint"]

logger = logging.getLogger(__name__)

Headers = list[tuple[bytes, bytes]]


class _Answer:
    """The Connect answer to one call: unary (status and JSON errors) or streaming (envelopes)."""

    __slots__ = ("codec", "quota", "send", "started", "streaming")

    def __init__(self, send: Send, codec: Codec, streaming: bool) -> None:
        self.send = send
        self.codec = codec
        self.streaming = streaming
        self.started = False
        self.quota: Headers = []

    @property
    def content_type(self) -> bytes:
        prefix = b"application/connect+" if self.streaming else b"application/"
        return prefix + self.codec.name.encode()

    async def unary(self, message: bytes, headers: Headers, trailers: Headers) -> None:
        head = [*headers, *((b"trailer-" + name, value) for name, value in trailers), *self.quota]
        head += [(b"content-type", self.content_type), (b"content-length", str(len(message)).encode())]
        self.started = True
        await self.send({"type": "http.response.start", "status": 200, "headers": head})
        await self.send({"type": "http.response.body", "body": message})

    async def start_stream(self, headers: Headers) -> None:
        self.started = True
        head = [*headers, *self.quota, (b"content-type", self.content_type)]
        await self.send({"type": "http.response.start", "status": 200, "headers": head})

    async def stream_messages(self, messages: Sequence[bytes]) -> None:
        body = b"".join(envelope(message) for message in messages)
        await self.send({"type": "http.response.body", "body": body, "more_body": True})

    async def error(
        self,
        code: grpc.StatusCode,
        message: str,
        *,
        headers: Sequence[tuple[bytes, bytes]] = (),
        trailers: Sequence[tuple[bytes, bytes]] = (),
        details: bytes | None = None,
        extra: dict[str, str] | None = None,
    ) -> None:
        body = error_body(code, message, details)
        own = [(key.encode("latin-1"), value.encode("latin-1")) for key, value in (extra or {}).items()]
        if self.streaming:
            await self.end(trailers, body, headers=[*headers, *own])
            return
        data = json.dumps(body, separators=(",", ":")).encode()
        head = [*headers, *((b"trailer-" + name, value) for name, value in trailers), *own, *self.quota]
        head += [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
        self.started = True
        await self.send({"type": "http.response.start", "status": http_status(code), "headers": head})
        await self.send({"type": "http.response.body", "body": data})

    async def end(
        self,
        trailers: Sequence[tuple[bytes, bytes]],
        error: Mapping[str, Any] | None = None,
        *,
        headers: Sequence[tuple[bytes, bytes]] = (),
    ) -> None:
        if not self.started:
            await self.start_stream(list(headers))
        metadata: dict[str, list[str]] = {}
        for name, value in trailers:
            metadata.setdefault(name.decode("latin-1"), []).append(value.decode("latin-1"))
        await self.send({"type": "http.response.body", "body": end_stream(error, metadata)})


class ConnectEndpoint:
    """Mounted on the call paths beside gRPC-Web (gateway/connect/router.py picks by method and content type)."""

    def __init__(self, config: ProxyConfig, catalog: DescriptorCatalog) -> None:
        self.config = config
        self.catalog = catalog

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        params = scope["path_params"]
        service: str = params["service"]
        method: str = params["method"]
        path = f"/{service}/{method}"
        headers = {name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"]}
        config = self.config
        limit = config.max_message_bytes
        is_get = scope["method"] == "GET"
        query = dict(parse_qsl(scope["query_string"].decode("latin-1"))) if is_get else {}
        # A GET's errors come in the encoding it names (a malformed one is reported by get_request).
        kind = post_kind("application/" + query.get("encoding", "json") if is_get else headers.get("content-type", ""))
        answer = _Answer(send, kind.codec if kind else PROTO, kind.streaming if kind and not is_get else False)
        admitted: Admitted | None = None
        try:
            check_version(headers)
            timeout = timeout_seconds(headers.get("connect-timeout-ms"))
            admitted = await admit(
                config,
                protocol="connect",
                path=scope["path"],
                service=service,
                method=method,
                credentials=scope["headers"],
                scope=scope,
            )
            answer.quota = admitted.quota
            if is_get:
                # As connect-go does: GET exists only for methods marked side-effect free; for the
                # others it is 405 (the same answer gRPC-Web gave every GET before Connect).
                schema = await self._schema(service, method, required=False)
                if schema is None or not schema.side_effect_free:
                    admitted.record.end(grpc.StatusCode.UNIMPLEMENTED)
                    await _not_allowed(send, path)
                    return
                codec, body = get_request(query, limit=limit)
            else:
                body = await read_body(receive, limit + 5 if answer.streaming else limit)
                codec = answer.codec
            schema = await self._schema(service, method, required=codec is not PROTO or is_get)
            _check_shape(schema, answer.streaming, is_get, path)
            if answer.streaming:
                message = _stream_request(body, headers.get("connect-content-encoding"), limit)
            else:
                message = body if is_get else inflate(body, headers.get("content-encoding"), limit=limit)
            wire = codec.request(message, schema.input) if schema is not None else message
            if len(wire) > limit:
                raise BadRequest(f"the request message is {len(wire)} bytes; the limit is {limit}")
            metadata = _metadata(scope["headers"], config) + admitted.identity_metadata
            call = _Call(answer, receive, service, path, encode_frame(wire), metadata, schema)
            await run_attempts(config, admitted, admitted.deadline(timeout), call.attempt, resendable=True)
        except ClientLeft:
            return
        except GatewayError as exc:
            if admitted is not None:  # refused after admission (the body, the schema): the call ends here
                admitted.record.end(exc.code)
            await answer.error(exc.code, exc.message, extra=exc.headers)
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("Connect call %s failed inside the gateway", path)
            if admitted is not None:
                admitted.record.end(grpc.StatusCode.INTERNAL)
            await answer.error(grpc.StatusCode.INTERNAL, "the gateway failed while handling this call")
        finally:
            if admitted is not None:
                admitted.record.end(grpc.StatusCode.CANCELLED)  # the client left (ended calls stay as they were)

    async def _schema(self, service: str, method: str, *, required: bool) -> MethodSchema | None:
        try:
            schema = await self.catalog.method(service, method)
        except DescriptorsUnavailable as exc:
            if not required:
                return None  # binary bodies pass as bytes; the plugin checks them
            if exc.retryable:
                raise UpstreamUnavailable(f"{service} is unavailable: {exc}") from None
            raise Unimplemented(
                f"JSON for {service} needs its schema, which the gateway cannot get now: {exc}"
            ) from None
        if schema is None:
            raise Unimplemented(f"{service} has no method {method}")
        return schema


async def _not_allowed(send: Send, path: str) -> None:
    body = f"{path} takes POST: GET is only for methods marked side-effect free (NO_SIDE_EFFECTS)\n".encode()
    headers = [
        (b"allow", b"POST, OPTIONS"),
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", str(len(body)).encode()),
    ]
    await send({"type": "http.response.start", "status": 405, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _check_shape(schema: MethodSchema | None, streaming: bool, is_get: bool, path: str) -> None:
    if schema is None:
        return
    if schema.client_streaming:
        raise Unimplemented(f"{path} streams from the client: call it with native gRPC or grpc-websockets")
    if schema.server_streaming and not streaming:
        raise BadRequest(f"{path} is a server stream: send it as application/connect+json or +proto")
    if not schema.server_streaming and streaming:
        raise BadRequest(f"{path} is unary: send it as application/json or application/proto")


def _stream_request(body: bytes, encoding: str | None, limit: int) -> bytes:
    messages = [(flags, data) for flags, data in read_envelopes(body, limit=limit) if not flags & END_STREAM]
    if len(messages) != 1:
        raise BadRequest(f"a server-streaming call takes exactly one request message; this one has {len(messages)}")
    flags, data = messages[0]
    return inflate(data, encoding, limit=limit) if flags & COMPRESSED else data


def _metadata(headers: Sequence[tuple[bytes, bytes]], config: ProxyConfig) -> bytes:
    # Connect's own headers are the protocol's, not the call's metadata.
    own = [(name, value) for name, value in headers if not name.startswith(b"connect-")]
    return parse_request_headers(
        own, forward_cookies=config.forward_cookies, forward_authorization=config.forward_authorization
    ).block


class _Call:
    """One admitted call with its whole request: `attempt` runs it on one replica."""

    __slots__ = ("answer", "body", "metadata", "path", "receive", "schema", "service")

    def __init__(
        self,
        answer: _Answer,
        receive: Receive,
        service: str,
        path: str,
        body: bytes,
        metadata: bytes,
        schema: MethodSchema | None,
    ) -> None:
        self.answer = answer
        self.receive = receive
        self.service = service
        self.path = path
        self.body = body
        self.metadata = metadata
        self.schema = schema

    def _encode(self, frame: bytes) -> bytes:
        data = frame[5:]  # the upstream's frames are never compressed (the gateway asks for identity)
        output: type[Message] | None = self.schema.output if self.schema is not None else None
        return self.answer.codec.response(data, output) if output is not None else data

    async def attempt(self, replica: Replica, timeout: float | None) -> grpc.StatusCode | Refused:
        try:
            stream = await replica.client.unary(self.path, self.metadata, self.body, timeout)
        except StreamError as exc:
            return Refused.raising(gateway_error(exc, self.service), unsent=isinstance(exc, NeverProcessed))
        # A client that leaves cancels the upstream call (a watch stream would otherwise run forever).
        watch = DisconnectWatch(self.receive, stream)
        try:
            ended = await (self._stream(stream) if self.answer.streaming else self._unary(stream))
            return grpc.StatusCode.CANCELLED if watch.disconnected else ended
        finally:
            watch.stop()
            if not stream.ended:
                stream.cancel()

    async def _unary(self, stream: Http2Stream) -> grpc.StatusCode | Refused:
        frames: list[bytes] = []
        while (frame := await stream.read()) is not None:
            frames.append(frame)
        result = outcome(stream, self.service)
        headers = response_metadata(stream.headers or ())
        if result.code is grpc.StatusCode.OK and len(frames) == 1:
            await self.answer.unary(self._encode(frames[0]), headers, result.metadata)
            return result.code
        if result.code is grpc.StatusCode.UNAVAILABLE:
            return Refused(result.code, lambda: self._fail(result, headers), unsent=_never_processed(stream))
        if result.code is grpc.StatusCode.OK:
            count = len(frames)
            result = Outcome(b"13", f"the plugin answered a unary call with {count} messages".encode(), result.metadata)
        await self._fail(result, headers)
        return result.code

    async def _stream(self, stream: Http2Stream) -> grpc.StatusCode | Refused:
        answer = self.answer
        await stream.wait_for_headers()
        frame = await stream.read()
        if frame is None:
            result = outcome(stream, self.service)
            if result.code is grpc.StatusCode.UNAVAILABLE:
                return Refused(
                    result.code,
                    lambda: self._fail(result, response_metadata(stream.headers or ())),
                    unsent=_never_processed(stream),
                )
        else:
            await answer.start_stream(response_metadata(stream.headers or ()))
            while frame is not None:
                await answer.stream_messages([self._encode(f) for f in (frame, *stream.read_queued())])
                frame = await stream.read()
            result = outcome(stream, self.service)
        await self._fail(result, response_metadata(stream.headers or ()))
        return result.code

    async def _fail(self, result: Outcome, headers: Headers) -> None:
        """The end of the call: for a stream its end-of-stream envelope, for unary an error answer."""
        code = result.code
        trailers = [(name, value) for name, value in result.metadata if name != b"grpc-status-details-bin"]
        details = next((value for name, value in result.metadata if name == b"grpc-status-details-bin"), None)
        message = unquote_to_bytes(result.message).decode("utf-8", "replace")
        if code is grpc.StatusCode.OK:
            await self.answer.end(trailers, headers=headers)  # a stream that ended well
            return
        await self.answer.error(code, message, headers=headers, trailers=trailers, details=_b64(details))


def _b64(value: bytes | None) -> bytes | None:
    if value is None:
        return None
    return base64.b64decode(value + b"=" * (-len(value) % 4))


def _never_processed(stream: Http2Stream) -> bool:
    """The replica refused the call by GOAWAY or REFUSED_STREAM: another one may take it."""
    return isinstance(stream.error, NeverProcessed)
