"""A native gRPC call the gateway answers itself (server reflection), on the ingress's port.

Each request message gets one answer message, in order, as grpc.reflection's ServerReflectionInfo
asks; the client's half-close ends the call with OK. The caller is admitted as a proxied call is
(authenticated and rate-limited: admit_local), and the framing, windows and endings are the
ingress call's own (LocalCall is an IngressCall whose upstream is the gateway).

Request bytes are given back to the client's windows only once their message has been answered, so a
client that sends requests without reading the answers is held back as a proxied call's client is.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc

from common.http2.headers import encode_header
from common.http2.server import ServerConnection
from gateway.errors import GatewayError, UnsupportedEncoding
from gateway.ingress.call import RESPONSE_START, IngressCall
from gateway.proxy import admit_local
from gateway.wire.framing import FrameDecoder, encode_frame
from gateway.wire.metadata import SUPPORTED_ENCODINGS
from gateway.wire.request_frames import RequestFrames

if TYPE_CHECKING:
    from gateway.ingress.server import IngressServer

__all__ = ["Answer", "LocalCall", "LocalMethod"]

logger = logging.getLogger(__name__)

# One call's answerer: a request message in, its answer out; a GatewayError ends the call with its status.
Answer = Callable[[bytes], Awaitable[bytes]]
# A method the gateway serves: opens one call (state such as "files sent already" lives per call).
LocalMethod = Callable[[], Answer]

_OK = encode_header(b"grpc-status", b"0")


class LocalCall(IngressCall):
    """One client stream answered by the gateway, message by message."""

    __slots__ = ("answer", "arrived", "messages", "refusal", "requests", "split")

    def __init__(
        self,
        conn: ServerConnection[IngressServer],
        stream_id: int,
        path: str,
        method: LocalMethod,
        scope: dict[str, Any],
    ) -> None:
        service, _, name = path[1:].partition("/")
        super().__init__(conn, stream_id, path, service, name, b"", None, scope)
        self.answer = method()
        self.refusal: GatewayError | None = None
        encoding = _encoding(scope["headers"])
        if encoding is not None and encoding not in SUPPORTED_ENCODINGS:
            self.refusal = UnsupportedEncoding(
                f"grpc-encoding {encoding!r} is not supported",
                headers={"grpc-accept-encoding": ",".join(SUPPORTED_ENCODINGS)},
            )
            encoding = None
        limit = conn.server.max_message_bytes
        self.requests = RequestFrames(limit, None if encoding == "identity" else encoding)  # checked, inflated
        self.split = FrameDecoder(limit)  # ... then cut into messages
        # Each message with the request bytes to give back once it is answered; None: the client half-closed.
        self.messages: asyncio.Queue[tuple[bytes, int] | None] = asyncio.Queue()
        self.arrived = 0  # bytes not yet counted towards a message

    def on_data(self, data: bytes, end_stream: bool) -> None:
        if self.closed or self.refusal is not None:
            self.conn.credit(len(data))
            self.request_ended = self.request_ended or end_stream
            return
        self.pending_bytes += len(data)  # given back by _close if never answered
        self.arrived += len(data)
        try:
            if data:
                for _flags, payload in self.split.feed(bytes(self.requests.feed(data))):
                    self.messages.put_nowait((payload, self.arrived))
                    self.arrived = 0
            if end_stream:
                self.request_ended = True
                self.requests.close()
                self.split.close()
                self.messages.put_nowait(None)
        except GatewayError as exc:
            self._answer_locally(exc.code, exc.message)
            self.messages.put_nowait(None)

    async def run(self) -> None:
        try:
            await self._serve()
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("native gRPC call %s failed inside the gateway", self.path)
            if not self.closed:
                self._answer_locally(grpc.StatusCode.INTERNAL, "the gateway failed while handling this call")
        finally:
            self._close()

    async def _serve(self) -> None:
        try:
            if self.refusal is not None:
                raise self.refusal
            await admit_local(
                self.conn.server.config, path=self.path, credentials=self.scope["headers"], scope=self.scope
            )
        except GatewayError as exc:
            self._answer_locally(exc.code, exc.message, exc.headers)
            return
        while (item := await self.messages.get()) is not None and not self.closed:
            message, size = item
            try:
                reply = encode_frame(await self.answer(message))
            except GatewayError as exc:
                self._answer_locally(exc.code, exc.message, exc.headers)
                return
            if not self.headers_sent:
                self.headers_sent = True
                self.conn.write_headers(self.id, RESPONSE_START, end_stream=False)
            await self.conn.send_data(self, reply, False)
            if self.closed:
                return
            self.pending_bytes -= size
            self._credit(size)
        self._end(_OK)


def _encoding(headers: list[tuple[bytes, bytes]]) -> str | None:
    for name, value in headers:
        if name == b"grpc-encoding":
            return value.decode("latin-1").strip().lower()
    return None
