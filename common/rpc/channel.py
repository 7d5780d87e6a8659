"""`Channel`: the part of grpc.aio's client channel that generated stubs and the plugin SDK use, on
the HTTP/2 client the gateway calls its upstreams with (common/http2/client.py).

    channel = Channel("127.0.0.1:50051", metadata_hooks=[lambda: [("x-caller", token())]])
    reply = await demo_pb2_grpc.EchoStub(channel).Say(demo_pb2.SayRequest(text="hi"), timeout=2)

Why not grpc.aio: its per-call client cost is a large part of why a call through a storage or cache
plugin is several times slower than the database driver itself. `python -m bench.rpc_channel`
(bench/README.md) measured a no-op unary call, 16 in flight, on a loaded 2-core machine: 318 us of
the caller's CPU through grpc.aio's channel, 157 us through this one.

What it keeps of grpc.aio: the four multicallables and their call objects (awaitable, async-iterable,
`read`/`write`/`done_writing`, metadata, `code`/`details`, `cancel`, done callbacks), failures as
`grpc.aio.AioRpcError` with grpc's status codes, the end of a stream as `grpc.aio.EOF`, and a call
cancelled locally (by `cancel()` or by cancelling the task that awaits it) raising CancelledError
and resetting its stream. One HTTP/2 connection per channel, opened on first use and again after it
is lost; a connection that got GOAWAY drains its calls while new ones go on a new connection. A
connection that cannot be made fails the call at once with UNAVAILABLE, unless the call was made with
`wait_for_ready=True`: then it is tried again until the call's deadline.
What it leaves out: TLS and call credentials, compression of requests, interceptors (a
`metadata_hooks` callable adds metadata to every call instead), retries, load balancing, channel
options.

    channel.py   Channel: the connection, the multicallables, the metadata every call carries
    calls.py     the four kinds of call object
    status.py    how a call ended, and metadata both ways
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable, Iterable, Sequence
from types import TracebackType
from typing import Any, Final

import grpc

from common.http2.client import ClientConnection, connect
from common.http2.headers import encode_header, encode_timeout
from common.rpc.calls import (
    Deserializer,
    Serializer,
    StreamStreamCall,
    StreamUnaryCall,
    UnaryStreamCall,
    UnaryUnaryCall,
    retrieve,
)
from common.rpc.status import CallFailed, Metadatum, encode_metadata

__all__ = ["Channel", "MetadataHook"]

MetadataHook = Callable[[], Iterable[Metadatum]]
"""Called at every call: metadata to add to it (a caller's token, the trace context), replacing any
values the call itself gives under the same names."""

_USER_AGENT: Final = b"upf-plugin-sdk"
_CONNECT_TIMEOUT: Final = 20.0  # grpc's minimum connect timeout
_BACKOFF_INITIAL: Final = 0.1  # seconds between connection attempts of a wait_for_ready call, doubling
_BACKOFF_MAX: Final = 2.0


class Channel(grpc.aio.Channel):
    """Calls to one `host:port` over one HTTP/2 connection (plaintext, h2c).

    `metadata_hooks`: see MetadataHook. `max_message_bytes`: the largest response message taken
    (grpc's default receive limit); a larger one ends the call with RESOURCE_EXHAUSTED.
    """

    def __init__(
        self, target: str, *, metadata_hooks: Sequence[MetadataHook] = (), max_message_bytes: int = 4 * 1024 * 1024
    ) -> None:
        host, _, port = target.rpartition(":")
        self.target = target
        self._host = host.strip("[]")
        self._port = int(port)
        self.authority = target.encode()
        self._hooks = tuple(metadata_hooks)
        self._max_message = max_message_bytes
        self._connection: ClientConnection | None = None
        self._connecting: asyncio.Future[ClientConnection] | None = None
        self._closed = False

    # --- grpc.aio.Channel -------------------------------------------------------------------

    def unary_unary(
        self,
        method: str,
        request_serializer: Serializer = None,
        response_deserializer: Deserializer = None,
        _registered_method: bool | None = False,
    ) -> UnaryUnaryMultiCallable:
        return UnaryUnaryMultiCallable(self, method, request_serializer, response_deserializer)

    def unary_stream(
        self,
        method: str,
        request_serializer: Serializer = None,
        response_deserializer: Deserializer = None,
        _registered_method: bool | None = False,
    ) -> UnaryStreamMultiCallable:
        return UnaryStreamMultiCallable(self, method, request_serializer, response_deserializer)

    def stream_unary(
        self,
        method: str,
        request_serializer: Serializer = None,
        response_deserializer: Deserializer = None,
        _registered_method: bool | None = False,
    ) -> StreamUnaryMultiCallable:
        return StreamUnaryMultiCallable(self, method, request_serializer, response_deserializer)

    def stream_stream(
        self,
        method: str,
        request_serializer: Serializer = None,
        response_deserializer: Deserializer = None,
        _registered_method: bool | None = False,
    ) -> StreamStreamMultiCallable:
        return StreamStreamMultiCallable(self, method, request_serializer, response_deserializer)

    async def channel_ready(self) -> None:
        """Until the connection is up (tried again and again, as for a wait_for_ready call)."""
        await self.connection(None, wait_for_ready=True)

    def get_state(self, try_to_connect: bool = False) -> grpc.ChannelConnectivity:
        if self._closed:
            return grpc.ChannelConnectivity.SHUTDOWN
        if self.ready_connection is not None:
            return grpc.ChannelConnectivity.READY
        return grpc.ChannelConnectivity.CONNECTING if self._connecting is not None else grpc.ChannelConnectivity.IDLE

    async def wait_for_state_change(self, last_observed_state: grpc.ChannelConnectivity) -> None:
        raise NotImplementedError("common.rpc.Channel does not report state changes; use channel_ready()")

    async def close(self, grace: float | None = None) -> None:
        """No new calls; running ones get `grace` seconds to finish, then end CANCELLED (at once without grace)."""
        self._closed = True
        connection, self._connection = self._connection, None
        if connection is None or connection.transport is None:
            return
        if grace and connection.streams:
            # A connection that is closing closes itself once its last call has ended (ClientConnection.forget).
            connection.closing = connection.closing or "the channel is closing"
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(connection.closed.wait(), grace)
        for stream in list(connection.streams.values()):
            stream.cancel("the channel was closed")
        connection.close()
        await connection.closed.wait()

    async def __aenter__(self) -> Channel:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc_val: BaseException | None, exc_tb: TracebackType | None
    ) -> None:
        await self.close(None)

    # --- for the calls (calls.py) ----------------------------------------------------------

    @property
    def ready_connection(self) -> ClientConnection | None:
        """The connection new calls go on, when there is one that takes them: no waiting."""
        connection = self._connection
        return connection if connection is not None and connection.usable else None

    async def connection(self, deadline: float | None, *, wait_for_ready: bool) -> ClientConnection:
        """The connection new calls go on, opened when there is none (CallFailed when it cannot be)."""
        connection = self.ready_connection
        if connection is not None:
            return connection
        loop = asyncio.get_running_loop()
        backoff = _BACKOFF_INITIAL
        while True:
            if self._closed:
                raise CallFailed(grpc.StatusCode.CANCELLED, "the channel is closed")
            if self._connecting is None:
                timeout = _CONNECT_TIMEOUT if deadline is None else max(0.0, deadline - loop.time())
                # Shared by the calls that start meanwhile: one connection attempt, not one per call.
                self._connecting = loop.create_task(self._open_connection(timeout))
                self._connecting.add_done_callback(retrieve)
            try:
                return await asyncio.shield(self._connecting)
            except CallFailed:
                if not wait_for_ready:
                    raise
            await asyncio.sleep(backoff if deadline is None else min(backoff, max(0.0, deadline - loop.time())))
            backoff = min(backoff * 2, _BACKOFF_MAX)

    async def _open_connection(self, timeout: float) -> ClientConnection:
        try:
            connection = await connect(
                self._host,
                self._port,
                authority=self.target,
                max_message=self._max_message,
                timeout=timeout,
                user_agent=_USER_AGENT,
            )
        except (OSError, TimeoutError) as exc:
            if isinstance(exc, TimeoutError):
                reason = f"no connection within {timeout:g} s"
            else:
                reason = os.strerror(exc.errno) if exc.errno else str(exc)
            raise CallFailed(grpc.StatusCode.UNAVAILABLE, f"cannot connect to {self.target}: {reason}") from None
        finally:
            self._connecting = None
        if self._closed:
            connection.close()
            raise CallFailed(grpc.StatusCode.CANCELLED, "the channel is closed")
        self._connection = connection
        return connection

    def request_fields(self, metadata: Iterable[Metadatum] | None, timeout: float | None) -> bytes:
        """The call's own headers, HPACK-encoded: grpc-timeout, the hooks' metadata, the call's."""
        fields = encode_header(b"grpc-timeout", encode_timeout(timeout)) if timeout is not None else b""
        hooked: list[Metadatum] = []
        for hook in self._hooks:
            hooked.extend(hook())
        if hooked:
            fields += encode_metadata(hooked)
            if metadata:
                replaced = {key for key, _ in hooked}
                metadata = [item for item in metadata if item[0] not in replaced]
        if metadata:
            fields += encode_metadata(metadata)
        return fields


class _MultiCallable:
    def __init__(self, channel: Channel, method: str, serializer: Serializer, deserializer: Deserializer) -> None:
        self._channel = channel
        self._method = method.encode()
        self._serializer = serializer
        self._deserializer = deserializer

    def _args(
        self,
        timeout: float | None,
        metadata: Iterable[Metadatum] | None,
        credentials: grpc.CallCredentials | None,
        wait_for_ready: bool | None,
    ) -> tuple[Any, ...]:
        channel = self._channel
        return (
            channel,
            self._method,
            self._serializer,
            self._deserializer,
            timeout,
            metadata,
            credentials,
            wait_for_ready,
        )


class UnaryUnaryMultiCallable(_MultiCallable, grpc.aio.UnaryUnaryMultiCallable[Any, Any]):
    def __call__(
        self,
        request: Any,
        timeout: float | None = None,
        metadata: Any = None,
        credentials: grpc.CallCredentials | None = None,
        wait_for_ready: bool | None = None,
        compression: grpc.Compression | None = None,
    ) -> UnaryUnaryCall:
        return UnaryUnaryCall(request, *self._args(timeout, metadata, credentials, wait_for_ready))


class UnaryStreamMultiCallable(_MultiCallable, grpc.aio.UnaryStreamMultiCallable[Any, Any]):
    def __call__(
        self,
        request: Any,
        timeout: float | None = None,
        metadata: Any = None,
        credentials: grpc.CallCredentials | None = None,
        wait_for_ready: bool | None = None,
        compression: grpc.Compression | None = None,
    ) -> UnaryStreamCall:
        return UnaryStreamCall(request, *self._args(timeout, metadata, credentials, wait_for_ready))


class StreamUnaryMultiCallable(_MultiCallable, grpc.aio.StreamUnaryMultiCallable[Any, Any]):
    def __call__(
        self,
        request_iterator: Any = None,
        timeout: float | None = None,
        metadata: Any = None,
        credentials: grpc.CallCredentials | None = None,
        wait_for_ready: bool | None = None,
        compression: grpc.Compression | None = None,
    ) -> StreamUnaryCall:
        return StreamUnaryCall(request_iterator, *self._args(timeout, metadata, credentials, wait_for_ready))


class StreamStreamMultiCallable(_MultiCallable, grpc.aio.StreamStreamMultiCallable[Any, Any]):
    def __call__(
        self,
        request_iterator: Any = None,
        timeout: float | None = None,
        metadata: Any = None,
        credentials: grpc.CallCredentials | None = None,
        wait_for_ready: bool | None = None,
        compression: grpc.Compression | None = None,
    ) -> StreamStreamCall:
        return StreamStreamCall(request_iterator, *self._args(timeout, metadata, credentials, wait_for_ready))
