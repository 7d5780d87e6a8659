"""common.rpc.Server frame by frame, from a raw HTTP/2 client: what grpcio's clients never send
(reserved flag bits, an unknown grpc-encoding, a stream opened after GOAWAY) and the exact bytes
of trailers-only answers."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator
from typing import Any

import grpc
import grpc.aio
import hpack
import pytest

from common.http2.codes import ErrorCode, FrameType
from common.http2.frames import PREFACE, frame
from common.rpc.server import Server
from tests.support.processes import eventually

_HEADER = struct.Struct(">IBI")
END_STREAM, END_HEADERS = 0x1, 0x4


class RawClient:
    """Writes the frames a test asks for; reads frames back, HEADERS decoded."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.encoder, self.decoder = hpack.Encoder(), hpack.Decoder()
        writer.write(PREFACE + frame(FrameType.SETTINGS, 0, 0))

    def headers(self, stream_id: int, path: str, *, end: bool = False, extra: tuple[tuple[str, str], ...] = ()) -> None:
        block = self.encoder.encode(
            [
                (":method", "POST"), (":scheme", "http"), (":path", path), (":authority", "test"),
                ("content-type", "application/grpc"), ("te", "trailers"), *extra,
            ]
        )  # fmt: skip
        flags = END_HEADERS | (END_STREAM if end else 0)
        self.writer.write(frame(FrameType.HEADERS, flags, stream_id, block))

    def message(self, stream_id: int, payload: bytes, *, flag: int = 0, end: bool = True) -> None:
        data = struct.pack(">BI", flag, len(payload)) + payload
        self.writer.write(frame(FrameType.DATA, END_STREAM if end else 0, stream_id, data))

    async def next_frame(self) -> tuple[int, int, int, Any]:
        """(type, flags, stream id, payload: a header dict for HEADERS, the error code for RST_STREAM)."""
        while True:
            length_type, flags, stream_id = _HEADER.unpack(await asyncio.wait_for(self.reader.readexactly(9), 10))
            payload = await self.reader.readexactly(length_type >> 8)
            kind = length_type & 0xFF
            if kind == FrameType.HEADERS:
                return kind, flags, stream_id, dict(self.decoder.decode(payload, raw=True))
            if kind == FrameType.RST_STREAM:
                return kind, flags, stream_id, struct.unpack(">I", payload)[0]
            if kind in (FrameType.DATA, FrameType.GOAWAY):
                return kind, flags, stream_id, payload

    async def frames_of(self, stream_id: int) -> list[tuple[int, int, Any]]:
        """Frames on `stream_id` up to its end (END_STREAM or RST_STREAM)."""
        seen = []
        while True:
            kind, flags, sid, payload = await self.next_frame()
            if sid != stream_id:
                continue
            seen.append((kind, flags, payload))
            if kind == FrameType.RST_STREAM or flags & END_STREAM:
                return seen


@pytest.fixture
async def served() -> AsyncIterator[tuple[Server, RawClient, asyncio.Event]]:
    release = asyncio.Event()

    async def echo(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        return request

    async def wait(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        await release.wait()
        return b"done"

    async def abort(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        await context.abort(grpc.StatusCode.NOT_FOUND, "no such thing: 100% gone\n")

    server = Server()
    methods = {"Echo": echo, "Wait": wait, "Abort": abort}
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "t.T", {name: grpc.unary_unary_rpc_method_handler(fn) for name, fn in methods.items()}
            ),
        )
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    yield server, RawClient(reader, writer), release
    writer.close()
    await server.stop(None)


async def test_unary_answer_and_trailers_only_errors(served: tuple[Server, RawClient, asyncio.Event]) -> None:
    _, client, _ = served
    client.headers(1, "/t.T/Echo")
    client.message(1, b"hello")
    frames = await client.frames_of(1)
    assert [kind for kind, _, _ in frames] == [FrameType.HEADERS, FrameType.DATA, FrameType.HEADERS]
    assert frames[1][2] == b"\x00\x00\x00\x00\x05hello"
    assert frames[2][2][b"grpc-status"] == b"0"

    client.headers(3, "/t.T/Abort")
    client.message(3, b"")
    (only,) = await client.frames_of(3)  # trailers-only: one HEADERS frame with END_STREAM
    assert only[2][b":status"] == b"200"
    assert only[2][b"grpc-status"] == b"5"
    assert only[2][b"grpc-message"] == b"no such thing: 100%25 gone%0A"


async def test_reserved_flag_bits_are_refused(served: tuple[Server, RawClient, asyncio.Event]) -> None:
    _, client, _ = served
    client.headers(1, "/t.T/Echo")
    client.message(1, b"x", flag=0x02)
    (only,) = await client.frames_of(1)
    assert only[2][b"grpc-status"] == str(grpc.StatusCode.INTERNAL.value[0]).encode()


async def test_an_unknown_encoding_is_unimplemented(served: tuple[Server, RawClient, asyncio.Event]) -> None:
    _, client, _ = served
    client.headers(1, "/t.T/Echo", extra=(("grpc-encoding", "snappy"),))
    client.message(1, b"x", flag=1)
    (only, *_) = await client.frames_of(1)
    assert only[2][b"grpc-status"] == str(grpc.StatusCode.UNIMPLEMENTED.value[0]).encode()
    assert only[2][b"grpc-accept-encoding"] == b"identity,gzip"


async def test_streams_opened_after_goaway_are_refused(served: tuple[Server, RawClient, asyncio.Event]) -> None:
    server, client, release = served
    client.headers(1, "/t.T/Wait")
    client.message(1, b"")
    await eventually(lambda: any(conn.streams for conn in server.connections), what="the call accepted")
    stopping = asyncio.create_task(server.stop(10))
    kind, _, _, payload = await client.next_frame()
    assert kind == FrameType.GOAWAY
    last_stream, code = struct.unpack(">II", payload[:8])
    assert (last_stream, code) == (1, ErrorCode.NO_ERROR)
    client.headers(3, "/t.T/Echo")
    client.message(3, b"late")
    assert await client.frames_of(3) == [(FrameType.RST_STREAM, 0, ErrorCode.REFUSED_STREAM)]
    release.set()
    frames = await client.frames_of(1)
    assert frames[1][2] == b"\x00\x00\x00\x00\x04done"
    assert frames[-1][2][b"grpc-status"] == b"0"
    await asyncio.wait_for(stopping, 10)
