"""Calls the gateway makes itself (not proxied for a client): one unary request to a routed service.

Used by the REST endpoints that front a plugin (/api/auth/*) and by the JWKS fetch from the auth
plugin. The call goes through the same pool as client calls: the same replica choice, breaker and
connection, so a plugin that fails for proxied calls fails fast here too.
"""

from __future__ import annotations

import asyncio
from typing import TypeVar
from urllib.parse import unquote_to_bytes

import grpc
from google.protobuf.message import DecodeError, Message

from common.http2.client import StreamError
from gateway.errors import GatewayError
from gateway.upstream.outcome import gateway_error, outcome
from gateway.upstream.pool import UpstreamPool
from gateway.wire.framing import PREFIX

__all__ = ["CallFailed", "unary_call"]

_Response = TypeVar("_Response", bound=Message)


class CallFailed(GatewayError):
    """The upstream answered with a non-OK status; `code` and `message` are the upstream's."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code  # type: ignore[misc]  # the upstream's status, not a fixed class code


async def unary_call(
    pool: UpstreamPool,
    service: str,
    method: str,
    request: Message,
    response_type: type[_Response],
    *,
    metadata: bytes = b"",
    timeout: float = 5.0,
) -> _Response:
    """Call `service`/`method` with `request`; the decoded answer, or CallFailed / UnknownService /
    UpstreamUnavailable (GatewayErrors) naming what went wrong."""
    body = request.SerializeToString()
    frame = PREFIX.pack(0, len(body)) + body
    # The gateway's own calls (the auth REST endpoints, JWKS) may reach internal services.
    endpoint = pool.route(service, internal=True).pick()
    verdict = grpc.StatusCode.UNKNOWN
    try:
        try:
            stream = await endpoint.client.unary(f"/{service}/{method}", metadata, frame, timeout)
        except StreamError as exc:  # no connection to the replica
            verdict = exc.code
            raise gateway_error(exc, service) from None
        messages = []
        while (message := await stream.read()) is not None:
            messages.append(message)
        result = outcome(stream, service)
        verdict = result.code
        if verdict is not grpc.StatusCode.OK:
            if stream.error is not None:
                raise gateway_error(stream.error, service)
            raise CallFailed(verdict, _unquote(result.message))
        if len(messages) != 1:
            raise CallFailed(grpc.StatusCode.INTERNAL, f"{service}/{method} answered {len(messages)} messages, not 1")
        answer = response_type()
        try:
            answer.ParseFromString(messages[0][PREFIX.size :])
        except DecodeError:
            raise CallFailed(grpc.StatusCode.INTERNAL, f"{service}/{method} answered an undecodable message") from None
        return answer
    except asyncio.CancelledError:
        verdict = grpc.StatusCode.CANCELLED
        raise
    finally:
        endpoint.report(verdict)


def _unquote(message: bytes) -> str:
    return unquote_to_bytes(message).decode("utf-8", "replace")
