"""upf-mux.v1 (gateway/websocket/MUX.md) frame by frame, with the `websockets` client, through a
gateway process to accept.v1.Probe.

Choices pinned here:
- /api/mux upgrades only with the upf-mux.v1 subprotocol (HTTP 400 without) and an allowed Origin
  (HTTP 403); SETTINGS is the first frame.
- Every call ends with exactly one TRAILERS on its own stream, the gateway's refusals included;
  other calls on the socket carry on.
- Flow control: a stream the client does not read gets no more than its window and holds up no
  other stream; the gateway gives request credit back once the upstream has taken the bytes; a
  client that sends past a window is cut (GOAWAY FLOW_CONTROL_ERROR, close 1002).
- Protocol errors: GOAWAY with a code and reason, then close 1002 with the reason; the socket's
  upstream calls are cancelled.
- Drain: GOAWAY NO_ERROR, calls in flight finish, new calls get UNAVAILABLE, then close 1001; an
  idle socket closes 1001 at once; calls past the grace get UNAVAILABLE.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import signal
import struct
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from jwt.algorithms import OKPAlgorithm
from starlette.types import Message
from websockets.exceptions import InvalidStatus
from websockets.typing import Subprotocol

from common.auth.revocations import MemoryRevocations
from gateway.app import create_app
from gateway.auth.authenticator import Authenticator
from gateway.auth.verify import TokenVerifier, TrustedIssuer
from gateway.proxy import ProxyConfig
from gateway.settings import ConfigError, load_settings
from gateway.upstream.pool import UpstreamPool
from gateway.websocket.mux import MuxEndpoint
from gateway.websocket.mux_frames import HEADER, FrameType
from tests.conftest import ALLOWED_ORIGIN
from tests.support.h2server import H2Server, Request as H2Request, ServerConnection
from tests.support.mux_client import BIG_WINDOW, Frame, MuxClient, Result, frame, grpc_message, open_payload
from tests.support.processes import Gateway, run_gateway, wait_until

OK, CANCELLED, INVALID_ARGUMENT, DEADLINE_EXCEEDED, NOT_FOUND = 0, 1, 3, 4, 5
PERMISSION_DENIED, RESOURCE_EXHAUSTED, ABORTED, UNIMPLEMENTED, UNAVAILABLE, UNAUTHENTICATED = 7, 8, 10, 12, 14, 16
PROTOCOL_ERROR, FLOW_CONTROL_ERROR, FRAME_SIZE_ERROR = 1, 2, 3
AWKWARD_MESSAGE = "50% off: café ✓\nsecond line"
SMALL_WINDOW, SMALL_CONNECTION_WINDOW, SMALL_MAX_STREAMS = 4096, 8192, 3


def mux_url(gateway: Gateway) -> str:
    return f"ws://127.0.0.1:{gateway.http_port}/api/mux"


def key() -> str:
    return f"mux-{uuid.uuid4().hex}"


@contextlib.asynccontextmanager
async def mux(gateway: Gateway, origin: str | None = ALLOWED_ORIGIN) -> AsyncIterator[MuxClient]:
    async with MuxClient.connect(mux_url(gateway), origin=origin) as client:
        first = await client.next(0)
        assert first.kind is FrameType.SETTINGS
        yield client


def request(pb: Any, **fields: Any) -> bytes:
    return bytes(pb.CallRequest(**fields).SerializeToString())


def replies(pb: Any, result: Result) -> list[Any]:
    return [pb.CallReply.FromString(message) for message in result.messages]


def observe(pb: Any, probe_stub: Any, name: str) -> Any:
    return probe_stub.Observe(pb.Key(key=name), timeout=5)


def wait_cancelled(pb: Any, probe_stub: Any, name: str) -> None:
    wait_until(lambda: observe(pb, probe_stub, name).cancelled == 1, timeout=5, what="the probe to see a cancel")


def goaway_of(got: Frame) -> tuple[int, int, str]:
    assert got.kind is FrameType.GOAWAY, got
    last, code = struct.unpack_from(">IH", got.payload)
    return last, code, got.payload[6:].decode()


@pytest.fixture(scope="module")
def small_gateway(probe_address: str, work_dir: Path) -> Iterator[Gateway]:
    """Small windows and stream limit, so that tests reach them with a few frames."""
    config = {
        "upstreams": {"accept.v1.Probe": [probe_address]},
        "cors": {"allowOrigins": [ALLOWED_ORIGIN]},
        "websocket": {
            "mux": {
                "maxStreams": SMALL_MAX_STREAMS,
                "streamWindow": SMALL_WINDOW,
                "connectionWindow": SMALL_CONNECTION_WINDOW,
            }
        },
    }
    with run_gateway(config, work_dir) as running:
        yield running


# The handshake ------------------------------------------------------------------------------------


async def test_the_subprotocol_is_echoed_and_settings_come_first(gateway: Gateway) -> None:
    async with MuxClient.connect(mux_url(gateway), origin=ALLOWED_ORIGIN) as client:
        assert client.ws.subprotocol == "upf-mux.v1"
        first = await client.next(0)
    assert first.kind is FrameType.SETTINGS
    version, max_streams, max_message, stream_window, connection_window, max_frame = struct.unpack(
        ">HIIIII", first.payload
    )
    # The session gateway: maxMessageBytes 1 MiB, the mux defaults otherwise.
    assert (version, max_streams, max_message) == (1, 100, 1024 * 1024)
    assert (stream_window, connection_window, max_frame) == (256 * 1024, 1024 * 1024, 1024 * 1024 + 5)


async def test_without_the_subprotocol_the_upgrade_is_refused(gateway: Gateway) -> None:
    for offered in ([Subprotocol("grpc-websockets")], [Subprotocol("chat"), Subprotocol("upf-mux.v2")]):
        with pytest.raises(InvalidStatus) as info:
            async with MuxClient.connect(mux_url(gateway), origin=ALLOWED_ORIGIN, subprotocols=offered):
                pass
        assert info.value.response.status_code == 400
        assert b"upf-mux.v1" in info.value.response.body


async def test_a_disallowed_origin_is_refused_before_the_upgrade(gateway: Gateway) -> None:
    with pytest.raises(InvalidStatus) as info:
        async with MuxClient.connect(mux_url(gateway), origin="http://evil.example"):
            pass
    assert info.value.response.status_code == 403


# The four kinds of call ---------------------------------------------------------------------------


async def test_unary_with_metadata_both_ways(gateway: Gateway, pb: Any) -> None:
    raw = b"\x00\xff raw"
    async with mux(gateway) as client:
        result = await client.unary(
            "Unary",
            request(pb, payload=b"hi", headers={"x-resp": "h1"}, trailers={"x-trail": "t1"}),
            metadata={"x-custom": "abc", "authorization": "Bearer t", "x-one-bin": base64.b64encode(raw).decode()},
        )
    assert result.kinds == ["HEADERS", "DATA", "TRAILERS"]
    assert result.status == OK
    assert result.headers == {"x-resp": "h1"}
    assert result.trailers == {"x-trail": "t1"}
    reply = replies(pb, result)[0]
    assert reply.payload == b"hi"
    assert (reply.metadata["x-custom"], reply.metadata["authorization"]) == ("abc", "Bearer t")
    assert base64.b64decode(reply.metadata["x-one-bin"]) == raw
    assert 59 < reply.deadline_remaining <= 60  # no timeout asked for: the session gateway's maxTimeout


async def test_server_streaming(gateway: Gateway, pb: Any) -> None:
    async with mux(gateway) as client:
        result = await client.unary("ServerStream", request(pb, count=3, payload=b"tick"))
    assert result.status == OK
    assert [(r.index, r.payload) for r in replies(pb, result)] == [(0, b"tick"), (1, b"tick"), (2, b"tick")]


async def test_client_streaming(gateway: Gateway, pb: Any) -> None:
    async with mux(gateway) as client:
        stream = await client.open("ClientStream")
        for part in (b"a", b"b", b"c"):
            await client.message(stream, request(pb, payload=part))
        await client.half_close(stream)
        result = await client.result(stream)
    assert result.status == OK
    assert [(r.payload, r.requests) for r in replies(pb, result)] == [(b"abc", 3)]


async def test_bidi_ping_pong(gateway: Gateway, pb: Any) -> None:
    # Request n+1 goes out only once reply n has arrived: replies are never held back.
    async with mux(gateway) as client:
        stream = await client.open("Bidi")
        for n in range(5):
            await client.message(stream, request(pb, payload=f"ping {n}".encode()))
            reply = pb.CallReply.FromString(await client.next_message(stream))
            assert (reply.payload, reply.index) == (f"ping {n}".encode(), n)
        await client.half_close(stream)
        result = await client.result(stream)
    assert result.kinds == ["TRAILERS"]
    assert result.status == OK


async def test_headers_come_as_soon_as_the_upstream_sends_them(gateway: Gateway, pb: Any, probe_stub: Any) -> None:
    # The service sends its headers, then waits for Release before its first reply.
    name = key()
    held = request(pb, count=2, key=name, headers={"x-early": "yes"}, wait_release_first=True)
    async with mux(gateway) as client:
        then = (frame(FrameType.DATA, client.next_id, grpc_message(held)), frame(FrameType.HALF_CLOSE, client.next_id))
        stream = await client.open("ServerStream", then=then)
        headers = await client.next(stream, timeout=5)
        assert (headers.kind, headers.payload) == (FrameType.HEADERS, b"x-early: yes\r\n")
        assert client.pending(stream) == []  # no reply came with them
        probe_stub.Release(pb.Key(key=name), timeout=5)
        result = await client.result(stream)
    assert result.kinds == ["DATA", "DATA", "TRAILERS"]
    assert result.status == OK


async def test_a_bidi_servers_headers_arrive_before_the_client_sends_anything(gateway: Gateway, pb: Any) -> None:
    # The service sends its headers at once and answers only each request: the client gets them first.
    async with mux(gateway) as client:
        stream = await client.open("Bidi", metadata={"x-headers-first": "now"})
        headers = await client.next(stream, timeout=5)
        assert (headers.kind, headers.payload) == (FrameType.HEADERS, b"x-headers-first: now\r\n")
        await client.message(stream, request(pb, payload=b"ping"))
        assert pb.CallReply.FromString(await client.next_message(stream)).payload == b"ping"
        await client.half_close(stream)
        result = await client.result(stream)
    assert result.kinds == ["TRAILERS"]
    assert result.status == OK


async def test_an_error_status_and_its_message_arrive_as_sent(gateway: Gateway, pb: Any) -> None:
    async with mux(gateway) as client:
        result = await client.unary("Unary", request(pb, fail_code=NOT_FOUND, fail_message=AWKWARD_MESSAGE))
    assert (result.status, result.message) == (NOT_FOUND, AWKWARD_MESSAGE)
    assert result.messages == []


async def test_the_timeout_in_open_is_the_calls_deadline(gateway: Gateway, pb: Any, probe_stub: Any) -> None:
    name = key()
    async with mux(gateway) as client:
        fast = await client.unary("Unary", request(pb), timeout_ms=5000)
        started = time.monotonic()
        slow = await client.unary("Unary", request(pb, sleep_ms=10_000, key=name), timeout_ms=200)
        elapsed = time.monotonic() - started
    assert 3.0 < replies(pb, fast)[0].deadline_remaining <= 5.5
    assert slow.status == DEADLINE_EXCEEDED
    assert elapsed < 3
    wait_cancelled(pb, probe_stub, name)


@pytest.mark.parametrize(
    ("service", "method", "code", "expected"),
    [
        ("unknown.v1.Service", "Unary", UNIMPLEMENTED, "unknown service unknown.v1.Service"),
        ("accept.v1.Probe", "Nope", UNIMPLEMENTED, ""),
        ("gone.v1.Nothing", "Unary", UNAVAILABLE, "gone.v1.Nothing is unavailable"),
        ("no-dot", "Unary", INVALID_ARGUMENT, "not a gRPC method path"),
    ],
    ids=["unknown-service", "unknown-method", "backend-down", "bad-path"],
)
async def test_calls_the_gateway_cannot_place_end_on_their_own_stream(
    gateway: Gateway, pb: Any, service: str, method: str, code: int, expected: str
) -> None:
    async with mux(gateway) as client:
        failed = await client.unary(method, request(pb), service=service)
        fine = await client.unary("Unary", request(pb, payload=b"still fine"))
    assert failed.status == code
    assert expected in failed.message
    assert fine.status == OK
    assert replies(pb, fine)[0].payload == b"still fine"


async def test_bad_metadata_ends_that_call_with_invalid_argument(gateway: Gateway, pb: Any) -> None:
    async with mux(gateway) as client:
        result = await client.unary("Unary", request(pb), metadata={"x-trace-bin": "***"})
    assert result.status == INVALID_ARGUMENT
    assert "not valid base64" in result.message


# Several calls on one socket ----------------------------------------------------------------------


async def test_two_bidi_calls_interleave_on_one_socket(gateway: Gateway, pb: Any) -> None:
    async with mux(gateway) as client:
        a = await client.open("Bidi")
        b = await client.open("Bidi")
        for n in range(3):
            # Both streams' messages in one WebSocket message, then each reply on its own stream.
            await client.send(
                frame(FrameType.DATA, a, grpc_message(request(pb, payload=f"a{n}".encode()))),
                frame(FrameType.DATA, b, grpc_message(request(pb, payload=f"b{n}".encode()))),
            )
            assert pb.CallReply.FromString(await client.next_message(b)).payload == f"b{n}".encode()
            assert pb.CallReply.FromString(await client.next_message(a)).payload == f"a{n}".encode()
        await client.send(frame(FrameType.HALF_CLOSE, a), frame(FrameType.HALF_CLOSE, b))
        results = [await client.result(a), await client.result(b)]
    assert [r.status for r in results] == [OK, OK]


async def test_a_failing_call_ends_alone(gateway: Gateway, pb: Any) -> None:
    async with mux(gateway) as client:
        a = await client.open("Bidi")
        b = await client.open("Bidi")
        await client.message(a, request(pb, fail_code=ABORTED, fail_message="stop"))
        failed = await client.result(a)
        await client.message(b, request(pb, payload=b"b still here"))
        assert pb.CallReply.FromString(await client.next_message(b)).payload == b"b still here"
        await client.half_close(b)
        fine = await client.result(b)
    assert (failed.status, failed.message) == (ABORTED, "stop")
    assert fine.status == OK


async def test_a_cancel_ends_one_call_upstream_and_leaves_the_others(
    gateway: Gateway, pb: Any, probe_stub: Any
) -> None:
    name = key()
    async with mux(gateway) as client:
        held = await client.open("ServerStream")
        await client.message(held, request(pb, count=3, key=name, wait_release=True))
        await client.half_close(held)
        assert pb.CallReply.FromString(await client.next_message(held)).index == 0
        other = await client.open("Bidi")
        await client.cancel(held)
        cancelled = await client.result(held)
        wait_cancelled(pb, probe_stub, name)
        # A frame for the cancelled stream that crossed its TRAILERS is ignored, not an error.
        await client.message(held, request(pb))
        await client.message(other, request(pb, payload=b"after"))
        assert pb.CallReply.FromString(await client.next_message(other)).payload == b"after"
        await client.half_close(other)
        fine = await client.result(other)
    assert (cancelled.status, cancelled.message) == (CANCELLED, "cancelled by the client")
    assert fine.status == OK


async def test_closing_the_socket_cancels_every_call_upstream(gateway: Gateway, pb: Any, probe_stub: Any) -> None:
    names = [key(), key()]
    async with mux(gateway) as client:
        for name in names:
            stream = await client.open("ServerStream")
            await client.message(stream, request(pb, count=3, key=name, wait_release=True))
            await client.half_close(stream)
            assert pb.CallReply.FromString(await client.next_message(stream)).index == 0
    for name in names:
        wait_cancelled(pb, probe_stub, name)


# Flow control -------------------------------------------------------------------------------------


async def test_a_stream_that_is_not_read_does_not_block_another(gateway: Gateway, pb: Any) -> None:
    count, size = 20, 10_000
    async with mux(gateway) as client:
        slow = await client.open(
            "ServerStream",
            window=100,
            then=(
                frame(FrameType.DATA, 1, grpc_message(request(pb, count=count, response_bytes=size))),
                frame(FrameType.HALF_CLOSE, 1),
            ),
        )
        assert slow == 1
        # Meanwhile, on the same socket, other calls run to their end.
        for n in range(3):
            fine = await client.unary("Unary", request(pb, payload=f"fine {n}".encode()))
            assert fine.status == OK
        arrived = client.pending(slow)
        assert [f.kind.name for f in arrived] == ["HEADERS", "DATA"]
        assert len(arrived[1].payload) == 100  # the window, and not a byte more
        await client.window_update(slow, BIG_WINDOW)
        rest = await client.result(slow)
    result = Result([*arrived, *rest.frames])
    assert result.status == OK
    assert [r.index for r in replies(pb, result)] == list(range(count))
    assert all(len(r.payload) == size for r in replies(pb, result))


async def test_request_credit_comes_back_once_the_upstream_has_taken_the_bytes(small_gateway: Gateway, pb: Any) -> None:
    # 4 messages of ~3 KiB on a 4 KiB stream window: impossible without the gateway's credit.
    async with mux(small_gateway) as client:
        stream = await client.open("ClientStream")
        credit = {0: SMALL_CONNECTION_WINDOW, stream: SMALL_WINDOW}
        body = grpc_message(request(pb, payload=b"x" * 3000))
        for _ in range(4):
            view = body
            while view:
                if min(credit.values()) == 0:
                    update = await client.next(stream) if credit[stream] == 0 else await client.next(0)
                    assert update.kind is FrameType.WINDOW_UPDATE, update
                    credit[update.stream_id] += struct.unpack(">I", update.payload)[0]
                    continue
                size = min(len(view), *credit.values())
                await client.send(frame(FrameType.DATA, stream, view[:size]))
                credit = {k: v - size for k, v in credit.items()}
                view = view[size:]
        await client.half_close(stream)
        result = Result([f for f in await drain_to_trailers(client, stream) if f.kind is not FrameType.WINDOW_UPDATE])
    assert result.status == OK
    assert replies(pb, result)[0].requests == 4


async def drain_to_trailers(client: MuxClient, stream: int) -> list[Frame]:
    return (await client.result(stream)).frames


async def test_the_bytes_of_a_failed_call_come_back_to_the_socket(small_gateway: Gateway) -> None:
    # Each call sends a whole stream window of a message far over the size limit: refused when the
    # gateway reads its prefix. Three of them are more than the socket's window (8 KiB) holds, so
    # the third passes only if the first two's bytes were given back.
    oversize = struct.pack(">BI", 0, 1 << 30) + bytes(SMALL_WINDOW - 5)
    async with mux(small_gateway) as client:
        results = []
        for _ in range(3):
            stream = await client.open("ClientStream", then=(frame(FrameType.DATA, client.next_id, oversize),))
            results.append(await client.result(stream))
        updates = [struct.unpack(">I", f.payload)[0] for f in client.pending(0)]
    assert [r.status for r in results] == [RESOURCE_EXHAUSTED] * 3
    assert sum(updates) == 3 * SMALL_WINDOW


@pytest.mark.parametrize(
    ("window", "expected"), [("stream", "past stream 1's window"), ("connection", "past the connection window")]
)
async def test_data_past_a_window_is_a_flow_control_error(
    small_gateway: Gateway, pb: Any, window: str, expected: str
) -> None:
    async with mux(small_gateway) as client:
        if window == "stream":
            await client.open("ClientStream")
            await client.send(frame(FrameType.DATA, 1, bytes(SMALL_WINDOW + 1)))
        else:
            # Three streams, each within its own window, together past the connection's. In one
            # message, so that no call has reached its upstream (which would take the bytes and
            # give the credit back) before the last frame is read.
            opens = [frame(FrameType.OPEN, n, open_payload("/accept.v1.Probe/ClientStream")) for n in (1, 3, 5)]
            await client.send(
                opens[0],
                frame(FrameType.DATA, 1, bytes(SMALL_WINDOW)),
                opens[1],
                frame(FrameType.DATA, 3, bytes(SMALL_WINDOW)),
                opens[2],
                frame(FrameType.DATA, 5, bytes(1)),
            )
        _last, code, reason = goaway_of(await client.next(0))
        close_code, close_reason = await client.closed()
    assert code == FLOW_CONTROL_ERROR
    assert expected in reason
    assert (close_code, close_reason) == (1002, reason)


# Limits -------------------------------------------------------------------------------------------


async def test_calls_past_the_stream_limit_are_refused_one_by_one(
    small_gateway: Gateway, pb: Any, probe_stub: Any
) -> None:
    names = [key() for _ in range(SMALL_MAX_STREAMS)]
    async with mux(small_gateway) as client:
        held = []
        for name in names:
            stream = await client.open("ServerStream")
            await client.message(stream, request(pb, count=1, key=name, wait_release=True))
            await client.half_close(stream)
            assert pb.CallReply.FromString(await client.next_message(stream)).index == 0
            held.append(stream)
        refused = await client.unary("Unary", request(pb))
        assert (refused.status, refused.kinds) == (RESOURCE_EXHAUSTED, ["TRAILERS"])
        assert refused.message == f"more than {SMALL_MAX_STREAMS} calls at once on one socket"
        probe_stub.Release(pb.Key(key=names[0]), timeout=5)
        assert (await client.result(held[0])).status == OK
        accepted = await client.unary("Unary", request(pb, payload=b"room again"))
    assert accepted.status == OK


async def test_a_request_message_over_the_limit_ends_that_call(gateway: Gateway, pb: Any, probe_stub: Any) -> None:
    name = key()
    async with mux(gateway) as client:
        stream = await client.open("Bidi")
        await client.message(stream, request(pb, key=name))
        assert pb.CallReply.FromString(await client.next_message(stream)).index == 0
        # A prefix that announces 1 MiB + 1 bytes (the session gateway's limit is 1 MiB).
        await client.send(frame(FrameType.DATA, stream, struct.pack(">BI", 0, 1024 * 1024 + 1)))
        result = await client.result(stream)
        fine = await client.unary("Unary", request(pb))
    assert result.status == RESOURCE_EXHAUSTED
    assert "larger than the gateway's limit of 1048576 bytes" in result.message
    assert fine.status == OK


async def test_a_websocket_message_over_the_limit_closes_1009(gateway: Gateway, pb: Any) -> None:
    async with mux(gateway) as client:
        with contextlib.suppress(Exception):
            await client.ws.send(bytes(1024 * 1024 + 64 * 1024 + 1))
        close_code, _reason = await client.closed()
    assert close_code == 1009


# Protocol errors ----------------------------------------------------------------------------------


def data(stream: int, payload: bytes = b"") -> bytes:
    return frame(FrameType.DATA, stream, payload)


@pytest.mark.parametrize(
    ("messages", "code", "expected"),
    [
        (["text"], PROTOCOL_ERROR, "text message"),
        ([b""], PROTOCOL_ERROR, "empty WebSocket message"),
        ([frame(0x7F, 1)], PROTOCOL_ERROR, "frame type 0x7f (unknown) is not one a client sends"),
        ([frame(FrameType.HEADERS, 1)], PROTOCOL_ERROR, "frame type HEADERS is not one a client sends"),
        ([frame(FrameType.OPEN, 1)[:6]], PROTOCOL_ERROR, "frame header runs past the end"),
        ([frame(FrameType.DATA, 1, b"abc")[:-1]], PROTOCOL_ERROR, "runs past the end of its WebSocket message"),
        ([frame(FrameType.OPEN, 0, open_payload("/accept.v1.Probe/Unary"))], PROTOCOL_ERROR, "OPEN on stream 0"),
        (
            [
                frame(FrameType.OPEN, 5, open_payload("/accept.v1.Probe/Bidi")),
                frame(FrameType.OPEN, 3, open_payload("/a.b/C")),
            ],
            PROTOCOL_ERROR,
            "OPEN on stream 3, not above the highest opened so far (5)",
        ),
        ([frame(FrameType.OPEN, 1, b"\x00\x00")], PROTOCOL_ERROR, "shorter than its fixed 10"),
        ([frame(FrameType.OPEN, 1, open_payload("/x")[:-1])], PROTOCOL_ERROR, "path length 2 runs past the end"),
        ([data(7)], PROTOCOL_ERROR, "DATA on stream 7, which was never opened"),
        (
            [
                frame(FrameType.OPEN, 1, open_payload("/accept.v1.Probe/Bidi")),
                frame(FrameType.WINDOW_UPDATE, 1, bytes(4)),
            ],
            PROTOCOL_ERROR,
            "increment 0 is not between 1 and",
        ),
        (
            [frame(FrameType.OPEN, 1, open_payload("/accept.v1.Probe/Bidi")), frame(FrameType.CANCEL, 1, b"x")],
            FRAME_SIZE_ERROR,
            "CANCEL carries 1 bytes",
        ),
        ([frame(FrameType.DATA, 1, bytes(1024 * 1024 + 6))], FRAME_SIZE_ERROR, "over the limit of 1048581"),
    ],
    ids=[
        "text",
        "empty",
        "unknown-type",
        "server-frame",
        "short-header",
        "short-payload",
        "stream-0",
        "decreasing-id",
        "short-open",
        "open-path-length",
        "never-opened",
        "zero-increment",
        "cancel-with-payload",
        "frame-too-large",
    ],
)
async def test_a_protocol_error_sends_goaway_then_closes_1002(
    gateway: Gateway, messages: list[bytes | str], code: int, expected: str
) -> None:
    async with mux(gateway) as client:
        for message in messages:
            await client.ws.send(message)
        _last, goaway_code, reason = goaway_of(await client.next(0))
        close_code, close_reason = await client.closed()
    assert goaway_code == code
    assert expected in reason
    assert close_code == 1002
    assert close_reason == reason


async def test_data_after_half_close_is_a_protocol_error(gateway: Gateway, pb: Any, probe_stub: Any) -> None:
    # The call is held open upstream (wait_release): a call that had already ended would let the DATA
    # cross its TRAILERS, which is no error.
    name = key()
    async with mux(gateway) as client:
        stream = await client.open("ServerStream")
        await client.message(stream, request(pb, count=3, key=name, wait_release=True))
        await client.half_close(stream)
        assert pb.CallReply.FromString(await client.next_message(stream)).index == 0
        await client.send(data(stream, b"x"))
        _last, goaway_code, reason = goaway_of(await client.next(0))
        close_code, close_reason = await client.closed()
    assert goaway_code == PROTOCOL_ERROR
    assert f"DATA on stream {stream} after its HALF_CLOSE" in reason
    assert (close_code, close_reason) == (1002, reason)
    wait_cancelled(pb, probe_stub, name)


async def test_a_protocol_error_cancels_the_sockets_upstream_calls(gateway: Gateway, pb: Any, probe_stub: Any) -> None:
    name = key()
    async with mux(gateway) as client:
        stream = await client.open("ServerStream")
        await client.message(stream, request(pb, count=3, key=name, wait_release=True))
        await client.half_close(stream)
        assert pb.CallReply.FromString(await client.next_message(stream)).index == 0
        await client.send(frame(FrameType.TRAILERS, stream))
        goaway_of(await client.next(0))
        assert (await client.closed())[0] == 1002
    wait_cancelled(pb, probe_stub, name)


# Graceful drain (a gateway of the test's own, stopped with SIGTERM) -------------------------------


@contextlib.contextmanager
def own_gateway(probe_address: str, work_dir: Path, drain_grace: float) -> Iterator[Gateway]:
    config = {
        "upstreams": {"accept.v1.Probe": [probe_address]},
        "cors": {"allowOrigins": [ALLOWED_ORIGIN]},
        "websocket": {"drainGrace": drain_grace},
    }
    with run_gateway(config, work_dir) as gateway:
        yield gateway


async def exit_code(gateway: Gateway) -> int:
    return await asyncio.to_thread(gateway.process.stop, signal.SIGTERM, 20.0)


async def test_drain_lets_calls_finish_refuses_new_ones_then_closes_1001(
    probe_address: str, work_dir: Path, pb: Any
) -> None:
    with own_gateway(probe_address, work_dir, drain_grace=10) as gateway:
        async with mux(gateway) as client:
            stream = await client.open("Bidi")
            await client.message(stream, request(pb, payload=b"before"))
            assert pb.CallReply.FromString(await client.next_message(stream)).payload == b"before"
            os.kill(gateway.process.pid, signal.SIGTERM)
            last, code, _reason = goaway_of(await client.next(0))
            assert (last, code) == (stream, 0)
            refused = await client.unary("Unary", request(pb))
            await client.message(stream, request(pb, payload=b"during"))
            assert pb.CallReply.FromString(await client.next_message(stream)).payload == b"during"
            await client.half_close(stream)
            finished = await client.result(stream)
            close_code, _ = await client.closed()
        assert (refused.status, refused.message) == (UNAVAILABLE, "the gateway is shutting down")
        assert finished.status == OK
        assert close_code == 1001
        assert await exit_code(gateway) == 0


async def test_drain_closes_an_idle_socket_1001_at_once(probe_address: str, work_dir: Path) -> None:
    with own_gateway(probe_address, work_dir, drain_grace=30) as gateway:
        async with mux(gateway) as client:
            started = time.monotonic()
            os.kill(gateway.process.pid, signal.SIGTERM)
            _last, code, _reason = goaway_of(await client.next(0))
            close_code, _ = await client.closed()
            elapsed = time.monotonic() - started
        assert (code, close_code) == (0, 1001)
        assert elapsed < 2, f"closed after {elapsed:.1f} s, not at once (the grace is 30 s)"
        assert await exit_code(gateway) == 0


async def test_drain_cuts_calls_past_the_grace_with_unavailable(
    probe_address: str, work_dir: Path, pb: Any, probe_stub: Any
) -> None:
    name = key()
    with own_gateway(probe_address, work_dir, drain_grace=1) as gateway:
        async with mux(gateway) as client:
            stream = await client.open("ServerStream")
            await client.message(stream, request(pb, count=3, key=name, wait_release=True))
            await client.half_close(stream)
            assert pb.CallReply.FromString(await client.next_message(stream)).index == 0
            started = time.monotonic()
            os.kill(gateway.process.pid, signal.SIGTERM)
            result = await client.result(stream)
            elapsed = time.monotonic() - started
            close_code, _ = await client.closed()
        assert (result.status, result.message) == (UNAVAILABLE, "the gateway is shutting down")
        assert close_code == 1001
        assert 0.8 < elapsed < 5, f"cut after {elapsed:.1f} s; the grace is 1 s"
        wait_cancelled(pb, probe_stub, name)
        assert await exit_code(gateway) == 0


# In process: per-call auth, an upstream that takes nothing, a failure inside the gateway --


class FakeSocket:
    """The ASGI side of one WebSocket: the test queues client messages and reads the frames sent."""

    def __init__(self) -> None:
        self.inbox: asyncio.Queue[Message] = asyncio.Queue()
        self.inbox.put_nowait({"type": "websocket.connect"})
        self.sent: list[Message] = []
        self.frames: list[Frame] = []

    def put(self, *frames: bytes) -> None:
        self.inbox.put_nowait({"type": "websocket.receive", "bytes": b"".join(frames)})

    def disconnect(self) -> None:
        self.inbox.put_nowait({"type": "websocket.disconnect", "code": 1000})

    async def receive(self) -> Message:
        return await self.inbox.get()

    async def send(self, message: Message) -> None:
        self.sent.append(message)
        if message["type"] == "websocket.send":
            data, offset = message["bytes"], 0
            while offset < len(data):
                kind, flags, stream_id, length = HEADER.unpack_from(data, offset)
                start = offset + HEADER.size
                self.frames.append(Frame(FrameType(kind), flags, stream_id, data[start : start + length]))
                offset = start + length

    def scope(self) -> dict[str, Any]:
        return {
            "type": "websocket",
            "path": "/api/mux",
            "headers": [(b"host", b"gateway"), (b"origin", ALLOWED_ORIGIN.encode())],
            "subprotocols": ["upf-mux.v1"],
            "client": ("127.0.0.1", 50000),
        }

    def stream(self, stream_id: int) -> Result:
        return Result([f for f in self.frames if f.stream_id == stream_id])

    async def until(self, condition: Any, timeout: float = 10.0) -> None:
        """Let the loop run until condition() holds (the endpoint and the upstreams share this loop)."""
        # Polled: some conditions are on an h2 server's buffers, which signal nothing.
        async with asyncio.timeout(timeout):
            while not condition():  # noqa: ASYNC110
                await asyncio.sleep(0.005)


@contextlib.asynccontextmanager
async def in_process(endpoint: MuxEndpoint) -> AsyncIterator[FakeSocket]:
    socket = FakeSocket()
    task = asyncio.ensure_future(endpoint(socket.scope(), socket.receive, socket.send))
    try:
        await socket.until(lambda: socket.frames)
        yield socket
    finally:
        socket.disconnect()
        await asyncio.wait_for(task, 10)


def ended(socket: FakeSocket, stream: int) -> bool:
    return any(f.kind is FrameType.TRAILERS and f.stream_id == stream for f in socket.frames)


def call_frames(stream: int, method: str, payload: bytes, metadata: dict[str, str] | None = None) -> tuple[bytes, ...]:
    return (
        frame(FrameType.OPEN, stream, open_payload(f"/accept.v1.Probe/{method}", metadata)),
        frame(FrameType.DATA, stream, grpc_message(payload)),
        frame(FrameType.HALF_CLOSE, stream),
    )


class _Keys:
    def __init__(self, key: jwt.PyJWK) -> None:
        self.key = key

    def get(self, kid: str) -> jwt.PyJWK | None:
        return self.key if kid == self.key.key_id else None

    async def resolve(self, kid: str) -> jwt.PyJWK | None:
        return self.get(kid)


def authenticator() -> tuple[Authenticator, Callable[..., str]]:
    """The gateway's Authenticator trusting one EdDSA key, and a function that signs tokens with it."""
    private = ed25519.Ed25519PrivateKey.generate()
    public = jwt.PyJWK({**json.loads(OKPAlgorithm.to_jwk(private.public_key())), "kid": "k1", "alg": "EdDSA"})
    verifier = TokenVerifier(
        [TrustedIssuer("https://issuer.test", ("upf-api",), frozenset({"EdDSA"}), _Keys(public))],
        revocations=MemoryRevocations(),
    )

    def mint(subject: str = "alice", **claims: Any) -> str:
        body = {"iss": "https://issuer.test", "aud": "upf-api", "sub": subject, "exp": int(time.time()) + 60}
        return jwt.encode({**body, **claims}, private, algorithm="EdDSA", headers={"kid": "k1"})

    return Authenticator(verifier), mint


async def test_each_call_is_authenticated_on_its_own(probe_address: str, pb: Any) -> None:
    auth, mint = authenticator()
    pool = UpstreamPool({"accept.v1.Probe": [probe_address]}, max_message_bytes=1024 * 1024)
    config = ProxyConfig(pool, max_message_bytes=1024 * 1024, authenticator=auth, forward_authorization=False)
    endpoint = MuxEndpoint(config, allow_origins=[ALLOWED_ORIGIN])
    good = {"authorization": f"Bearer {mint()}", "x-a": "1", "x-upf-user-id": "mallory"}
    try:
        async with in_process(endpoint) as socket:
            socket.put(
                *call_frames(1, "Unary", request(pb), {"authorization": f"Bearer {mint(exp=1)}"}),
                *call_frames(3, "Unary", request(pb, payload=b"ok"), good),
                *call_frames(5, "Unary", request(pb)),
            )
            await socket.until(lambda: all(ended(socket, s) for s in (1, 3, 5)))
    finally:
        await pool.close()
    expired, admitted, anonymous = socket.stream(1), socket.stream(3), socket.stream(5)
    assert (expired.status, expired.message, expired.kinds) == (
        UNAUTHENTICATED,
        "invalid token: the token has expired",
        ["TRAILERS"],
    )
    assert (anonymous.status, anonymous.message) == (UNAUTHENTICATED, "this call needs a bearer token")
    assert anonymous.trailers == {"www-authenticate": 'Bearer realm="upf"'}
    assert admitted.status == OK
    received = dict(replies(pb, admitted)[0].metadata)
    assert (received["x-upf-user-id"], received["x-a"]) == ("alice", "1")  # the verified one, not the sent one
    assert "authorization" not in received


async def test_an_upstream_that_takes_nothing_holds_no_more_than_the_windows(probe_address: str, pb: Any) -> None:
    async def never_reads(conn: ServerConnection, request: H2Request) -> None:
        await request.reset.wait()

    upstream = H2Server(never_reads)
    upstream.acknowledge_data = False  # the upstream's HTTP/2 window stays at 65,535 bytes
    window = 16 * 1024
    async with upstream.running():
        pool = UpstreamPool(
            {"slow.v1.Reader": [upstream.address], "accept.v1.Probe": [probe_address]}, max_message_bytes=1024 * 1024
        )
        endpoint = MuxEndpoint(
            ProxyConfig(pool, max_message_bytes=1024 * 1024),
            allow_origins=[ALLOWED_ORIGIN],
            stream_window=window,
            connection_window=4 * window,
        )
        try:
            async with in_process(endpoint) as socket:
                socket.put(frame(FrameType.OPEN, 1, open_payload("/slow.v1.Reader/Take")))
                # One gRPC message of 1 MiB, sent as fast as the gateway gives credit back, until
                # the upstream has all it takes and the client has used all the credit it got.
                body = struct.pack(">BI", 0, 1024 * 1024 - 5) + bytes(1024 * 1024 - 5)
                available, sent = window, 0
                while not (available == 0 and upstream_full(upstream)):
                    if available == 0:
                        given = credit(socket, 1)
                        await socket.until(lambda given=given: more_credit(socket, given) or upstream_full(upstream))
                        available += credit(socket, 1) - given
                        continue
                    size = min(available, 4096)
                    socket.put(frame(FrameType.DATA, 1, body[sent : sent + size]))
                    sent, available = sent + size, available - size
                # What the upstream took came back as credit, and nothing more: the rest waits in
                # the gateway, no more than the stream's window.
                assert credit(socket, 1) <= 65_535
                assert 0 < sent - credit(socket, 1) <= window
                # The other calls on the socket are not held up.
                socket.put(*call_frames(3, "Unary", request(pb, payload=b"other")))
                await socket.until(lambda: ended(socket, 3))
                assert socket.stream(3).status == OK
                assert not ended(socket, 1)
        finally:
            await pool.close()


def credit(socket: FakeSocket, stream: int) -> int:
    """Request bytes the gateway gave back for the stream."""
    return sum(
        struct.unpack(">I", f.payload)[0]
        for f in socket.frames
        if f.kind is FrameType.WINDOW_UPDATE and f.stream_id == stream
    )


def more_credit(socket: FakeSocket, than: int) -> bool:
    return credit(socket, 1) > than


def upstream_full(upstream: H2Server) -> bool:
    """The upstream has all that HTTP/2's initial window lets the gateway send it."""
    return bool(upstream.seen) and len(upstream.seen[0].body) >= 65_535


class BrokenPool:
    def route(self, service: str) -> Any:
        raise RuntimeError("secret detail /srv/app/keys.py line 12")


async def test_a_failure_inside_the_gateway_is_internal_for_that_call_only(
    caplog: pytest.LogCaptureFixture, pb: Any
) -> None:
    config = ProxyConfig(BrokenPool(), max_message_bytes=1024)  # type: ignore[arg-type]
    endpoint = MuxEndpoint(config, allow_origins=[ALLOWED_ORIGIN])
    async with in_process(endpoint) as socket:
        socket.put(*call_frames(1, "Unary", request(pb)))
        await socket.until(lambda: ended(socket, 1))
    result = socket.stream(1)
    assert (result.status, result.message) == (13, "the gateway failed while handling this call")
    assert "secret detail" not in repr(socket.sent)
    assert "secret detail" in caplog.text


# Settings -----------------------------------------------------------------------------------------


def test_the_mux_settings_reach_the_endpoint_and_can_turn_it_off(tmp_path: Path) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text("websocket:\n  mux:\n    maxStreams: 7\n    streamWindow: 2048\n    connectionWindow: 4096\n")
    app = create_app(load_settings(config, environ={}))
    (endpoint,) = [getattr(route, "app", None) for route in app.routes if getattr(route, "path", None) == "/api/mux"]
    assert isinstance(endpoint, MuxEndpoint)
    assert (endpoint.settings.max_streams, endpoint.settings.stream_window) == (7, 2048)
    assert endpoint.settings.connection_window == 4096

    config.write_text("websocket:\n  mux:\n    enabled: false\n")
    assert "/api/mux" not in [
        getattr(route, "path", None) for route in create_app(load_settings(config, environ={})).routes
    ]

    config.write_text("websocket:\n  mux:\n    streamWindow: 10\n")
    with pytest.raises(ConfigError, match=r"websocket\.mux\.streamWindow"):
        load_settings(config, environ={})
