"""The grpc-websockets bridge byte by byte (research section 4, W1-W13), with the `websockets` client.

Choices pinned here (the protocol is described in gateway/websocket/grpcws.py):

- W1 the subprotocol is required (HTTP 400 without it) and echoed.
- W2 the Origin is checked before the upgrade (HTTP 403): allowed when cors.allowOrigins lists it,
  when it is the gateway's own origin, or when there is none (not a browser).
- W3 metadata, auth and grpc-timeout come from the first message only, never from the upgrade
  request; a malformed block ends the call with INVALID_ARGUMENT.
- W7 every accepted call answers with exactly: a header frame (content-type and the upstream's
  response metadata), the data frames, one trailer frame, then close 1000; the gateway's own
  errors too (never a socket that just drops).
- W10 a WebSocket message over maxMessageBytes + MESSAGE_SLACK closes the socket with 1009 (the
  server's limit); a gRPC message over maxMessageBytes ends the call with RESOURCE_EXHAUSTED, then
  close 1009. Either way the upstream call is cancelled.
- W11 pings come from the server every websocket.pingInterval; a client that stops answering them
  is closed after websocket.pingTimeout.
- W12 any content type other than binary gRPC-Web, the text format included, is UNIMPLEMENTED.
- Protocol errors mid-call (text message, unknown control byte, data after the half-close, a
  trailer frame, a compressed frame without grpc-encoding, a frame cut short by the half-close)
  end the call with a status and cancel the upstream.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gzip
import os
import struct
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest
from starlette.types import Message
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.asyncio.client import ClientConnection, connect
from websockets.client import ClientProtocol
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.frames import Frame, Opcode
from websockets.protocol import State
from websockets.typing import Origin, Subprotocol
from websockets.uri import parse_uri

from gateway.proxy import ProxyConfig
from gateway.serve import _uvicorn_options
from gateway.settings import load_settings
from gateway.upstream.pool import UpstreamPool
from gateway.websocket import GrpcWebSocketEndpoint
from gateway.websocket.grpcws import MESSAGE_SLACK
from tests.conftest import ALLOWED_ORIGIN
from tests.support.h2server import GRPC_HEADERS, H2Server, Request as H2Request, ServerConnection, grpc_frame
from tests.support.processes import Gateway, run_gateway, wait_until

SERVICE = "accept.v1.Probe"
SUBPROTOCOL = Subprotocol("grpc-websockets")
BINARY_HEADERS = b"content-type: application/grpc-web+proto\r\nx-grpc-web: 1\r\n"
MAX_MESSAGE = 1024 * 1024  # the session gateway's maxMessageBytes
TRAILER = 0x80
OK, INVALID_ARGUMENT, DEADLINE_EXCEEDED, NOT_FOUND, RESOURCE_EXHAUSTED, ABORTED = 0, 3, 4, 5, 8, 10
UNIMPLEMENTED, INTERNAL, UNAVAILABLE = 12, 13, 14
AWKWARD_MESSAGE = "50% off: café ✓\nsecond line"
TIMEOUT = 10.0


def frame(payload: bytes, flags: int = 0) -> bytes:
    return struct.pack(">BI", flags, len(payload)) + payload


def data(*payloads: bytes) -> bytes:
    """One client data message: control byte 0x00, then the frames."""
    return b"\x00" + b"".join(frame(payload) for payload in payloads)


def block(pairs: list[tuple[str, str]]) -> bytes:
    return "".join(f"{name}: {value}\r\n" for name, value in pairs).encode()


def parse_block(payload: bytes) -> list[tuple[str, str]]:
    text = payload.decode("ascii")
    assert text.endswith("\r\n") or not text, f"block does not end with CRLF: {text!r}"
    return [(name, value.strip()) for name, _, value in (line.partition(":") for line in text.split("\r\n")[:-1])]


def key() -> str:
    return f"ws-{uuid.uuid4().hex}"


def ws_url(gateway: Gateway, method: str, service: str = SERVICE, prefix: str = "") -> str:
    return f"ws://127.0.0.1:{gateway.http_port}{prefix}/{service}/{method}"


@dataclass
class Answer:
    """Everything the gateway sent on one socket, taken apart."""

    messages: list[bytes]  # the WebSocket messages as they arrived
    close_code: int | None

    @property
    def frames(self) -> list[tuple[int, bytes]]:
        stream, frames, offset = b"".join(self.messages), [], 0
        while offset < len(stream):
            assert len(stream) - offset >= 5, f"bytes after the last whole frame: {stream[offset:]!r}"
            flags, length = struct.unpack_from(">BI", stream, offset)
            frames.append((flags, stream[offset + 5 : offset + 5 + length]))
            assert len(frames[-1][1]) == length, "frame cut short"
            offset += 5 + length
        return frames

    @property
    def headers(self) -> dict[str, str]:
        flags, payload = self.frames[0]
        assert flags == TRAILER, "the first frame is not the header frame"
        return dict(parse_block(payload))

    @property
    def replies(self) -> list[bytes]:
        return [payload for flags, payload in self.frames if flags == 0]

    @property
    def trailers(self) -> dict[str, str]:
        metadata = [payload for flags, payload in self.frames if flags == TRAILER]
        assert len(metadata) == 2, f"expected a header and a trailer frame, got {len(metadata)} metadata frames"
        assert self.frames[-1][0] == TRAILER, "the trailer frame is not the last frame"
        return dict(parse_block(metadata[1]))

    @property
    def status(self) -> int:
        return int(self.trailers["grpc-status"])

    @property
    def message(self) -> str:
        return unquote(self.trailers.get("grpc-message", ""))


class Call:
    """One grpc-websockets call, driven message by message."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.received: list[bytes] = []
        self._buffer = b""
        self._header_frame_seen = False

    async def send(self, message: bytes | str) -> None:
        await self.ws.send(message)

    async def request(self, pb: Any, **fields: Any) -> None:
        await self.ws.send(data(pb.CallRequest(**fields).SerializeToString()))

    async def half_close(self) -> None:
        await self.ws.send(b"\x01")

    async def next_frame(self) -> tuple[int, bytes]:
        async with asyncio.timeout(TIMEOUT):
            while True:
                if len(self._buffer) >= 5:
                    flags, length = struct.unpack_from(">BI", self._buffer)
                    if len(self._buffer) >= 5 + length:
                        payload = self._buffer[5 : 5 + length]
                        self._buffer = self._buffer[5 + length :]
                        return flags, payload
                message = await self.ws.recv()
                assert isinstance(message, bytes), f"text message from the gateway: {message!r}"
                self.received.append(message)
                self._buffer += message

    async def reply(self, pb: Any) -> Any:
        """The next reply message, skipping the header frame."""
        flags, payload = await self.next_frame()
        if flags == TRAILER and not self._header_frame_seen:
            self._header_frame_seen = True
            flags, payload = await self.next_frame()
        assert flags == 0, f"expected a message frame, got flags {flags:#x}: {payload!r}"
        return pb.CallReply.FromString(payload)

    async def finish(self) -> Answer:
        """Everything up to the close (including what next_frame already took)."""
        with contextlib.suppress(ConnectionClosed):
            async with asyncio.timeout(TIMEOUT):
                while True:
                    message = await self.ws.recv()
                    assert isinstance(message, bytes), f"text message from the gateway: {message!r}"
                    self.received.append(message)
        return Answer(self.received, self.ws.close_code)


@contextlib.asynccontextmanager
async def opened(
    gateway: Gateway,
    method: str,
    *,
    service: str = SERVICE,
    prefix: str = "",
    origin: str | None = ALLOWED_ORIGIN,
    header_block: bytes | None = BINARY_HEADERS,
    extra_headers: dict[str, str] | None = None,
) -> AsyncIterator[Call]:
    """A socket on the method's path with the grpc-websockets subprotocol, its header block sent."""
    async with connect(
        ws_url(gateway, method, service, prefix),
        subprotocols=[SUBPROTOCOL],
        origin=Origin(origin) if origin else None,
        additional_headers=extra_headers,
        compression=None,  # byte-exact messages; sizes are what the test sends
        max_size=None,
        proxy=None,
        open_timeout=TIMEOUT,
        close_timeout=TIMEOUT,
    ) as ws:
        if header_block is not None:
            await ws.send(header_block)
        yield Call(ws)


async def unary(gateway: Gateway, pb: Any, header_block: bytes = BINARY_HEADERS, **fields: Any) -> Answer:
    async with opened(gateway, "Unary", header_block=header_block) as call:
        await call.request(pb, **fields)
        await call.half_close()
        return await call.finish()


def observe(pb: Any, probe_stub: Any, name: str) -> Any:
    return probe_stub.Observe(pb.Key(key=name), timeout=5)


def wait_cancelled(pb: Any, probe_stub: Any, name: str) -> None:
    wait_until(
        lambda: observe(pb, probe_stub, name).cancelled == 1, timeout=5, what="the probe to see the call cancelled"
    )


async def refused(gateway: Gateway, **kwargs: Any) -> InvalidStatus:
    with pytest.raises(InvalidStatus) as info:
        async with connect(ws_url(gateway, "Unary"), proxy=None, open_timeout=TIMEOUT, **kwargs):
            pass
    return info.value


# W1 -----------------------------------------------------------------------------------------------


async def test_w1_the_subprotocol_is_echoed(gateway: Gateway, pb: Any) -> None:
    async with opened(gateway, "Unary") as call:
        assert call.ws.subprotocol == "grpc-websockets"
        assert call.ws.response is not None
        assert call.ws.response.headers["Sec-WebSocket-Protocol"] == "grpc-websockets"
        await call.request(pb, payload=b"hi")
        await call.half_close()
        answer = await call.finish()
    assert answer.status == OK
    assert [pb.CallReply.FromString(r).payload for r in answer.replies] == [b"hi"]


async def test_w1_without_the_subprotocol_the_upgrade_is_refused(gateway: Gateway) -> None:
    error = await refused(gateway, origin=Origin(ALLOWED_ORIGIN))
    assert error.response.status_code == 400
    assert b"grpc-websockets" in error.response.body

    other = await refused(gateway, origin=Origin(ALLOWED_ORIGIN), subprotocols=[Subprotocol("chat")])
    assert other.response.status_code == 400


# W2 -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("origin", ["http://evil.example", "null", "http://allowed.example.evil.example"])
async def test_w2_a_disallowed_origin_is_refused_before_the_upgrade(gateway: Gateway, origin: str) -> None:
    error = await refused(gateway, origin=Origin(origin), subprotocols=[SUBPROTOCOL])
    assert error.response.status_code == 403
    assert error.response.body == b"origin not allowed\n"


@pytest.mark.parametrize("origin", ["allowed", "none", "same"])
async def test_w2_allowed_origins(gateway: Gateway, pb: Any, origin: str) -> None:
    # Listed in cors.allowOrigins; no Origin at all (not a browser); the gateway's own origin.
    value = {"allowed": ALLOWED_ORIGIN, "none": None, "same": gateway.url}[origin]
    async with opened(gateway, "Unary", origin=value) as call:
        await call.request(pb)
        await call.half_close()
        answer = await call.finish()
    assert answer.status == OK


# W3 -----------------------------------------------------------------------------------------------


async def test_w3_metadata_auth_and_deadline_come_from_the_header_block(gateway: Gateway, pb: Any) -> None:
    raw = b"\x00\xff raw"
    header_block = block(
        [
            ("Content-Type", "application/grpc-web+proto"),
            ("x-grpc-web", "1"),
            ("X-Custom", "abc"),
            ("authorization", "Bearer token-123"),
            ("x-one-bin", base64.b64encode(raw).decode()),
            # improbable joins the values of one name with ", ": the service sees the last one here.
            ("x-two-bin", f"{base64.b64encode(b'first').decode()}, {base64.b64encode(b'second').decode()}"),
            ("grpc-timeout", "5S"),
        ]
    )
    async with opened(gateway, "Unary", header_block=header_block, extra_headers={"x-upgrade-only": "1"}) as call:
        await call.request(pb)
        await call.half_close()
        answer = await call.finish()

    assert answer.status == OK
    reply = pb.CallReply.FromString(answer.replies[0])
    received = dict(reply.metadata)
    assert received["x-custom"] == "abc"
    assert received["authorization"] == "Bearer token-123"
    assert base64.b64decode(received["x-one-bin"]) == raw
    assert base64.b64decode(received["x-two-bin"]) == b"second"
    # Headers of the upgrade request are the browser's, not the call's.
    assert "x-upgrade-only" not in received
    assert not {"x-grpc-web", "content-type", "origin", "sec-websocket-protocol"} & set(received)
    assert 3.0 < reply.deadline_remaining <= 5.5


@pytest.mark.parametrize(
    ("header_block", "expected"),
    [
        (b"content-type application/grpc-web+proto\r\n", "not `name: value`"),
        (b": no name\r\n", "not `name: value`"),
        (b"bad name: x\r\n", "cannot be sent as gRPC metadata"),
        (b"x-trace-bin: ***\r\n", "not valid base64"),
        (b"grpc-timeout: soon\r\n", "grpc-timeout"),
        ("content-type: application/grpc-web+proto\r\n", "binary message"),
    ],
    ids=["no-colon", "no-name", "bad-name", "bad-base64", "bad-timeout", "text-message"],
)
async def test_w3_a_malformed_header_block_ends_with_invalid_argument(
    gateway: Gateway, header_block: bytes | str, expected: str
) -> None:
    async with opened(gateway, "Unary", header_block=None) as call:
        await call.send(header_block)
        answer = await call.finish()
    assert answer.status == INVALID_ARGUMENT
    assert expected in answer.message
    assert answer.replies == []
    assert answer.close_code == 1000


# W4 -----------------------------------------------------------------------------------------------


async def test_w4_frames_split_across_messages_and_several_in_one_are_reassembled(gateway: Gateway, pb: Any) -> None:
    first, second, third = (pb.CallRequest(payload=p).SerializeToString() for p in (b"one-", b"two-", b"three"))
    stream = frame(first)
    async with opened(gateway, "ClientStream") as call:
        # One frame over three messages: cut inside the prefix, then inside the payload.
        await call.send(b"\x00" + stream[:2])
        await call.send(b"\x00" + stream[2:8])
        await call.send(b"\x00" + stream[8:])
        # Two frames in one message, the second cut short and finished by the next message.
        both = frame(second) + frame(third)
        await call.send(b"\x00" + both[:-3])
        await call.send(b"\x00" + both[-3:])
        await call.half_close()
        answer = await call.finish()
    assert answer.status == OK
    reply = pb.CallReply.FromString(answer.replies[0])
    assert (reply.payload, reply.requests) == (b"one-two-three", 3)


async def test_w4_an_empty_message_frame_is_a_message(gateway: Gateway, pb: Any) -> None:
    async with opened(gateway, "ClientStream") as call:
        await call.send(data(b"", b""))
        await call.half_close()
        answer = await call.finish()
    assert answer.status == OK
    assert pb.CallReply.FromString(answer.replies[0]).requests == 2


# W5 -----------------------------------------------------------------------------------------------


async def test_w5_half_close_ends_the_client_stream(gateway: Gateway, pb: Any) -> None:
    # A client-streaming service answers only once its request stream has ended upstream.
    async with opened(gateway, "ClientStream") as call:
        for part in (b"a", b"b"):
            await call.request(pb, payload=part)
        await call.half_close()
        reply = await call.reply(pb)
        answer = await call.finish()
    assert (reply.payload, reply.requests) == (b"ab", 2)
    assert answer.status == OK


async def test_w5_replies_keep_flowing_after_the_half_close(gateway: Gateway, pb: Any, probe_stub: Any) -> None:
    # After each reply the service waits for Release, which comes after the half-close.
    name = key()
    async with opened(gateway, "ServerStream") as call:
        await call.request(pb, count=3, key=name, wait_release=True)
        await call.half_close()
        indexes = []
        for _ in range(3):
            indexes.append((await call.reply(pb)).index)
            probe_stub.Release(pb.Key(key=name), timeout=5)
        answer = await call.finish()
    assert indexes == [0, 1, 2]
    assert answer.status == OK


# W6 -----------------------------------------------------------------------------------------------


async def test_w6_bidi_ping_pong(gateway: Gateway, pb: Any) -> None:
    # Request n+1 goes out only after reply n has arrived: a bridge that held replies back would hang.
    async with opened(gateway, "Bidi") as call:
        for n in range(5):
            await call.request(pb, payload=f"ping {n}".encode())
            reply = await call.reply(pb)
            assert (reply.payload, reply.index, reply.requests) == (f"ping {n}".encode(), n, n + 1)
        await call.half_close()
        answer = await call.finish()
    assert answer.status == OK


# W7 -----------------------------------------------------------------------------------------------


async def test_w7_header_frame_then_data_frames_then_trailer_frame_then_close_1000(gateway: Gateway, pb: Any) -> None:
    trailer_bytes = b"\xff\x00"
    answer = await unary(
        gateway,
        pb,
        payload=b"body",
        headers={"x-resp": "h1"},
        trailers={"x-trail": "t1", "x-trail-bin": base64.b64encode(trailer_bytes).decode()},
    )
    # Message by message: the header frame, the reply, the trailer frame.
    assert [m[0] for m in answer.messages] == [TRAILER, 0, TRAILER]
    assert answer.headers == {"content-type": "application/grpc-web+proto", "x-resp": "h1"}
    assert pb.CallReply.FromString(answer.replies[0]).payload == b"body"
    assert answer.trailers["grpc-status"] == "0"
    assert answer.trailers["x-trail"] == "t1"
    assert base64.b64decode(answer.trailers["x-trail-bin"]) == trailer_bytes
    assert answer.close_code == 1000


async def test_w7_a_stream_without_replies_still_sends_both_frames(gateway: Gateway, pb: Any) -> None:
    async with opened(gateway, "ServerStream") as call:
        await call.request(pb, count=0)
        await call.half_close()
        answer = await call.finish()
    assert [flags for flags, _ in answer.frames] == [TRAILER, TRAILER]
    assert answer.headers == {"content-type": "application/grpc-web+proto"}
    assert answer.status == OK
    assert answer.close_code == 1000


async def test_w7_the_header_frame_comes_as_soon_as_the_upstream_sends_its_headers(
    gateway: Gateway, pb: Any, probe_stub: Any
) -> None:
    # The service sends its headers, then waits for Release before its first reply.
    name = key()
    async with opened(gateway, "ServerStream") as call:
        await call.request(pb, count=2, key=name, headers={"x-early": "yes"}, wait_release_first=True)
        await call.half_close()
        flags, payload = await asyncio.wait_for(call.next_frame(), 5)
        assert flags == TRAILER
        assert dict(parse_block(payload)) == {"content-type": "application/grpc-web+proto", "x-early": "yes"}
        assert len(call.received) == 1  # the header frame alone: no reply came with it
        probe_stub.Release(pb.Key(key=name), timeout=5)
        answer = await call.finish()
    assert [flags for flags, _ in answer.frames] == [TRAILER, 0, 0, TRAILER]
    assert answer.headers == {"content-type": "application/grpc-web+proto", "x-early": "yes"}
    assert answer.status == OK


async def test_w7_a_bidi_servers_headers_arrive_before_the_client_sends_anything(gateway: Gateway, pb: Any) -> None:
    # The service sends its headers at once and answers only each request: the client gets them first.
    async with opened(gateway, "Bidi", header_block=BINARY_HEADERS + b"x-headers-first: now\r\n") as call:
        flags, payload = await asyncio.wait_for(call.next_frame(), 5)
        assert flags == TRAILER
        assert dict(parse_block(payload))["x-headers-first"] == "now"
        await call.request(pb, payload=b"ping")
        assert (await call.reply(pb)).payload == b"ping"
        await call.half_close()
        answer = await call.finish()
    assert [flags for flags, _ in answer.frames] == [TRAILER, 0, TRAILER]
    assert answer.status == OK


# W8 -----------------------------------------------------------------------------------------------


async def test_w8_an_upstream_error_is_a_trailer_frame_then_a_clean_close(gateway: Gateway, pb: Any) -> None:
    answer = await unary(gateway, pb, fail_code=NOT_FOUND, fail_message=AWKWARD_MESSAGE)
    assert answer.status == NOT_FOUND
    assert answer.trailers["grpc-message"] == "50%25 off: caf%C3%A9 %E2%9C%93%0Asecond line"
    assert answer.message == AWKWARD_MESSAGE
    assert answer.replies == []
    assert answer.close_code == 1000


async def test_w8_an_error_after_replies_follows_them(gateway: Gateway, pb: Any) -> None:
    async with opened(gateway, "Bidi") as call:
        await call.request(pb, payload=b"fine")
        await call.request(pb, fail_code=ABORTED, fail_message="stop")
        await call.half_close()
        answer = await call.finish()
    assert [pb.CallReply.FromString(r).payload for r in answer.replies] == [b"fine"]
    assert (answer.status, answer.message) == (ABORTED, "stop")
    assert answer.close_code == 1000


@pytest.mark.parametrize(
    ("service", "method", "code", "expected"),
    [
        ("unknown.v1.Service", "Unary", UNIMPLEMENTED, "unknown service unknown.v1.Service"),
        (SERVICE, "Nope", UNIMPLEMENTED, ""),
        ("gone.v1.Nothing", "Unary", UNAVAILABLE, "gone.v1.Nothing is unavailable"),
    ],
    ids=["unknown-service", "unknown-method", "backend-down"],
)
async def test_w8_calls_the_gateway_cannot_place_end_with_a_status(
    gateway: Gateway, pb: Any, service: str, method: str, code: int, expected: str
) -> None:
    async with opened(gateway, method, service=service) as call:
        await call.request(pb)
        await call.half_close()
        answer = await call.finish()
    assert answer.status == code
    assert expected in answer.message
    assert answer.close_code == 1000


async def test_the_deadline_from_the_header_block_is_enforced(gateway: Gateway, pb: Any, probe_stub: Any) -> None:
    name = key()
    async with opened(gateway, "Unary", header_block=BINARY_HEADERS + b"grpc-timeout: 200m\r\n") as call:
        await call.request(pb, sleep_ms=10_000, key=name)
        await call.half_close()
        answer = await asyncio.wait_for(call.finish(), 3)  # about 0.2 s; far below the service's 10 s
    assert answer.status == DEADLINE_EXCEEDED
    assert answer.close_code == 1000
    wait_cancelled(pb, probe_stub, name)


# W9 -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("half_closed", [False, True], ids=["streaming", "half-closed"])
async def test_w9_a_client_that_closes_the_socket_cancels_the_upstream(
    gateway: Gateway, pb: Any, probe_stub: Any, half_closed: bool
) -> None:
    name = key()
    async with opened(gateway, "ServerStream") as call:
        await call.request(pb, count=3, key=name, wait_release=True)
        if half_closed:
            await call.half_close()
        assert (await call.reply(pb)).index == 0
    wait_cancelled(pb, probe_stub, name)


# W10 ----------------------------------------------------------------------------------------------


async def test_w10_a_websocket_message_over_the_limit_closes_1009_and_cancels_the_upstream(
    gateway: Gateway, pb: Any, probe_stub: Any
) -> None:
    name = key()
    async with opened(gateway, "ServerStream") as call:
        await call.request(pb, count=3, key=name, wait_release=True)
        assert (await call.reply(pb)).index == 0
        with contextlib.suppress(ConnectionClosed):  # the server may close before the client has written it all
            await call.send(b"\x00" + os.urandom(MAX_MESSAGE + MESSAGE_SLACK))
        answer = await call.finish()
    assert answer.close_code == 1009
    wait_cancelled(pb, probe_stub, name)


async def test_w10_a_grpc_message_over_the_limit_is_resource_exhausted_then_1009(
    gateway: Gateway, pb: Any, probe_stub: Any
) -> None:
    name = key()
    async with opened(gateway, "ServerStream") as call:
        await call.request(pb, count=3, key=name, wait_release=True)
        assert (await call.reply(pb)).index == 0
        # Each WebSocket message is small; the frame's prefix announces one byte too many.
        await call.send(b"\x00" + struct.pack(">BI", 0, MAX_MESSAGE + 1))
        answer = await call.finish()
    assert answer.status == RESOURCE_EXHAUSTED
    assert f"{MAX_MESSAGE + 1} bytes" in answer.message
    assert answer.close_code == 1009
    wait_cancelled(pb, probe_stub, name)


async def test_w10_a_message_at_the_limit_goes_through(gateway: Gateway, pb: Any) -> None:
    overhead = len(pb.CallRequest(payload=b"x" * MAX_MESSAGE, response_bytes=1).SerializeToString()) - MAX_MESSAGE
    request = pb.CallRequest(payload=os.urandom(MAX_MESSAGE - overhead), response_bytes=1).SerializeToString()
    assert len(request) == MAX_MESSAGE
    async with opened(gateway, "Unary") as call:
        await call.send(data(request))
        await call.half_close()
        answer = await call.finish()
    assert answer.status == OK
    assert pb.CallReply.FromString(answer.replies[0]).payload == b"r"


# W11 ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pinging_gateway(probe_address: str, work_dir: Path) -> Iterator[Gateway]:
    config = {
        "upstreams": {SERVICE: [probe_address]},
        "websocket": {"pingInterval": 0.2, "pingTimeout": 0.5},
    }
    with run_gateway(config, work_dir) as running:
        yield running


class SansIOClient:
    """A WebSocket client on websockets' sans-I/O protocol: it sees every ping, and may leave them unanswered."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, protocol: ClientProtocol) -> None:
        self.reader, self.writer, self.protocol = reader, writer, protocol
        self.pings = 0
        self.close_code: int | None = None
        self.messages: list[bytes] = []

    @classmethod
    @contextlib.asynccontextmanager
    async def connect(cls, gateway: Gateway, method: str) -> AsyncIterator[SansIOClient]:
        protocol = ClientProtocol(parse_uri(ws_url(gateway, method)), subprotocols=[SUBPROTOCOL])
        reader, writer = await asyncio.open_connection("127.0.0.1", gateway.http_port)
        client = cls(reader, writer, protocol)
        try:
            protocol.send_request(protocol.connect())
            client.flush()
            async with asyncio.timeout(TIMEOUT):
                while protocol.handshake_exc is None and protocol.state is State.CONNECTING:
                    protocol.receive_data(await reader.read(65536))
            assert protocol.handshake_exc is None
            yield client
        finally:
            writer.close()

    def flush(self) -> None:
        for chunk in self.protocol.data_to_send():
            if chunk:
                self.writer.write(chunk)

    def send(self, message: bytes) -> None:
        self.protocol.send_binary(message)
        self.flush()

    async def read_until(self, done: Any, *, answer_pings: bool = True) -> None:
        """Handle what arrives until done(self) holds (or the socket closes), for at most TIMEOUT seconds."""
        async with asyncio.timeout(TIMEOUT):
            while not done(self) and self.close_code is None:
                chunk = await self.reader.read(65536)
                self.protocol.receive_data(chunk)
                for event in self.protocol.events_received():
                    if not isinstance(event, Frame):
                        continue  # the handshake's response
                    if event.opcode is Opcode.PING:
                        self.pings += 1
                    elif event.opcode is Opcode.BINARY:
                        self.messages.append(bytes(event.data))
                    elif event.opcode is Opcode.CLOSE:
                        assert self.protocol.close_rcvd is not None
                        self.close_code = self.protocol.close_rcvd.code
                if answer_pings or self.close_code is not None:
                    self.flush()  # the pong the protocol queued for each ping, or the close reply
                else:
                    self.protocol.data_to_send()  # pongs dropped: the client looks dead
                if not chunk:
                    break


async def test_w11_server_pings_keep_an_idle_socket_open(pinging_gateway: Gateway, pb: Any) -> None:
    async with SansIOClient.connect(pinging_gateway, "Unary") as client:
        # Idle, but not dead: three pings (0.2 s apart) answered, and the socket is still open.
        await client.read_until(lambda c: c.pings >= 3)
        assert client.close_code is None
        client.send(BINARY_HEADERS)
        client.send(data(pb.CallRequest(payload=b"still here").SerializeToString()))
        client.send(b"\x01")
        await client.read_until(lambda c: c.close_code is not None)
    answer = Answer(client.messages, client.close_code)
    assert answer.status == OK
    assert pb.CallReply.FromString(answer.replies[0]).payload == b"still here"
    assert answer.close_code == 1000


async def test_w11_a_client_that_stops_answering_pings_is_closed(pinging_gateway: Gateway) -> None:
    async with SansIOClient.connect(pinging_gateway, "Unary") as client:
        await client.read_until(lambda c: False, answer_pings=False)
    assert client.pings >= 1
    assert client.close_code == 1011  # uvicorn: "keepalive ping timeout"


# W12 ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content_type", "expected"),
    [
        ("application/grpc-web-text", "grpc-web-text format is not supported over WebSocket"),
        ("application/grpc-web-text+proto", "grpc-web-text format is not supported over WebSocket"),
        ("application/grpc-web+json", "'application/grpc-web+json' is not supported over WebSocket"),
    ],
)
async def test_w12_a_text_content_type_is_refused_with_unimplemented(
    gateway: Gateway, pb: Any, content_type: str, expected: str
) -> None:
    answer = await unary(gateway, pb, header_block=block([("content-type", content_type)]))
    assert answer.status == UNIMPLEMENTED
    assert expected in answer.message
    assert answer.replies == []
    assert answer.close_code == 1000


# W13 ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("prefix", ["", "/api"])
async def test_w13_unary_over_websocket(gateway: Gateway, pb: Any, prefix: str) -> None:
    async with opened(gateway, "Unary", prefix=prefix) as call:
        await call.request(pb, payload=b"\x00\xff unary")
        await call.half_close()
        answer = await call.finish()
    assert answer.status == OK
    assert [pb.CallReply.FromString(r).payload for r in answer.replies] == [b"\x00\xff unary"]


async def test_w13_server_streaming_over_websocket(gateway: Gateway, pb: Any) -> None:
    async with opened(gateway, "ServerStream") as call:
        await call.request(pb, count=3, payload=b"tick")
        await call.half_close()
        answer = await call.finish()
    assert answer.status == OK
    replies = [pb.CallReply.FromString(r) for r in answer.replies]
    assert [(r.index, r.payload) for r in replies] == [(0, b"tick"), (1, b"tick"), (2, b"tick")]


# Protocol errors mid-call -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bad", "code", "expected"),
    [
        ("text", INVALID_ARGUMENT, "binary"),
        (b"\x02", INVALID_ARGUMENT, "control byte: 0x02"),
        (b"", INVALID_ARGUMENT, "empty message"),
        (b"\x01\x00", INVALID_ARGUMENT, "control byte: 0x01"),
        (b"\x00" + frame(b"x: y\r\n", TRAILER), INTERNAL, "trailer frame"),
        (b"\x00" + frame(b"zz", 0x01), INTERNAL, "no grpc-encoding"),
    ],
    ids=["text", "unknown-control", "empty", "long-half-close", "trailer-frame", "compressed"],
)
async def test_a_protocol_error_mid_call_ends_it_and_cancels_the_upstream(
    gateway: Gateway, pb: Any, probe_stub: Any, bad: bytes | str, code: int, expected: str
) -> None:
    name = key()
    async with opened(gateway, "ServerStream") as call:
        await call.request(pb, count=3, key=name, wait_release=True)
        assert (await call.reply(pb)).index == 0
        await call.send(bad)
        answer = await call.finish()
    assert answer.status == code
    assert expected in answer.message
    assert answer.close_code == 1000
    wait_cancelled(pb, probe_stub, name)


@pytest.mark.parametrize(
    ("after", "expected"),
    [
        (b"\x00" + struct.pack(">BI", 0, 10) + b"abc", "announces 10 bytes but only 3 arrived"),
        (b"\x00\x00\x00", "inside a frame prefix (2 of 5 bytes)"),
        (None, "after its half-close"),
    ],
    ids=["cut-payload", "cut-prefix", "data-after-half-close"],
)
async def test_a_request_stream_that_ends_badly_is_refused(
    gateway: Gateway, pb: Any, probe_stub: Any, after: bytes | None, expected: str
) -> None:
    name = key()
    async with opened(gateway, "ServerStream") as call:
        await call.request(pb, count=3, key=name, wait_release=True)
        assert (await call.reply(pb)).index == 0
        if after is not None:
            await call.send(after)
            await call.half_close()
        else:
            await call.half_close()
            await call.request(pb)
        answer = await call.finish()
    assert answer.status in (INTERNAL, INVALID_ARGUMENT)
    assert expected in answer.message
    wait_cancelled(pb, probe_stub, name)


async def test_compressed_request_frames_with_grpc_encoding_are_inflated(gateway: Gateway, pb: Any) -> None:
    message = pb.CallRequest(payload=b"squeezed " * 100).SerializeToString()
    async with opened(gateway, "ClientStream", header_block=BINARY_HEADERS + b"grpc-encoding: gzip\r\n") as call:
        await call.send(b"\x00" + frame(gzip.compress(message), 0x01) + frame(message))
        await call.half_close()
        answer = await call.finish()
    assert answer.status == OK
    reply = pb.CallReply.FromString(answer.replies[0])
    assert (reply.payload, reply.requests) == (b"squeezed " * 200, 2)


async def test_a_closed_socket_before_the_header_block_leaves_nothing_behind(gateway: Gateway, pb: Any) -> None:
    async with opened(gateway, "Unary", header_block=None):
        pass
    # The gateway still answers the next call: the abandoned socket took nothing with it.
    assert (await unary(gateway, pb)).status == OK


# In process: what only the endpoint itself shows --------------------------------------------------


class FakeSocket:
    """The ASGI side of one WebSocket: the test queues what the client sends and reads what the endpoint sent."""

    def __init__(self, *messages: bytes) -> None:
        self.inbox: asyncio.Queue[Message] = asyncio.Queue()
        self.inbox.put_nowait({"type": "websocket.connect"})
        for message in messages:
            self.put(message)
        self.sent: list[Message] = []

    def put(self, message: bytes) -> None:
        self.inbox.put_nowait({"type": "websocket.receive", "bytes": message})

    def disconnect(self) -> None:
        self.inbox.put_nowait({"type": "websocket.disconnect", "code": 1001})

    async def receive(self) -> Message:
        return await self.inbox.get()

    async def send(self, message: Message) -> None:
        self.sent.append(message)

    def scope(self, service: str = SERVICE, method: str = "Unary") -> dict[str, Any]:
        return {
            "type": "websocket",
            "path": f"/{service}/{method}",
            "headers": [(b"host", b"gateway"), (b"origin", ALLOWED_ORIGIN.encode())],
            "subprotocols": ["grpc-websockets"],
            "path_params": {"service": service, "method": method},
        }

    def answer(self) -> Answer:
        assert self.sent[0] == {"type": "websocket.accept", "subprotocol": "grpc-websockets"}
        assert self.sent[-1]["type"] == "websocket.close"
        return Answer([m["bytes"] for m in self.sent[1:-1]], self.sent[-1]["code"])


class BrokenPool:
    def route(self, service: str) -> Any:
        raise RuntimeError("secret detail /srv/app/keys.py line 12")


async def test_an_unexpected_failure_is_an_internal_status_never_a_stack_trace(
    caplog: pytest.LogCaptureFixture,
) -> None:
    config = ProxyConfig(BrokenPool(), max_message_bytes=MAX_MESSAGE)  # type: ignore[arg-type]
    endpoint = GrpcWebSocketEndpoint(config, allow_origins=[ALLOWED_ORIGIN])
    socket = FakeSocket(BINARY_HEADERS)
    await asyncio.wait_for(endpoint(socket.scope(), socket.receive, socket.send), TIMEOUT)
    answer = socket.answer()
    assert (answer.status, answer.message) == (INTERNAL, "the gateway failed while handling this call")
    assert answer.close_code == 1000
    assert "secret detail" not in repr(socket.sent)
    assert "secret detail" in caplog.text  # for the operator, in the log


async def test_without_the_servers_size_limit_the_endpoint_enforces_it(probe_address: str, pb: Any) -> None:
    pool = UpstreamPool({SERVICE: [probe_address]}, max_message_bytes=1024)
    endpoint = GrpcWebSocketEndpoint(ProxyConfig(pool, max_message_bytes=1024), allow_origins=[ALLOWED_ORIGIN])
    request = data(pb.CallRequest(payload=b"ok").SerializeToString())
    socket = FakeSocket(BINARY_HEADERS, request, b"\x00" + bytes(1024 + MESSAGE_SLACK))
    try:
        await asyncio.wait_for(endpoint(socket.scope(method="ClientStream"), socket.receive, socket.send), TIMEOUT)
    finally:
        await pool.close()
    answer = socket.answer()
    assert answer.status == RESOURCE_EXHAUSTED
    assert f"larger than the gateway's limit of {1024 + MESSAGE_SLACK} bytes" in answer.message
    assert answer.close_code == 1009


async def test_the_socket_is_read_no_faster_than_the_upstream_takes_the_bytes() -> None:
    # The upstream grants only HTTP/2's initial 65,535-byte window until the test releases it.
    release = asyncio.Event()

    async def slow_reader(conn: ServerConnection, request: H2Request) -> None:
        await release.wait()
        conn.server.acknowledge_data = True
        conn.conn.acknowledge_received_data(len(request.body), request.stream_id)
        conn.flush()
        await request.ended.wait()
        conn.respond(request.stream_id, GRPC_HEADERS)
        await conn.send_data(request.stream_id, grpc_frame(str(len(request.body)).encode()))
        conn.respond(request.stream_id, [(b"grpc-status", b"0")], end=True)

    upstream = H2Server(slow_reader)
    upstream.acknowledge_data = False
    chunk = 40_000
    messages = [data(bytes([n]) * (chunk - 5)) for n in range(5)]  # 40,001 bytes each with the control byte
    async with upstream.running():
        pool = UpstreamPool({"slow.v1.Reader": [upstream.address]}, max_message_bytes=MAX_MESSAGE)
        endpoint = GrpcWebSocketEndpoint(
            ProxyConfig(pool, max_message_bytes=MAX_MESSAGE), allow_origins=[ALLOWED_ORIGIN]
        )
        socket = FakeSocket(BINARY_HEADERS, *messages)
        call = asyncio.ensure_future(endpoint(socket.scope("slow.v1.Reader", "Take"), socket.receive, socket.send))
        try:
            # Two messages fill the window; the third is taken while waiting (to notice a close), no more.
            await wait_for(lambda: upstream.seen and len(upstream.seen[0].body) == 65_535 and socket.inbox.qsize() == 2)
            assert not call.done()
            release.set()
            await wait_for(lambda: socket.inbox.empty())
            socket.put(b"\x01")
            await asyncio.wait_for(call, TIMEOUT)
        finally:
            call.cancel()
            await pool.close()
    assert len(upstream.seen[0].body) == 5 * chunk
    answer = socket.answer()
    assert answer.status == OK
    assert answer.replies == [str(5 * chunk).encode()]


async def test_a_close_is_noticed_while_the_upstream_takes_nothing() -> None:
    async def never_reads(conn: ServerConnection, request: H2Request) -> None:
        await request.reset.wait()

    upstream = H2Server(never_reads)
    upstream.acknowledge_data = False
    async with upstream.running():
        pool = UpstreamPool({"slow.v1.Reader": [upstream.address]}, max_message_bytes=MAX_MESSAGE)
        endpoint = GrpcWebSocketEndpoint(
            ProxyConfig(pool, max_message_bytes=MAX_MESSAGE), allow_origins=[ALLOWED_ORIGIN]
        )
        socket = FakeSocket(BINARY_HEADERS, data(bytes(40_000)), data(bytes(40_000)))
        call = asyncio.ensure_future(endpoint(socket.scope("slow.v1.Reader", "Take"), socket.receive, socket.send))
        try:
            await wait_for(lambda: upstream.seen and len(upstream.seen[0].body) == 65_535)
            socket.disconnect()
            await asyncio.wait_for(call, TIMEOUT)
            await asyncio.wait_for(upstream.seen[0].reset.wait(), TIMEOUT)
        finally:
            call.cancel()
            await pool.close()
    assert upstream.seen[0].reset_code == 0x8  # CANCEL
    assert socket.sent[1:] == []  # nobody to answer


async def wait_for(condition: Any, timeout: float = TIMEOUT) -> None:
    """Let the event loop run until condition() holds (the endpoint and the upstream share this loop)."""
    # Polled: the state is spread over an h2 server's buffers and a queue, neither of which signals.
    async with asyncio.timeout(timeout):
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0.005)


# Settings -----------------------------------------------------------------------------------------


def test_uvicorn_gets_the_websocket_limits_and_pings(tmp_path: Path) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text("maxMessageBytes: 2048\nwebsocket:\n  pingInterval: 5\n  pingTimeout: null\n")
    options = _uvicorn_options(load_settings(config, environ={}))
    assert issubclass(options["ws"], WebSocketsSansIOProtocol)  # type: ignore[arg-type]
    assert options["ws_max_size"] == 2048 + MESSAGE_SLACK
    assert (options["ws_ping_interval"], options["ws_ping_timeout"]) == (5.0, None)
    defaults = _uvicorn_options(load_settings(None, environ={}))
    assert (defaults["ws_ping_interval"], defaults["ws_ping_timeout"]) == (20.0, 20.0)


# The header block's timeout ------------------------------------------------------------------------


async def test_a_socket_that_never_sends_its_header_block_is_closed_1008(
    probe_address: str, work_dir: Path, pb: Any
) -> None:
    config = {
        "upstreams": {SERVICE: [probe_address]},
        "cors": {"allowOrigins": [ALLOWED_ORIGIN]},
        "websocket": {"headerTimeout": 0.5},
    }
    with run_gateway(config, work_dir) as gateway:
        async with opened(gateway, "Unary", header_block=None) as idle:
            started = time.monotonic()
            answer = await idle.finish()
            elapsed = time.monotonic() - started
        # One that sends it in time is served as ever.
        fine = await unary(gateway, pb, payload=b"in time")
    assert answer.messages == []
    assert answer.close_code == 1008
    assert idle.ws.close_reason == "no header block within 0.5 s"
    assert 0.4 < elapsed < 3
    assert fine.status == OK
