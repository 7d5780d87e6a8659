"""The gateway's HTTP/2 client against a scriptable HTTP/2 server: the protocol cases a grpcio
server rarely or never produces, each checked by what the caller of the client sees."""

from __future__ import annotations

import asyncio
import gzip
import time
from collections.abc import AsyncIterator

import grpc
import h2.errors
import hpack
import pytest

from common.http2.client import STREAM_WINDOW, Http2Stream, NeverProcessed, StreamError
from common.http2.headers import HeaderBlockDecoder, RequestEncoder
from gateway.upstream.client import UpstreamClient
from gateway.upstream.outcome import Outcome, outcome
from gateway.wire.timeout import encode_timeout
from tests.support.h2server import GRPC_HEADERS, SETTINGS, H2Server, Request, ServerConnection, grpc_frame
from tests.support.processes import free_port

PATH = "/test.v1.Svc/Call"
OK_TRAILERS = [(b"grpc-status", b"0")]


async def call(
    client: UpstreamClient, body: bytes = grpc_frame(b"hi"), timeout: float | None = 5.0
) -> tuple[list[bytes], Outcome]:
    stream = await client.unary(PATH, b"", body, timeout)
    frames = []
    while (frame := await stream.read()) is not None:
        frames.append(frame)
    return frames, outcome(stream, "test.v1.Svc")


async def echo(conn: ServerConnection, request: Request) -> None:
    await request.ended.wait()
    conn.respond(request.stream_id, GRPC_HEADERS)
    await conn.send_data(request.stream_id, bytes(request.body))
    conn.respond(request.stream_id, OK_TRAILERS, end=True)


async def test_request_headers_are_grpc_and_the_body_arrives_whole() -> None:
    async with H2Server(echo).running() as server:
        client = UpstreamClient(server.address, max_message_bytes=1 << 20)
        stream = await client.unary(PATH, b"\x00\x08x-custom\x03abc", grpc_frame(b"hello"), 1.5)
        frames = [f async for f in _frames(stream)]
        assert frames == [grpc_frame(b"hello")]
        headers = server.seen[0].headers
        assert headers[b":method"] == b"POST"
        assert headers[b":path"] == PATH.encode()
        assert headers[b"content-type"] == b"application/grpc"
        assert headers[b"te"] == b"trailers"
        assert headers[b"grpc-accept-encoding"] == b"identity"
        assert headers[b"x-custom"] == b"abc"
        assert headers[b"grpc-timeout"] == b"1500m"
        client.close()


async def _frames(stream: Http2Stream) -> AsyncIterator[bytes]:
    while (frame := await stream.read()) is not None:
        yield frame


def test_grpc_timeout_encoding_fits_eight_digits() -> None:
    assert encode_timeout(0.0001) == b"1m"
    assert encode_timeout(2.5) == b"2500m"
    assert encode_timeout(200_000) == b"200000S"
    assert encode_timeout(1e9) == b"16666667M"
    assert len(encode_timeout(1e12)) <= 9


async def test_non_grpc_answer_maps_http_status_and_keeps_the_body_in_the_message() -> None:
    async def bad_gateway(conn: ServerConnection, request: Request) -> None:
        conn.respond(request.stream_id, [(b":status", b"502"), (b"content-type", b"text/plain")])
        await conn.send_data(request.stream_id, b"upstream connect error", end=True)

    async with H2Server(bad_gateway).running() as server:
        frames, result = await call(UpstreamClient(server.address, max_message_bytes=1 << 20))
    assert frames == []
    assert result.code is grpc.StatusCode.UNAVAILABLE
    assert b"HTTP 502" in result.message
    assert b"upstream connect error" in result.message


async def test_trailers_only_answer() -> None:
    async def not_found(conn: ServerConnection, request: Request) -> None:
        conn.respond(
            request.stream_id, [*GRPC_HEADERS, (b"grpc-status", b"5"), (b"grpc-message", b"gone%21")], end=True
        )

    async with H2Server(not_found).running() as server:
        frames, result = await call(UpstreamClient(server.address, max_message_bytes=1 << 20))
    assert frames == []
    assert (result.code, result.message) == (grpc.StatusCode.NOT_FOUND, b"gone%21")


async def test_wait_for_headers_returns_when_the_headers_arrive_not_with_the_first_message() -> None:
    release = asyncio.Event()

    async def headers_then_wait(conn: ServerConnection, request: Request) -> None:
        conn.respond(request.stream_id, [*GRPC_HEADERS, (b"x-early", b"yes")])
        await release.wait()
        await conn.send_data(request.stream_id, grpc_frame(b"late"))
        conn.respond(request.stream_id, OK_TRAILERS, end=True)

    async with H2Server(headers_then_wait).running() as server:
        client = UpstreamClient(server.address, max_message_bytes=1 << 20)
        stream = await client.unary(PATH, b"", grpc_frame(b"hi"), 5.0)
        await asyncio.wait_for(stream.wait_for_headers(), 5)
        assert stream.headers is not None
        assert (b"x-early", b"yes") in stream.headers
        assert not stream.ended
        release.set()
        assert [f async for f in _frames(stream)] == [grpc_frame(b"late")]
        client.close()


async def test_wait_for_headers_of_a_trailers_only_answer_returns_at_its_end_without_headers() -> None:
    async def not_found(conn: ServerConnection, request: Request) -> None:
        conn.respond(request.stream_id, [*GRPC_HEADERS, (b"grpc-status", b"5")], end=True)

    async with H2Server(not_found).running() as server:
        client = UpstreamClient(server.address, max_message_bytes=1 << 20)
        stream = await client.unary(PATH, b"", grpc_frame(b"hi"), 5.0)
        await asyncio.wait_for(stream.wait_for_headers(), 5)
        assert (stream.headers, stream.ended) == (None, True)
        client.close()


async def test_wait_for_headers_of_a_non_grpc_answer_waits_for_its_end() -> None:
    # A proxy's error page is no gRPC answer: its headers are not the call's to hand on early.
    release = asyncio.Event()

    async def bad_gateway_then_echo(conn: ServerConnection, request: Request) -> None:
        if request.headers[b":path"] != PATH.encode():
            await echo(conn, request)
            return
        conn.respond(request.stream_id, [(b":status", b"502"), (b"content-type", b"text/plain")])
        await release.wait()
        await conn.send_data(request.stream_id, b"upstream connect error", end=True)

    async def ended_when_the_wait_returned() -> bool:
        await stream.wait_for_headers()
        return stream.ended  # taken at the return, so a wrong return is caught however late it comes

    async with H2Server(bad_gateway_then_echo).running() as server:
        client = UpstreamClient(server.address, max_message_bytes=1 << 20)
        stream = await client.unary(PATH, b"", grpc_frame(b"hi"), 5.0)
        waiting = asyncio.ensure_future(ended_when_the_wait_returned())
        try:
            async with asyncio.timeout(5):
                while stream.headers is None:  # noqa: ASYNC110  # polled: the stream has no event for this
                    await asyncio.sleep(0.005)
            # A whole call on the same connection after those headers: round trips in which the
            # waiter they woke could (wrongly) return, however many loop turns it takes.
            other = await client.unary("/test.v1.Svc/Other", b"", grpc_frame(b"next"), 5.0)
            assert [f async for f in _frames(other)] == [grpc_frame(b"next")]
            assert not waiting.done()
            release.set()
            assert await asyncio.wait_for(waiting, 5), "wait_for_headers returned before the answer ended"
        finally:
            waiting.cancel()
            client.close()
    assert outcome(stream, "test.v1.Svc").code is grpc.StatusCode.UNAVAILABLE


async def test_missing_grpc_status_is_internal() -> None:
    async def no_status(conn: ServerConnection, request: Request) -> None:
        conn.respond(request.stream_id, GRPC_HEADERS)
        await conn.send_data(request.stream_id, b"", end=True)

    async with H2Server(no_status).running() as server:
        _, result = await call(UpstreamClient(server.address, max_message_bytes=1 << 20))
    assert result.code is grpc.StatusCode.INTERNAL


@pytest.mark.parametrize(
    ("error_code", "status"),
    [(0x7, grpc.StatusCode.UNAVAILABLE), (0x8, grpc.StatusCode.CANCELLED), (0x2, grpc.StatusCode.INTERNAL)],
)
async def test_reset_stream_maps_to_grpc_status(error_code: int, status: grpc.StatusCode) -> None:
    async def reset(conn: ServerConnection, request: Request) -> None:
        conn.conn.reset_stream(request.stream_id, error_code)
        conn.flush()

    async with H2Server(reset).running() as server:
        _, result = await call(UpstreamClient(server.address, max_message_bytes=1 << 20))
    assert result.code is status


@pytest.mark.parametrize(("error_code", "never_processed"), [(0x7, True), (0x8, False), (0x2, False)])
async def test_only_refused_stream_says_the_call_was_never_processed(error_code: int, never_processed: bool) -> None:
    async def reset(conn: ServerConnection, request: Request) -> None:
        conn.conn.reset_stream(request.stream_id, error_code)
        conn.flush()

    async with H2Server(reset).running() as server:
        stream = await UpstreamClient(server.address, max_message_bytes=1 << 20).unary(PATH, b"", grpc_frame(b"hi"), 5)
        assert await stream.read() is None
    assert isinstance(stream.error, NeverProcessed) is never_processed


async def test_goaway_fails_unprocessed_calls_as_unavailable_and_the_next_call_reconnects() -> None:
    async def go_away(conn: ServerConnection, request: Request) -> None:
        if len(conn.server.seen) == 1:
            conn.conn.close_connection(last_stream_id=0)
            conn.flush()
            return
        await echo(conn, request)

    async with H2Server(go_away).running() as server:
        client = UpstreamClient(server.address, max_message_bytes=1 << 20)
        stream = await client.unary(PATH, b"", grpc_frame(b"hi"), 5)
        assert await stream.read() is None
        assert isinstance(stream.error, NeverProcessed)  # above the GOAWAY's last stream id
        result = outcome(stream, "test.v1.Svc")
        assert result.code is grpc.StatusCode.UNAVAILABLE
        assert b"going away" in result.message
        frames, result = await call(client)
        assert result.code is grpc.StatusCode.OK
        assert frames == [grpc_frame(b"hi")]
        assert len(server.connections) == 2


async def test_lost_connection_mid_call_is_unavailable() -> None:
    async def drop(conn: ServerConnection, request: Request) -> None:
        conn.respond(request.stream_id, GRPC_HEADERS)
        await conn.send_data(request.stream_id, grpc_frame(b"one"))
        assert conn.transport is not None
        conn.transport.close()

    async with H2Server(drop).running() as server:
        _, result = await call(UpstreamClient(server.address, max_message_bytes=1 << 20))
    assert result.code is grpc.StatusCode.UNAVAILABLE
    assert b"lost" in result.message


async def test_response_over_the_limit_is_resource_exhausted_and_the_call_reset() -> None:
    async def big(conn: ServerConnection, request: Request) -> None:
        conn.respond(request.stream_id, GRPC_HEADERS)
        await conn.send_data(request.stream_id, grpc_frame(b"x" * 2000))
        await request.reset.wait()

    async with H2Server(big).running() as server:
        _, result = await call(UpstreamClient(server.address, max_message_bytes=1000))
        assert result.code is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert b"2000" in result.message
        await asyncio.wait_for(server.seen[0].reset.wait(), 5)
        assert server.seen[0].reset_code == 0x8


async def test_padding_and_continuation_frames_are_understood() -> None:
    long_value = b"v" * 40_000  # larger than one frame: HEADERS + CONTINUATION

    async def padded(conn: ServerConnection, request: Request) -> None:
        await request.ended.wait()
        conn.respond(request.stream_id, [*GRPC_HEADERS, (b"x-long", long_value)])
        await conn.send_data(request.stream_id, grpc_frame(b"padded"), pad=17)
        conn.respond(request.stream_id, OK_TRAILERS, end=True)

    async with H2Server(padded).running() as server:
        client = UpstreamClient(server.address, max_message_bytes=1 << 20)
        stream = await client.unary(PATH, b"", grpc_frame(b"hi"), 5.0)
        frames = [f async for f in _frames(stream)]
    assert frames == [grpc_frame(b"padded")]
    assert (b"x-long", long_value) in (stream.headers or [])


async def test_gzip_compressed_message_is_decompressed() -> None:
    async def compressed(conn: ServerConnection, request: Request) -> None:
        await request.ended.wait()
        conn.respond(request.stream_id, [*GRPC_HEADERS, (b"grpc-encoding", b"gzip")])
        await conn.send_data(request.stream_id, grpc_frame(gzip.compress(b"squeezed"), flags=1))
        conn.respond(request.stream_id, OK_TRAILERS, end=True)

    async with H2Server(compressed).running() as server:
        frames, result = await call(UpstreamClient(server.address, max_message_bytes=1 << 20))
    assert result.code is grpc.StatusCode.OK
    assert frames == [grpc_frame(b"squeezed")]


async def test_deadline_resets_the_stream_and_reports_deadline_exceeded() -> None:
    async def silent(conn: ServerConnection, request: Request) -> None:
        await request.reset.wait()

    async with H2Server(silent).running() as server:
        started = time.monotonic()
        _, result = await call(UpstreamClient(server.address, max_message_bytes=1 << 20), timeout=0.2)
        assert result.code is grpc.StatusCode.DEADLINE_EXCEEDED
        assert time.monotonic() - started < 2
        await asyncio.wait_for(server.seen[0].reset.wait(), 5)
        assert server.seen[0].reset_code == 0x8


async def test_large_request_waits_for_the_servers_window() -> None:
    payload = b"r" * (1 << 20)  # far beyond the server's 64 KiB initial window

    async with H2Server(echo).running() as server:
        frames, result = await call(UpstreamClient(server.address, max_message_bytes=2 << 20), grpc_frame(payload))
    assert result.code is grpc.StatusCode.OK
    assert frames == [grpc_frame(payload)]


async def test_slow_reader_holds_the_upstream_back_then_gets_everything() -> None:
    message = grpc_frame(b"m" * 60_000)
    count = 200  # 12 MB, three times the stream window
    sent = 0

    async def flood(conn: ServerConnection, request: Request) -> None:
        nonlocal sent
        conn.respond(request.stream_id, GRPC_HEADERS)
        for _ in range(count):
            await conn.send_data(request.stream_id, message)
            sent += 1
        conn.respond(request.stream_id, OK_TRAILERS, end=True)

    async with H2Server(flood).running() as server:
        client = UpstreamClient(server.address, max_message_bytes=1 << 20)
        stream = await client.unary(PATH, b"", grpc_frame(b"go"), 30.0)
        first = await stream.read()
        assert first == message
        # Without reading, the server must stall near the stream window.
        deadline = time.monotonic() + 5
        previous = -1
        while sent != previous and time.monotonic() < deadline:
            previous = sent
            await asyncio.sleep(0.2)
        assert sent * len(message) <= STREAM_WINDOW + 2 * len(message), "the upstream was not held back"
        received = 1
        while await stream.read() is not None:
            received += 1
    assert received == count
    assert outcome(stream, "s").code is grpc.StatusCode.OK


async def test_concurrent_streams_stay_within_the_servers_limit() -> None:
    async def slow_echo(conn: ServerConnection, request: Request) -> None:
        await asyncio.sleep(0.05)
        await echo(conn, request)

    async with H2Server(slow_echo, settings={SETTINGS.MAX_CONCURRENT_STREAMS: 2}).running() as server:
        client = UpstreamClient(server.address, max_message_bytes=1 << 20)
        await call(client)  # learn the server's settings
        results = await asyncio.gather(*(call(client) for _ in range(8)))
    assert all(result.code is grpc.StatusCode.OK for _, result in results)
    assert server.max_active <= 2


async def test_server_ping_is_acknowledged() -> None:
    async def ping_first(conn: ServerConnection, request: Request) -> None:
        conn.conn.ping(b"12345678")
        conn.flush()
        await echo(conn, request)

    async with H2Server(ping_first).running() as server:
        _, result = await call(UpstreamClient(server.address, max_message_bytes=1 << 20))
        assert result.code is grpc.StatusCode.OK
        deadline = time.monotonic() + 5
        while server.connections[0].pings_acked == 0:
            assert time.monotonic() < deadline, "PING never acknowledged"
            await asyncio.sleep(0.01)


async def test_unreachable_upstream_fails_fast_during_backoff() -> None:
    port = free_port()
    client = UpstreamClient(f"127.0.0.1:{port}", max_message_bytes=1000)
    with pytest.raises(StreamError) as first:
        await client.unary(PATH, b"", grpc_frame(b""), 1.0)
    assert first.value.code is grpc.StatusCode.UNAVAILABLE
    assert "Connection refused" in first.value.message
    # The upstream listens now, but within the backoff the client does not try again: the next call
    # fails with the refusal it already had (a new attempt would connect, and then wait in vain for
    # the listener's HTTP/2 settings). No clock to race.
    connections: list[asyncio.StreamWriter] = []
    listener = await asyncio.start_server(lambda _reader, writer: connections.append(writer), "127.0.0.1", port)
    try:
        with pytest.raises(StreamError) as second:
            await client.unary(PATH, b"", grpc_frame(b""), 1.0)
        assert (second.value.code, second.value.message) == (grpc.StatusCode.UNAVAILABLE, first.value.message)
    finally:
        listener.close()
        for writer in connections:
            writer.close()


def test_request_encoder_indexes_repeated_headers_and_stays_in_step_with_the_decoder() -> None:
    decoder = hpack.Decoder()
    encoder = RequestEncoder()
    expected = [
        (b":method", b"POST"),
        (b":scheme", b"http"),
        (b":path", b"/a.v1.S/M"),
        (b":authority", b"up:1"),
        (b"content-type", b"application/grpc"),
        (b"te", b"trailers"),
        (b"grpc-accept-encoding", b"identity"),
        (b"user-agent", b"upf-gateway"),
    ]
    first = encoder.prefix(b"up:1", b"/a.v1.S/M")
    assert decoder.decode(first, raw=True) == expected
    second = encoder.prefix(b"up:1", b"/a.v1.S/M")
    assert len(second) == 8  # every field one byte: an index
    assert decoder.decode(second, raw=True) == expected
    other = encoder.prefix(b"up:1", b"/a.v1.S/Other")
    assert list(decoder.decode(other, raw=True))[2] == (b":path", b"/a.v1.S/Other")
    assert decoder.decode(encoder.prefix(b"up:1", b"/a.v1.S/M"), raw=True) == expected
    # The upstream shrinks its table: the encoder empties it and indexes afresh within the new size.
    decoder.max_allowed_table_size = 100
    encoder.set_table_size(100)
    assert decoder.decode(encoder.prefix(b"up:1", b"/a.v1.S/M"), raw=True) == expected
    assert decoder.decode(encoder.prefix(b"up:1", b"/a.v1.S/M"), raw=True) == expected
    encoder.set_table_size(0)
    decoder.max_allowed_table_size = 0
    for _ in range(2):
        assert decoder.decode(encoder.prefix(b"up:1", b"/a.v1.S/M"), raw=True) == expected
    assert decoder.header_table.maxsize == 0


async def test_many_calls_on_one_connection_keep_their_headers() -> None:
    async with H2Server(echo).running() as server:
        client = UpstreamClient(server.address, max_message_bytes=1 << 20)
        for n in range(50):
            frames, result = await call(client, grpc_frame(str(n).encode()))
            assert result.code is grpc.StatusCode.OK
            assert frames == [grpc_frame(str(n).encode())]
        assert len(server.connections) == 1
        assert all(seen.headers[b":path"] == PATH.encode() for seen in server.seen)
        assert all(seen.headers[b"te"] == b"trailers" for seen in server.seen)


def test_response_decoder_cache_follows_the_dynamic_table() -> None:
    encoder = hpack.Encoder()  # indexes what it sends, as grpc servers do
    first = [(b":status", b"200"), (b"content-type", b"application/grpc"), (b"x-a", b"1")]
    second = [(b":status", b"200"), (b"content-type", b"application/grpc"), (b"x-b", b"2")]
    insert_first, indexed_first = encoder.encode(first), encoder.encode(first)
    assert encoder.encode(first) == indexed_first  # indexed and stable: the cache's case
    insert_second = encoder.encode(second)
    # Replaying the indexed block after an insertion: its indexes now point elsewhere.
    sequence = [insert_first, indexed_first, indexed_first, insert_second, indexed_first, encoder.encode(first)]
    plain, cached = hpack.Decoder(), HeaderBlockDecoder()
    for block in sequence:
        assert cached.decode(block) == list(plain.decode(block, raw=True))


async def test_a_frame_over_the_announced_size_breaks_the_connection_at_once() -> None:
    async def oversized(conn: ServerConnection, request: Request) -> None:
        conn.respond(request.stream_id, GRPC_HEADERS)
        # A DATA frame header announcing 100 000 bytes (the client allows 16 384): never its body.
        conn.raw((100_000).to_bytes(3, "big") + b"\x00\x00" + request.stream_id.to_bytes(4, "big"))
        await request.reset.wait()

    async with H2Server(oversized).running() as server:
        started = time.monotonic()
        _, result = await call(UpstreamClient(server.address, max_message_bytes=1 << 20), timeout=10)
    assert result.code is grpc.StatusCode.INTERNAL
    assert b"SETTINGS_MAX_FRAME_SIZE" in result.message
    assert time.monotonic() - started < 5


def _raw_frame(kind: int, flags: int, stream_id: int, payload: bytes) -> bytes:
    return len(payload).to_bytes(3, "big") + bytes((kind, flags)) + stream_id.to_bytes(4, "big") + payload


_PADDED, _END_HEADERS = 0x8, 0x4
_HEADERS, _CONTINUATION, _DATA = 0x1, 0x9, 0x0


# A header block as an upstream could send it, past the 64 KiB the client announces as
# SETTINGS_MAX_HEADER_LIST_SIZE: HEADERS and CONTINUATIONs of 16 KiB (the client's frame size).
def _huge_headers(*, huffman: bool) -> bytes:
    block = hpack.Encoder().encode([(b":status", b"200"), (b"x-huge", b"h" * 70_000)], huffman=huffman)
    return b"".join(
        _raw_frame(
            _HEADERS if offset == 0 else _CONTINUATION,
            _END_HEADERS if offset + 16384 >= len(block) else 0,
            1,
            block[offset : offset + 16384],
        )
        for offset in range(0, len(block), 16384)
    )


@pytest.mark.parametrize(
    ("wire", "code", "words"),
    [
        # Pad length 10 in a 4-byte payload: the padding cannot fit.
        (_raw_frame(_DATA, _PADDED, 1, b"\x0aabc"), h2.errors.ErrorCodes.PROTOCOL_ERROR, b"padding"),
        (_raw_frame(_HEADERS, _PADDED | _END_HEADERS, 1, b"\x0a\x88"), h2.errors.ErrorCodes.PROTOCOL_ERROR, b"padding"),
        (_huge_headers(huffman=False), h2.errors.ErrorCodes.ENHANCE_YOUR_CALM, b"header block over 65536 bytes"),
        # Huffman-coded, the block fits (~53 KB) but decodes to more than 64 KiB.
        (_huge_headers(huffman=True), h2.errors.ErrorCodes.ENHANCE_YOUR_CALM, b"header list too large"),
    ],
    ids=["data-padding", "headers-padding", "header-block-over-64k", "header-list-over-64k"],
)
async def test_an_upstream_breaking_the_frame_rules_gets_goaway_and_the_call_fails(
    wire: bytes, code: int, words: bytes
) -> None:
    """The checks the ingress makes on its clients, made by the client on its upstreams too."""

    async def broken(conn: ServerConnection, request: Request) -> None:
        await request.ended.wait()
        if wire[3] == _DATA:
            conn.respond(request.stream_id, GRPC_HEADERS)
        conn.raw(wire)
        await request.reset.wait()

    async with H2Server(broken).running() as server:
        _, result = await call(UpstreamClient(server.address, max_message_bytes=1 << 20), timeout=10)
        assert result.code is grpc.StatusCode.INTERNAL
        assert b"broke the protocol" in result.message
        assert words in result.message
        connection = server.connections[0]
        await asyncio.wait_for(connection.goaway.wait(), 5)
        assert connection.goaway_code == code
