"""One REST call: the HTTP request to the method's request message, through the one call path, and
the plugin's answer back to JSON.

A REST call is admitted as the method it stands for (gateway/proxy/: auth, identity, rate limit,
method policy, deadline cap, route; internal services refused): publicPaths, rateLimiting.exemptPaths,
`requiredPermission` and per-method limits all name the method's path `/api/<pkg.Service>/<Method>`,
so a method has one policy whichever way it is called. The attempts (retries, breakers) are the shared
driver's.

    200        the response message as JSON (proto JSON names), or its `response_body` field
    an error   the HTTP status of its gRPC code (gateway.errors' one table) and
               `{"code": "NOT_FOUND", "message": ...}`, as every other REST endpoint of the gateway

A server-streaming method answers newline-delimited JSON (application/x-ndjson), one line per message
as it arrives, in grpc-gateway's shape: `{"result": <message>}`. A stream that fails after its first
message ends with the line `{"error": {"code": "UNAVAILABLE", "message": ...}}` (the status line was
sent already); one that fails before it gets the error answer of a unary call, with its HTTP status.

The plugin's response metadata comes back as headers; `grpc-timeout` (as grpc-gateway reads it) asks
for a deadline, held to maxTimeout and the method's `timeout`.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Sequence
from urllib.parse import parse_qsl, unquote_to_bytes

import grpc
from google.protobuf import message_factory
from google.protobuf.message import DecodeError, Message
from starlette.types import Receive, Scope, Send

from common.http2.client import NeverProcessed
from gateway.connect.body import ClientLeft, read_body
from gateway.errors import GRPC_TO_HTTP, BadRequest, GatewayError, status_name
from gateway.grpcweb.endpoint import DisconnectWatch
from gateway.proxy import Admitted, ProxyConfig, Refused, admit, run_attempts
from gateway.transcode.request import request_message, response_json
from gateway.transcode.routes import PREFIX, RestMatch
from gateway.upstream.http2 import Http2Stream, StreamError
from gateway.upstream.outcome import gateway_error, outcome
from gateway.upstream.pool import Replica
from gateway.wire.framing import encode_frame
from gateway.wire.metadata import parse_request_headers, response_metadata

__all__ = ["RestEndpoint"]

logger = logging.getLogger(__name__)

Headers = list[tuple[bytes, bytes]]


class RestEndpoint:
    """Serves a request the route table matched (gateway/middleware/transcode.py asks it)."""

    def __init__(self, config: ProxyConfig) -> None:
        self.config = config

    async def __call__(self, scope: Scope, receive: Receive, send: Send, match: RestMatch) -> None:
        route = match.route
        service, method = route.service, route.method.name
        answer = _Answer(send)
        admitted: Admitted | None = None
        try:
            config = self.config
            admitted = await admit(
                config,
                protocol="rest",
                path=f"{PREFIX}/{service}/{method}",
                service=service,
                method=method,
                credentials=scope["headers"],
                scope=scope,
            )
            answer.quota = admitted.quota
            body = await read_body(receive, config.max_message_bytes)
            query = parse_qsl(scope["query_string"].decode("utf-8", "replace"), keep_blank_values=True)
            request = message_factory.GetMessageClass(route.method.input_type)
            wire = request_message(route.binding, request, match.variables, query, body)
            if len(wire) > config.max_message_bytes:
                raise BadRequest(f"the request message is {len(wire)} bytes; the limit is {config.max_message_bytes}")
            headers = parse_request_headers(
                scope["headers"],
                forward_cookies=config.forward_cookies,
                forward_authorization=config.forward_authorization,
            )
            call = _Call(answer, receive, match, encode_frame(wire), headers.block + admitted.identity_metadata)
            await run_attempts(config, admitted, admitted.deadline(headers.timeout), call.attempt, resendable=True)
        except ClientLeft:
            return
        except GatewayError as exc:
            if admitted is not None:  # refused after admission (the body, the path): the call ends here
                admitted.record.end(exc.code)
            await answer.error(exc.code, exc.message, extra=exc.headers)
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("REST call %s %s failed inside the gateway", scope["method"], scope["path"])
            if admitted is not None:
                admitted.record.end(grpc.StatusCode.INTERNAL)
            await answer.error(grpc.StatusCode.INTERNAL, "the gateway failed while handling this request")
        finally:
            if admitted is not None:
                admitted.record.end(grpc.StatusCode.CANCELLED)  # the client left (ended calls stay as they were)


class _Answer:
    __slots__ = ("quota", "send")

    def __init__(self, send: Send) -> None:
        self.send = send
        self.quota: Headers = []  # RateLimit-Policy and RateLimit of an allowed call

    async def start_stream(self, headers: Sequence[tuple[bytes, bytes]]) -> None:
        head = [*headers, *self.quota, (b"content-type", b"application/x-ndjson")]
        await self.send({"type": "http.response.start", "status": 200, "headers": head})

    async def lines(self, lines: Sequence[bytes], *, more: bool = True) -> None:
        await self.send({"type": "http.response.body", "body": b"".join(lines), "more_body": more})

    async def json(self, status: int, body: bytes, headers: Sequence[tuple[bytes, bytes]] = ()) -> None:
        head = [
            *headers,
            *self.quota,
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ]
        await self.send({"type": "http.response.start", "status": status, "headers": head})
        await self.send({"type": "http.response.body", "body": body})

    async def error(
        self,
        code: grpc.StatusCode,
        message: str,
        *,
        headers: Sequence[tuple[bytes, bytes]] = (),
        extra: dict[str, str] | None = None,
    ) -> None:
        own = [(key.encode("latin-1"), value.encode("latin-1")) for key, value in (extra or {}).items()]
        body = json.dumps({"code": status_name(code), "message": message}).encode()
        await self.json(GRPC_TO_HTTP[code], body, [*headers, *own])


class _Call:
    """One admitted REST call with its whole request message: `attempt` runs it on one replica."""

    __slots__ = ("answer", "body", "match", "metadata", "receive")

    def __init__(self, answer: _Answer, receive: Receive, match: RestMatch, body: bytes, metadata: bytes) -> None:
        self.answer = answer
        self.receive = receive
        self.match = match
        self.body = body
        self.metadata = metadata

    async def attempt(self, replica: Replica, timeout: float | None) -> grpc.StatusCode | Refused:
        route = self.match.route
        service = route.service
        try:
            stream = await replica.client.unary(f"/{service}/{route.method.name}", self.metadata, self.body, timeout)
        except StreamError as exc:
            return Refused.raising(gateway_error(exc, service), unsent=isinstance(exc, NeverProcessed))
        watch = DisconnectWatch(self.receive, stream)  # a client that leaves cancels the upstream call
        try:
            if route.method.server_streaming:
                ended = await self._stream(stream)
                return grpc.StatusCode.CANCELLED if watch.disconnected else ended
            frames: list[bytes] = []
            while (frame := await stream.read()) is not None:
                frames.append(frame)
            if watch.disconnected:
                return grpc.StatusCode.CANCELLED
            result = outcome(stream, service)
            headers = response_metadata(stream.headers or ())
            code = result.code
            if code is grpc.StatusCode.OK and len(frames) == 1:
                await self.answer.json(200, self._json(frames[0][5:]), headers)
                return code
            message = unquote_to_bytes(result.message).decode("utf-8", "replace")
            if code is grpc.StatusCode.OK:
                code, message = (
                    grpc.StatusCode.INTERNAL,
                    f"the plugin answered a unary call with {len(frames)} messages",
                )
            if code is grpc.StatusCode.UNAVAILABLE:  # another replica may take the call
                return Refused(code, lambda: self.answer.error(code, message, headers=headers))
            await self.answer.error(code, message, headers=headers)
            return code
        finally:
            watch.stop()
            if not stream.ended:
                stream.cancel()

    async def _stream(self, stream: Http2Stream) -> grpc.StatusCode | Refused:
        service = self.match.route.service
        frame = await stream.read()
        if frame is None:  # no message: the answer is the status alone, as for a unary call
            result = outcome(stream, service)
            headers = response_metadata(stream.headers or ())
            code, message = result.code, unquote_to_bytes(result.message).decode("utf-8", "replace")
            if code is grpc.StatusCode.OK:
                await self.answer.start_stream(headers)
                await self.answer.lines([], more=False)
            elif code is grpc.StatusCode.UNAVAILABLE:  # another replica may take the call
                return Refused(code, lambda: self.answer.error(code, message, headers=headers))
            else:
                await self.answer.error(code, message, headers=headers)
            return code
        lines = [self._line(f) for f in (frame, *stream.read_queued())]  # a bad first message: an error answer
        await self.answer.start_stream(response_metadata(stream.headers or ()))
        try:
            while True:
                await self.answer.lines(lines)
                if (frame := await stream.read()) is None:
                    break
                lines = [self._line(f) for f in (frame, *stream.read_queued())]
        except GatewayError as exc:  # a message that is not the method's type: the stream ends there
            await self.answer.lines([_error_line(exc.code, exc.message)], more=False)
            return exc.code
        result = outcome(stream, service)
        last = []
        if result.code is not grpc.StatusCode.OK:
            last.append(_error_line(result.code, unquote_to_bytes(result.message).decode("utf-8", "replace")))
        await self.answer.lines(last, more=False)
        return result.code

    def _line(self, frame: bytes) -> bytes:
        return b'{"result":' + self._json(frame[5:]) + b"}\n"

    def _json(self, data: bytes) -> bytes:
        route = self.match.route
        response: type[Message] = message_factory.GetMessageClass(route.method.output_type)
        try:
            return response_json(route.binding, response, data)
        except DecodeError:
            raise GatewayError(f"the plugin's answer is not a valid {response.DESCRIPTOR.full_name}") from None


def _error_line(code: grpc.StatusCode, message: str) -> bytes:
    """The last line of a stream that failed once it had started: its status, as the error answers' JSON."""
    error = {"code": status_name(code), "message": message}
    return json.dumps({"error": error}, separators=(",", ":")).encode() + b"\n"
