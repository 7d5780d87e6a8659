"""One upf-mux.v1 call, in a task of its own: placed upstream through the shared call path
(gateway/proxy/: auth, rate limit, route, replica), then its answer relayed: HEADERS as soon as the
upstream sends them, DATA as the client's window for the stream allows, TRAILERS.

Every call ends with exactly one TRAILERS frame, the gateway's own failures included (unknown
service, backend down, rate limit, auth refusal, client cancel), except when the socket itself ends.
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import TYPE_CHECKING
from urllib.parse import unquote_to_bytes

import grpc

from common.http2.client import Http2Stream, NeverProcessed, StreamError
from gateway.errors import BadRequest, GatewayError, MessageTooLarge
from gateway.proxy import Refused, admit, run_attempts
from gateway.upstream.outcome import gateway_error, outcome
from gateway.upstream.pool import Replica
from gateway.websocket.grpcws import MESSAGE_SLACK, parse_header_block
from gateway.websocket.mux_frames import FrameType, Open, encode, encode_block, trailers
from gateway.websocket.mux_stream import MuxStream, Status
from gateway.wire.metadata import parse_request_headers, response_metadata
from gateway.wire.request_frames import RequestFrames

if TYPE_CHECKING:
    from gateway.websocket.mux_socket import MuxSocket

__all__ = ["MAX_HEADER_BLOCK", "run_call"]

logger = logging.getLogger(__name__)

MAX_HEADER_BLOCK = MESSAGE_SLACK  # an OPEN's metadata, as for a grpc-websockets header block
_METHOD_PATH = re.compile(r"^/([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)+)/[A-Za-z_][A-Za-z0-9_]*$")


async def run_call(socket: MuxSocket, stream: MuxStream, request: Open) -> None:
    """The call's task: from OPEN to TRAILERS (or to the socket's end)."""
    try:
        await _place(socket, stream, request)
    except GatewayError as exc:
        # RateLimited carries retry-after and the RateLimit fields, auth refusals WWW-Authenticate.
        metadata = [(key.encode("latin-1"), value.encode("latin-1")) for key, value in exc.headers.items()]
        _end(socket, stream, (exc.code, exc.message, metadata))
    except asyncio.CancelledError:
        if stream.abort_status is None:
            raise  # the socket is ending: nobody to tell
        current = asyncio.current_task()
        if current is not None:
            current.uncancel()
        _end(socket, stream, stream.abort_status)
    except Exception:
        logger.exception("upf-mux.v1 call %s failed inside the gateway", request.path)
        _end(socket, stream, (grpc.StatusCode.INTERNAL, "the gateway failed while handling this call", ()))
    finally:
        socket.forget(stream)


async def _place(socket: MuxSocket, stream: MuxStream, request: Open) -> None:
    config = socket.config
    match = _METHOD_PATH.match(request.path)
    if match is None:
        raise BadRequest(f"{request.path[:200]!r} is not a gRPC method path (/package.Service/Method)")
    service = match.group(1)
    if len(request.block) > MAX_HEADER_BLOCK:
        raise MessageTooLarge(f"the OPEN metadata is larger than the gateway's limit of {MAX_HEADER_BLOCK} bytes")
    pairs = parse_header_block(request.block)
    upgrade_headers = socket.scope["headers"]
    if config.forward_cookies:
        pairs += [(name, value) for name, value in upgrade_headers if name == b"cookie"]
    # Each call's own token, else the one of the upgrade request (a non-browser client may
    # authenticate the socket once); either way this call's permission is checked.
    credentials = pairs
    if not any(name == b"authorization" for name, _ in pairs):
        credentials = pairs + [(name, value) for name, value in upgrade_headers if name == b"authorization"]
    # One rate-limit token per call, keyed like the upgrade request (its peer and headers) or
    # this call's caller: its own copy of the socket's scope takes the call's identity.
    scope = {**socket.scope} if config.authenticator is not None else socket.scope
    admitted = await admit(
        config,
        protocol="upf-mux",
        path=request.path,
        service=service,
        method=request.path.rpartition("/")[2],
        credentials=credentials,
        scope=scope,
    )
    try:
        metadata = parse_request_headers(
            pairs, forward_cookies=config.forward_cookies, forward_authorization=config.forward_authorization
        )
    except GatewayError as exc:
        admitted.record.end(exc.code)  # refused after admission: the call ends here
        raise
    block = metadata.block + admitted.identity_metadata
    requested = [t for t in (request.timeout, metadata.timeout) if t is not None]
    timeout = admitted.deadline(min(requested) if requested else None)

    async def attempt(replica: Replica, timeout: float | None) -> grpc.StatusCode | Refused:
        try:
            upstream = await replica.client.open(request.path, block, timeout)
        except StreamError as exc:
            # The client's DATA waits in the stream until it is attached: another replica can take it.
            return Refused.raising(gateway_error(exc, service), unsent=isinstance(exc, NeverProcessed))
        try:
            stream.attach(upstream, RequestFrames(socket.settings.max_message_bytes, metadata.encoding))
            await _relay(socket, stream, upstream)
        finally:
            upstream.on_writable = None
            if not upstream.ended:
                upstream.cancel("the call ended on the gateway's side")
        if stream.failure is not None:
            raise stream.failure
        result = outcome(upstream, service)
        message = unquote_to_bytes(result.message).decode("utf-8", "replace").encode()
        socket.queue(trailers(stream.id, result.code.value[0], message, result.metadata))
        return result.code

    await run_attempts(config, admitted, timeout, attempt, resendable=False)


async def _relay(socket: MuxSocket, stream: MuxStream, upstream: Http2Stream) -> None:
    """HEADERS as soon as the upstream sends them, then its messages within the client's window."""
    await upstream.wait_for_headers()
    # Now, not with the first message: a server may send its headers and then wait (for this
    # client's first message, say). A trailers-only answer, or a call that failed first, has none.
    headers_sent = upstream.headers is not None and upstream.error is None
    if headers_sent:
        _headers(socket, stream, upstream)
    max_frame = socket.settings.max_frame_bytes
    while True:
        message = await upstream.read()
        if message is None:
            return
        if not headers_sent:
            headers_sent = True
            _headers(socket, stream, upstream)
        view = memoryview(message)
        while view:
            if not await stream.sendable():
                return
            size = min(len(view), stream.window, max_frame)
            socket.queue(encode(FrameType.DATA, stream.id, view[:size]))
            stream.window -= size
            view = view[size:]


def _headers(socket: MuxSocket, stream: MuxStream, upstream: Http2Stream) -> None:
    block = encode_block(response_metadata(upstream.headers or ()))
    socket.queue(encode(FrameType.HEADERS, stream.id, block))


def _end(socket: MuxSocket, stream: MuxStream, status: Status) -> None:
    code, message, metadata = status
    socket.queue(trailers(stream.id, code.value[0], message.encode(), metadata))
