"""Calls to one upstream address: one HTTP/2 connection, opened on demand and again after it is lost.

A failed connection attempt makes the calls of the next moments fail at once with UNAVAILABLE
(grpc's "fail fast" with connection backoff), so a dead upstream costs a client no waiting and the
upstream no connection storm when it comes back.
"""

from __future__ import annotations

import asyncio
import os
import time

import grpc

from common.http2.client import ClientConnection, Http2Stream, NeverProcessed, StreamError, connect
from common.http2.headers import encode_header
from gateway.telemetry.upstream_trace import UPSTREAM_TRACE
from gateway.wire.timeout import encode_timeout

__all__ = ["Unsent", "UpstreamClient"]

_BACKOFF_INITIAL = 0.1  # seconds before the first reconnection attempt
_BACKOFF_MAX = 2.0
_CONNECT_TIMEOUT = 5.0


class Unsent(NeverProcessed):
    """The call never reached the upstream: no connection, or none that takes a new stream. Safe to
    send to another replica whatever the method (gateway/proxy/attempts.py)."""


class UpstreamClient:
    def __init__(self, address: str, *, max_message_bytes: int) -> None:
        self.address = address
        host, _, port = address.rpartition(":")
        self._host = host.strip("[]")
        self._port = int(port)
        self._authority = address
        self._max_message = max_message_bytes
        self._connection: ClientConnection | None = None
        self._connecting: asyncio.Future[ClientConnection] | None = None
        self._authority_bytes = address.encode()
        self._retry_at = 0.0
        self._backoff = _BACKOFF_INITIAL
        self._last_error = ""

    def _fields(self, metadata: bytes, timeout: float | None) -> bytes:
        """The headers that change from call to call: grpc-timeout, the forwarded metadata, and the
        attempt's trace context (gateway/telemetry/upstream_trace.py)."""
        metadata += UPSTREAM_TRACE.get()
        if timeout is not None:
            return encode_header(b"grpc-timeout", encode_timeout(timeout)) + metadata
        return metadata

    async def connection(self) -> ClientConnection:
        connection = self._connection
        if connection is not None and connection.usable:
            return connection
        if self._connecting is None:
            self._connecting = asyncio.ensure_future(self._connect())
        return await asyncio.shield(self._connecting)

    async def _connect(self) -> ClientConnection:
        try:
            if time.monotonic() < self._retry_at:
                raise Unsent(grpc.StatusCode.UNAVAILABLE, self._last_error)
            try:
                connection = await connect(
                    self._host,
                    self._port,
                    authority=self._authority,
                    max_message=self._max_message,
                    timeout=_CONNECT_TIMEOUT,
                )
            except (OSError, TimeoutError) as exc:
                if isinstance(exc, TimeoutError):
                    reason = f"no connection within {_CONNECT_TIMEOUT:g} s"
                elif exc.errno:
                    reason = os.strerror(exc.errno)
                else:
                    reason = str(exc)
                self._last_error = f"cannot connect to {self.address}: {reason}"
                self._retry_at = time.monotonic() + self._backoff
                self._backoff = min(self._backoff * 2, _BACKOFF_MAX)
                raise Unsent(grpc.StatusCode.UNAVAILABLE, self._last_error) from None
            self._backoff = _BACKOFF_INITIAL
            self._connection = connection
            return connection
        finally:
            self._connecting = None

    async def unary(self, path: str, metadata: bytes, body: bytes, timeout: float | None) -> Http2Stream:
        """Start a call whose whole request is `body` (gRPC frames); read the answer from the stream."""
        connection = self._connection
        if connection is None or not connection.usable:
            connection = await self.connection()
        target = (self._authority_bytes, path.encode())
        fields = self._fields(metadata, timeout)
        stream = connection.open_unary(target, fields, body)
        if stream is None:
            stream = await _open(connection, target, fields)
            if timeout is not None:
                stream.set_deadline(timeout)
            await stream.send(body, end_stream=True)
        elif timeout is not None:
            stream.set_deadline(timeout)
        return stream

    async def open(self, path: str, metadata: bytes, timeout: float | None) -> Http2Stream:
        """Start a call whose request messages follow with `stream.send`."""
        connection = await self.connection()
        stream = await _open(connection, (self._authority_bytes, path.encode()), self._fields(metadata, timeout))
        if timeout is not None:
            stream.set_deadline(timeout)
        return stream

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None


async def _open(connection: ClientConnection, target: tuple[bytes, bytes], fields: bytes) -> Http2Stream:
    try:
        return await connection.open_stream(target, fields)
    except StreamError as exc:  # raised before the stream's HEADERS were written
        raise Unsent(exc.code, exc.message) from None
