"""`python -m bench.http2_frames`: the HTTP/2 work of one proxied unary call, hand-written against h2 / hyperframe.

In this process, no sockets: per call, the gateway's HTTP/2 client writes the request (HEADERS and
one DATA frame holding a 100 B message) and reads the answer an upstream sends (HEADERS, DATA,
trailers, and a WINDOW_UPDATE giving back the request's bytes). Rows:

    frames: common.http2            writer functions + FrameReader (padding, sizes, header blocks
                                     checked) into a handler that does nothing
    frames: hyperframe               the same frames built as hyperframe objects and serialised,
                                     and parsed with Frame.parse_frame_header + parse_body
    frames + HPACK: common.http2    the first row plus what the client does with headers:
                                     RequestEncoder.prefix and HeaderBlockDecoder.decode (cached)
    h2 H2Connection (client side)    send_headers + send_data + data_to_send + receive_data +
                                     acknowledge_received_data: frames, HPACK and stream states
    the gateway's client connection  the real thing on a uvloop loop, over a transport that drops
                                     what it is given: open_unary, data_received(the answer),
                                     read the message and the end (imported as
                                     gateway.upstream.http2, so that older commits run it too)

CPU is time.process_time around N calls, the best of `--repeat` runs, in microseconds per call.
The header blocks an upstream sends use no dynamic table (literals and static indexes), so every
call decodes the same way for both implementations.
"""

from __future__ import annotations

import argparse
import asyncio
import struct
import time
from collections.abc import Callable

import h2.config
import h2.connection
import h2.events
import h2.settings
import uvloop
from hyperframe.frame import DataFrame, Frame, HeadersFrame

from common.http2.frames import DATA, END_STREAM, MIN_MAX_FRAME, frame
from common.http2.headers import HeaderBlockDecoder, RequestEncoder, encode_header
from common.http2.reader import FrameReader
from common.http2.writer import header_frames, settings, window_update

__all__ = ["main"]

PATH = b"/bench.v1.Echo/Unary"
AUTHORITY = b"127.0.0.1:50051"
MESSAGE = struct.pack(">BI", 0, 102) + b"\x0a\x64" + b"x" * 100  # Msg{payload = 'x' * 100}, gRPC-framed
_RESPONSE_HEADERS = b"\x88" + encode_header(b"content-type", b"application/grpc")  # :status 200 (static 8)
_TRAILERS = encode_header(b"grpc-status", b"0") + encode_header(b"grpc-message", b"")


def response(stream_id: int) -> bytes:
    """What a grpc server answers to one unary call on `stream_id`."""
    return (
        window_update(0, len(MESSAGE))
        + header_frames(stream_id, _RESPONSE_HEADERS, end_stream=False, max_frame=MIN_MAX_FRAME)
        + frame(DATA, 0, stream_id, MESSAGE)
        + header_frames(stream_id, _TRAILERS, end_stream=True, max_frame=MIN_MAX_FRAME)
    )


class _Nothing:
    """A FrameHandler that drops every frame: the reader's own cost."""

    def on_data(self, stream_id: int, data: bytes, flow_length: int, end_stream: bool) -> None:
        pass

    def on_headers(self, stream_id: int, block: bytes, end_stream: bool) -> None:
        pass

    def on_rst_stream(self, stream_id: int, code: int) -> None:
        pass

    def on_settings(self, settings: list[tuple[int, int]]) -> None:
        pass

    def on_ping(self, payload: bytes) -> None:
        pass

    def on_goaway(self, last_stream_id: int, code: int, debug: bytes) -> None:
        pass

    def on_window_update(self, stream_id: int, increment: int) -> None:
        pass


class _Decoding(_Nothing):
    """A FrameHandler that decodes header blocks as the client does."""

    def __init__(self) -> None:
        self.decoder = HeaderBlockDecoder()

    def on_headers(self, stream_id: int, block: bytes, end_stream: bool) -> None:
        self.decoder.decode(block)


def ours(calls: int, *, hpack: bool) -> float:
    handler = _Decoding() if hpack else _Nothing()
    reader = FrameReader(handler, server=False, max_frame=MIN_MAX_FRAME, max_header_block=64 * 1024)
    encoder = RequestEncoder()
    fields = encode_header(b"grpc-timeout", b"10S")
    block = encoder.prefix(AUTHORITY, PATH) + fields
    answer = response(1)
    started = time.process_time()
    for _ in range(calls):
        if hpack:
            block = encoder.prefix(AUTHORITY, PATH) + fields
        request = header_frames(1, block, end_stream=False, max_frame=MIN_MAX_FRAME) + frame(
            DATA, END_STREAM, 1, MESSAGE
        )
        reader.feed(answer)
    assert request
    return time.process_time() - started


def hyperframe_frames(calls: int) -> float:
    block = RequestEncoder().prefix(AUTHORITY, PATH) + encode_header(b"grpc-timeout", b"10S")
    answer = memoryview(response(1))
    started = time.process_time()
    for _ in range(calls):
        headers = HeadersFrame(1, block, flags={"END_HEADERS"})
        data = DataFrame(1, MESSAGE, flags={"END_STREAM"})
        request = headers.serialize() + data.serialize()
        offset = 0
        while offset < len(answer):
            parsed, length = Frame.parse_frame_header(answer[offset : offset + 9])
            parsed.parse_body(answer[offset + 9 : offset + 9 + length])
            offset += 9 + length
    assert request
    return time.process_time() - started


def h2_connection(calls: int) -> float:
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
    conn.initiate_connection()
    conn.receive_data(settings(()))
    conn.data_to_send()
    headers = [
        (b":method", b"POST"),
        (b":scheme", b"http"),
        (b":path", PATH),
        (b":authority", AUTHORITY),
        (b"content-type", b"application/grpc"),
        (b"te", b"trailers"),
        (b"grpc-accept-encoding", b"identity"),
        (b"user-agent", b"upf-gateway"),
        (b"grpc-timeout", b"10S"),
    ]
    answers = [response(stream_id) for stream_id in range(1, 2 * calls + 1, 2)]  # one per stream id
    started = time.process_time()
    for answer in answers:
        stream_id = conn.get_next_available_stream_id()
        conn.send_headers(stream_id, headers)
        conn.send_data(stream_id, MESSAGE, end_stream=True)
        request = conn.data_to_send()
        for event in conn.receive_data(answer):
            if isinstance(event, h2.events.DataReceived):
                conn.acknowledge_received_data(event.flow_controlled_length, stream_id)
    assert request
    return time.process_time() - started


class _Sink:
    """The transport under the connection: takes every write, sends nothing."""

    def write(self, data: bytes) -> None:
        pass

    def is_closing(self) -> bool:
        return False

    def get_extra_info(self, name: str, default: object = None) -> object:
        return default

    def close(self) -> None:
        pass


def client_connection(calls: int) -> float:
    from gateway.upstream.http2 import Http2Connection

    async def run() -> float:
        conn = Http2Connection(AUTHORITY.decode(), 1 << 22)
        conn.connection_made(_Sink())  # type: ignore[arg-type]
        conn.data_received(settings(()))
        target = (AUTHORITY, PATH)
        fields = encode_header(b"grpc-timeout", b"10S")
        answers = [response(stream_id) for stream_id in range(1, 2 * calls + 1, 2)]
        await asyncio.sleep(0)
        started = time.process_time()
        for number, answer in enumerate(answers):
            stream = conn.open_unary(target, fields, MESSAGE)
            assert stream is not None
            conn.data_received(answer)
            assert await stream.read() == MESSAGE
            assert await stream.read() is None
            if number % 64 == 0:
                await asyncio.sleep(0)  # the corked writes leave, as at the end of a loop iteration
        return time.process_time() - started

    return uvloop.run(run())


def _best(run: Callable[[int], float], calls: int, repeat: int) -> float:
    return min(run(calls) for _ in range(repeat)) / calls * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.http2_frames", description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=20_000, help="calls per run (default 20000)")
    parser.add_argument("--repeat", type=int, default=5, help="runs per row; the best counts (default 5)")
    args = parser.parse_args()
    rows = [
        ("frames: common.http2", lambda n: ours(n, hpack=False)),
        ("frames: hyperframe", hyperframe_frames),
        ("frames + HPACK: common.http2", lambda n: ours(n, hpack=True)),
        ("h2 H2Connection (client side)", h2_connection),
        ("the gateway's client connection", client_connection),
    ]
    print(f"HTTP/2 work of one unary call ({len(MESSAGE)} B message), best of {args.repeat} x {args.calls} calls")
    print("| what | CPU us/call |")
    print("|---|---|")
    for name, run in rows:
        print(f"| {name} | {_best(run, args.calls, args.repeat):.2f} |")


if __name__ == "__main__":
    main()
