"""uvicorn's httptools protocol with limits on what a client can make the gateway hold.

httptools (llhttp) accepts a request head of any size and uvicorn waits for it for ever: a 1 MiB
header, 2,000 headers, or a header byte every two seconds on hundreds of sockets were all served.
Here the head is bounded (request line 414; each header, their number and the whole block 431),
must arrive within `headerTimeout` (408), a body must keep a minimum rate, and connections and
WebSockets are counted per client address (gateway/edge/guard.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import httptools
from uvicorn.protocols.http.httptools_impl import STATUS_LINE
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from uvicorn.server import ServerState

from gateway.corking import CorkedHttpToolsProtocol
from gateway.edge.config import EdgeConfig
from gateway.edge.guard import Admission

__all__ = ["EdgeHttpToolsProtocol", "EdgeWebSocketProtocol"]

logger = logging.getLogger(__name__)

# Bytes a head line costs besides its name and value: ": " and CRLF.
_LINE_OVERHEAD = 4


def _grpc_web_type(headers: list[tuple[bytes, bytes]] | None) -> bytes | None:
    """The request's gRPC-Web content type, if it has one (answers then take the same type)."""
    for name, value in headers or ():
        if name == b"content-type" and value.lower().startswith(b"application/grpc-web"):
            return value.split(b";", 1)[0].strip().lower()
    return None


class _Refused(Exception):
    """Raised from a parser callback to stop parsing; the protocol then answers `status`."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class EdgeWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's websockets protocol, telling the HTTP protocol it came from when its socket closes."""

    on_lost: Callable[[], None] | None = None

    def connection_lost(self, exc: Exception | None) -> None:
        try:
            super().connection_lost(exc)
        finally:
            if self.on_lost is not None:
                on_lost, self.on_lost = self.on_lost, None
                on_lost()


class EdgeHttpToolsProtocol(CorkedHttpToolsProtocol):
    def __init__(
        self,
        config: EdgeConfig,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.guard = config.guard
        self.limits = config.guard.limits
        self._client_key: str | None = None
        self._admission = Admission.SERVER_FULL  # nothing counted until connection_made admits
        self._released = False
        self._timer: asyncio.TimerHandle | None = None
        # The request head being read: whether one is, and what it has cost so far.
        self._in_head = False
        self._head_chunks = 0  # bytes of the chunks that arrived while a head was being read
        self._head_bytes = 0  # exact: request line and the headers parsed so far
        self._header_count = 0
        # The request body being read.
        self._body_started = 0.0
        self._body_bytes = 0

    # Connection accounting

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._client_key = self.guard.client_key(self.client[0] if self.client else None)
        self._admission = self.guard.admit_connection(self._client_key)
        if self._admission is Admission.SERVER_FULL:
            logger.warning("closing a connection from %s: %d connections held", self._peer(), self.guard.connections)
            self.transport.close()
            return
        # A connection that never sends its first request is dropped as one that sends it slowly.
        self._arm(self.limits.header_timeout, self._head_timed_out)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self._release()
        super().connection_lost(exc)

    def _release(self) -> None:
        if not self._released:
            self._released = True
            self.guard.release_connection(self._client_key, self._admission)

    # Reading: the head's size is checked per chunk (a header being accumulated inside llhttp is
    # only seen in its chunks) and exactly in the callbacks.

    def data_received(self, data: bytes) -> None:
        self._unset_keepalive_if_required()
        if self._in_head:
            self._head_chunks += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            refused = exc.__context__
            if isinstance(refused, _Refused):
                self._refuse(refused.status, refused.message)
            else:
                self._bad_request()
            return
        except httptools.HttpParserError:
            self._bad_request()
            return
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        if self._in_head and self._head_chunks > self.limits.max_header_block_bytes:
            self._refuse(431, "Request header fields too large")

    def _bad_request(self) -> None:
        msg = "Invalid HTTP request received."
        self.logger.warning(msg)
        self.send_400_response(msg)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True
        self._head_chunks = 0
        self._head_bytes = 0
        self._header_count = 0
        if self._timer is None:  # a kept-alive connection's next request: its head's clock starts now
            self._arm(self.limits.header_timeout, self._head_timed_out)

    def on_url(self, url: bytes) -> None:
        super().on_url(url)
        if len(self.url) > self.limits.max_request_line_bytes:
            raise _Refused(414, "URI too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        size = len(name) + len(value) + _LINE_OVERHEAD
        self._header_count += 1
        self._head_bytes += size
        if size > self.limits.max_header_bytes:
            raise _Refused(431, "Request header field too large")
        if self._header_count > self.limits.max_headers:
            raise _Refused(431, "Too many request header fields")
        if len(self.url) + self._head_bytes > self.limits.max_header_block_bytes:
            raise _Refused(431, "Request header fields too large")
        if name.lower() in self.guard.identity_headers:
            return  # another proxy's identity header: a client's copy reaches no route (identity_headers.py)
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._disarm()
        if self._admission is Admission.CLIENT_FULL:
            raise _Refused(429, "Too many connections from this address")
        super().on_headers_complete()
        if not self.parser.should_upgrade():
            self._body_started = self.loop.time()
            self._body_bytes = 0
            self._arm(self.limits.body_timeout, self._body_check)

    def on_body(self, body: bytes) -> None:
        self._body_bytes += len(body)
        super().on_body(body)

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()

    # Answers made here, before the app: plain text, and the connection closed.

    def _refuse(self, status: int, message: str) -> None:
        self._disarm()
        # INFO: under attack there is one per connection, and the log must not become the next target.
        self.logger.info("refused a request from %s: %d %s", self._peer(), status, message)
        body = message.encode("ascii")
        head = [STATUS_LINE[status]]
        for name, value in self.server_state.default_headers:
            head += [name, b": ", value, b"\r\n"]
        grpc_web = _grpc_web_type(self.headers) if status == 429 and not self._in_head else None
        if grpc_web is not None:
            # A gRPC-Web client reads a refusal as the rate limiter answers one: HTTP 200,
            # trailers-only, RESOURCE_EXHAUSTED.
            head = [STATUS_LINE[200], *head[1:]]
            head += [
                b"content-type: " + grpc_web + b"\r\n",
                b"grpc-status: 8\r\ngrpc-message: " + body.replace(b" ", b"%20") + b"\r\n",
                b"content-length: 0\r\nconnection: close\r\n\r\n",
            ]
            body = b""
        else:
            head += [
                b"content-type: text/plain; charset=utf-8\r\n",
                b"content-length: " + str(len(body)).encode("ascii") + b"\r\n",
                b"connection: close\r\n\r\n",
            ]
        if not self.transport.is_closing():
            self.transport.write(b"".join(head) + body)
            self.transport.close()

    # Timers: one per connection, for the head or the body being read.

    def _arm(self, delay: float, callback: Callable[[], None]) -> None:
        self._disarm()
        self._timer = self.loop.call_later(delay, callback)

    def _arm_at(self, when: float, callback: Callable[[], None]) -> None:
        self._disarm()
        self._timer = self.loop.call_at(when, callback)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _head_timed_out(self) -> None:
        self._timer = None
        if self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            self.transport.close()  # a pipelined head behind an answer under way: no room for a 408
            return
        if self._in_head:
            self._refuse(408, "Request header timeout")
        else:
            self.transport.close()  # connected and sent nothing: nothing to answer

    def _body_check(self) -> None:
        self._timer = None
        cycle = self.cycle
        if self.transport.is_closing() or cycle is None or not cycle.more_body or cycle.disconnected:
            return
        now = self.loop.time()
        if self.flow.read_paused:
            # The app has not taken what came: the wait is the gateway's, so the client's clock restarts.
            self._body_started, self._body_bytes = now, 0
            self._arm(self.limits.body_timeout, self._body_check)
            return
        deadline = self._body_started + self.limits.body_timeout + self._body_bytes / self.limits.body_min_rate
        if now < deadline:
            self._arm_at(deadline, self._body_check)
            return
        self.logger.info("closing a connection from %s: its request body came too slowly", self._peer())
        # The app is reading the body: it sees the client disconnect (http.disconnect).
        self.transport.close()

    # WebSockets: counted per client address, released when the socket closes.

    def handle_websocket_upgrade(self) -> None:
        if not self.guard.admit_websocket(self._client_key):
            self._refuse(429, "Too many WebSockets from this address")
            return
        self._disarm()
        self.connections.discard(self)
        method = self.scope["method"].encode()
        output = [method, b" ", self.url, b" HTTP/1.1\r\n"]
        for name, value in self.scope["headers"]:
            output += [name, b": ", value, b"\r\n"]
        output.append(b"\r\n")
        protocol = self.ws_protocol_class(  # type: ignore[call-arg, misc]
            config=self.config, server_state=self.server_state, app_state=self.app_state
        )
        if isinstance(protocol, EdgeWebSocketProtocol):
            key = self._client_key

            def released() -> None:
                self.guard.release_websocket(key)
                self._release()

            protocol.on_lost = released
        else:  # another WebSocket protocol configured: it cannot report back, so it is not counted
            self.guard.release_websocket(self._client_key)
            self._release()
        protocol.connection_made(self.transport)
        self.transport.set_protocol(protocol)
        protocol.data_received(b"".join(output))

    def _peer(self) -> str:
        return f"{self.client[0]}:{self.client[1]}" if self.client else "a client"
