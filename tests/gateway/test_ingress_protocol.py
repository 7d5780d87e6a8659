"""The native ingress as an HTTP/2 server, driven frame by frame with the h2 library: the protocol
cases real gRPC clients rarely produce (a client that never reads, RST_STREAM, CONTINUATION, PING,
garbage, GOAWAY on shutdown). Every wait polls with a deadline; every test checks what a client sees."""

from __future__ import annotations

import asyncio
import signal
import struct
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.settings
import hpack
import pytest

from tests.support.processes import Gateway, run_gateway

pytestmark = pytest.mark.asyncio

PROBE = "/accept.v1.Probe"
_FRAME = struct.Struct(">IBI")


def grpc_frame(payload: bytes) -> bytes:
    return struct.pack(">BI", 0, len(payload)) + payload


def grpc_messages(data: bytes) -> list[bytes]:
    messages, offset = [], 0
    while offset < len(data):
        length = int.from_bytes(data[offset + 1 : offset + 5], "big")
        messages.append(data[offset + 5 : offset + 5 + length])
        offset += 5 + length
    return messages


class H2Client:
    """A raw HTTP/2 client: the test decides what goes on the wire, and when window updates go out."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, auto_ack: bool) -> None:
        self.reader = reader
        self.writer = writer
        self.auto_ack = auto_ack  # give back flow-control credit for received DATA (a client that reads)
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
        self.headers: dict[int, dict[bytes, bytes]] = {}
        self.trailers: dict[int, dict[bytes, bytes]] = {}
        self.data: dict[int, bytearray] = {}
        self.ended: set[int] = set()
        self.resets: dict[int, int] = {}
        self.ping_acks: list[bytes] = []
        self.terminated: h2.events.ConnectionTerminated | None = None
        self.settings_received = False
        self.eof = False

    @classmethod
    async def open(cls, port: int, *, auto_ack: bool = True) -> H2Client:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        client = cls(reader, writer, auto_ack=auto_ack)
        client.conn.initiate_connection()
        client.flush()
        await client.until(lambda: client.settings_received)
        return client

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.writer.write(data)

    def request(self, method: str, message: bytes | None, *, end: bool = True, metadata: tuple[Any, ...] = ()) -> int:
        stream_id: int = self.conn.get_next_available_stream_id()
        headers = [
            (b":method", b"POST"),
            (b":scheme", b"http"),
            (b":path", f"{PROBE}/{method}".encode()),
            (b":authority", b"gateway"),
            (b"content-type", b"application/grpc"),
            (b"te", b"trailers"),
            *metadata,
        ]
        self.conn.send_headers(stream_id, headers, end_stream=message is None and end)
        if message is not None:
            self.conn.send_data(stream_id, grpc_frame(message), end_stream=end)
        self.flush()
        return stream_id

    async def receive(self, timeout: float) -> None:
        chunk = await asyncio.wait_for(self.reader.read(1 << 20), timeout)
        if not chunk:
            self.eof = True
            return
        for event in self.conn.receive_data(chunk):
            if isinstance(event, h2.events.ResponseReceived):
                self.headers[event.stream_id] = dict(event.headers)
            elif isinstance(event, h2.events.TrailersReceived):
                self.trailers[event.stream_id] = dict(event.headers)
            elif isinstance(event, h2.events.DataReceived):
                self.data.setdefault(event.stream_id, bytearray()).extend(event.data)
                if self.auto_ack:
                    self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.StreamEnded):
                self.ended.add(event.stream_id)
            elif isinstance(event, h2.events.StreamReset):
                self.resets[event.stream_id] = event.error_code
            elif isinstance(event, h2.events.PingAckReceived):
                self.ping_acks.append(event.ping_data)
            elif isinstance(event, h2.events.ConnectionTerminated):
                self.terminated = event
            elif isinstance(event, h2.events.RemoteSettingsChanged):
                self.settings_received = True
        self.flush()

    async def until(self, predicate: Callable[[], object], timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            remaining = deadline - time.monotonic()
            assert remaining > 0, "timed out waiting for the gateway"
            assert not self.eof, "the gateway closed the connection"
            try:
                await self.receive(remaining)
            except TimeoutError:
                continue

    def status(self, stream_id: int) -> bytes | None:
        block = self.trailers.get(stream_id) or self.headers.get(stream_id) or {}
        return block.get(b"grpc-status")

    def close(self) -> None:
        self.writer.close()


@pytest.fixture
async def client(gateway: Gateway) -> AsyncIterator[H2Client]:
    opened = await H2Client.open(gateway.grpc_port)
    yield opened
    opened.close()


@pytest.fixture
async def direct(probe_address: str, pb_grpc: Any) -> AsyncIterator[Any]:
    async with grpc.aio.insecure_channel(probe_address) as channel:
        yield pb_grpc.ProbeStub(channel)


async def _poll(check: Callable[[], Any], what: str, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (result := await check()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)
    return result


async def _native_call_works(gateway: Gateway, pb: Any, pb_grpc: Any) -> None:
    async with grpc.aio.insecure_channel(gateway.grpc_target) as channel:
        reply = await pb_grpc.ProbeStub(channel).Unary(pb.CallRequest(payload=b"still up"), timeout=10)
    assert reply.payload == b"still up"


def _rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


async def test_server_settings_and_ping(client: H2Client) -> None:
    assert client.conn.remote_settings.max_concurrent_streams == 1000
    client.conn.ping(b"12345678")
    client.flush()
    await client.until(lambda: client.ping_acks)
    assert client.ping_acks == [b"12345678"]


async def test_unary_call_over_raw_http2(client: H2Client, pb: Any) -> None:
    stream = client.request("Unary", pb.CallRequest(payload=b"raw").SerializeToString())
    await client.until(lambda: stream in client.ended)
    assert client.headers[stream][b":status"] == b"200"
    assert client.headers[stream][b"content-type"] == b"application/grpc"
    assert client.status(stream) == b"0"
    assert pb.CallReply.FromString(grpc_messages(bytes(client.data[stream]))[0]).payload == b"raw"


async def test_a_client_that_never_reads_holds_the_upstream_back(gateway: Gateway, direct: Any, pb: Any) -> None:
    # 600 messages of 64 KiB (~39 MB) towards a client that never gives back any window: the gateway
    # may hold about one upstream stream window (4 MiB), not the whole answer.
    client = await H2Client.open(gateway.grpc_port, auto_ack=False)
    key = f"never-reads-{time.monotonic_ns()}"
    try:
        baseline = _rss_bytes(gateway.process.pid)
        request = pb.CallRequest(count=600, response_bytes=64 * 1024, key=key)
        stream = client.request("ServerStream", request.SerializeToString())
        initial_window = client.conn.local_settings.initial_window_size
        await client.until(lambda: len(client.data.get(stream, b"")) >= initial_window)
        assert len(client.data[stream]) == initial_window  # not a byte beyond the client's window
        # Nothing signals "the upstream is held back", so watch for a while that nothing grows:
        # without flow control the gateway would take in all 39 MB within this time.
        watch_until = time.monotonic() + 1.5
        while time.monotonic() < watch_until:
            assert _rss_bytes(gateway.process.pid) - baseline < 20 * 1024 * 1024
            assert (await direct.Observe(pb.Key(key=key))).finished == 0
            await asyncio.sleep(0.05)
        assert stream not in client.ended
        # The client starts reading: the whole answer arrives, in order, with an OK status.
        client.auto_ack = True
        client.conn.acknowledge_received_data(len(client.data[stream]), stream)
        client.flush()
        await client.until(lambda: stream in client.ended, timeout=60)
        messages = grpc_messages(bytes(client.data[stream]))
        assert [pb.CallReply.FromString(m).index for m in messages] == list(range(600))
        assert client.status(stream) == b"0"
    finally:
        client.close()


async def test_rst_stream_from_the_client_cancels_the_upstream_call(client: H2Client, direct: Any, pb: Any) -> None:
    key = f"raw-reset-{time.monotonic_ns()}"
    stream = client.request("ServerStream", pb.CallRequest(count=5, key=key, wait_release=True).SerializeToString())
    await client.until(lambda: client.data.get(stream))
    client.conn.reset_stream(stream, h2.errors.ErrorCodes.CANCEL)
    client.flush()
    observation = await _poll(
        lambda: _observed(direct, pb, key, lambda o: o.cancelled == 1), "the service to see the cancellation"
    )
    assert observation.finished == 1
    # The connection is still good for other calls.
    again = client.request("Unary", pb.CallRequest(payload=b"after reset").SerializeToString())
    await client.until(lambda: again in client.ended)
    assert client.status(again) == b"0"


async def _observed(direct: Any, pb: Any, key: str, check: Callable[[Any], bool]) -> Any:
    observation = await direct.Observe(pb.Key(key=key))
    return observation if check(observation) else None


async def test_request_headers_split_into_continuation_frames(client: H2Client, pb: Any) -> None:
    # h2 cuts a header block at the peer's frame size: make it tiny for this one block, so the
    # request goes out as HEADERS and many CONTINUATION frames.
    client.conn.max_outbound_frame_size = 50
    long_value = "v" * 400
    stream = client.request(
        "Unary", None, end=False, metadata=((b"x-long", long_value.encode()), (b"x-trace-bin", b"AP8"))
    )
    client.conn.max_outbound_frame_size = client.conn.streams[stream].max_outbound_frame_size = 16384
    client.conn.send_data(stream, grpc_frame(pb.CallRequest(payload=b"cont").SerializeToString()), end_stream=True)
    client.flush()
    await client.until(lambda: stream in client.ended)
    assert client.status(stream) == b"0"
    reply = pb.CallReply.FromString(grpc_messages(bytes(client.data[stream]))[0])
    assert reply.payload == b"cont"
    assert reply.metadata["x-long"] == long_value
    assert reply.metadata["x-trace-bin"] == "AP8="


async def test_garbage_gets_goaway_and_the_gateway_serves_others(gateway: Gateway, pb: Any, pb_grpc: Any) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.grpc_port)
    writer.write(b"GET / HTTP/1.1\r\nHost: gateway\r\n\r\n")
    received = await asyncio.wait_for(reader.read(), 10)  # until the gateway closes the connection
    writer.close()
    goaways = [payload for kind, payload in _frames(received) if kind == 7]
    assert goaways, "no GOAWAY before the connection closed"
    assert struct.unpack(">II", goaways[0][:8])[1] == h2.errors.ErrorCodes.PROTOCOL_ERROR
    await _native_call_works(gateway, pb, pb_grpc)


async def test_malformed_frame_gets_goaway(gateway: Gateway, client: H2Client, pb: Any, pb_grpc: Any) -> None:
    client.writer.write(_FRAME.pack((3 << 8) | 8, 0, 0) + b"\x00\x00\x01")  # WINDOW_UPDATE of 3 bytes
    await client.until(lambda: client.terminated is not None)
    assert client.terminated is not None
    assert client.terminated.error_code == h2.errors.ErrorCodes.FRAME_SIZE_ERROR
    await _native_call_works(gateway, pb, pb_grpc)


def _huge_header_block(stream_id: int, *, huffman: bool) -> bytes:
    """A request header block of ~70 KB (or ~53 KB Huffman-coded, decoding to ~70 KB) in 16 KiB frames."""
    headers = [(b":method", b"POST"), (b":path", f"{PROBE}/Unary".encode()), (b"x-huge", b"h" * 70_000)]
    block = hpack.Encoder().encode(headers, huffman=huffman)
    frames = []
    for offset in range(0, len(block), 16384):
        kind = 0x1 if offset == 0 else 0x9  # HEADERS, then CONTINUATION
        flags = 0x4 if offset + 16384 >= len(block) else 0  # END_HEADERS on the last
        chunk = block[offset : offset + 16384]
        frames.append(_FRAME.pack((len(chunk) << 8) | kind, flags, stream_id) + chunk)
    return b"".join(frames)


@pytest.mark.parametrize(
    ("case", "code"),
    [
        ("data-padding", h2.errors.ErrorCodes.PROTOCOL_ERROR),
        ("headers-padding", h2.errors.ErrorCodes.PROTOCOL_ERROR),
        ("header-block-over-64k", h2.errors.ErrorCodes.ENHANCE_YOUR_CALM),
        ("header-list-over-64k", h2.errors.ErrorCodes.ENHANCE_YOUR_CALM),
    ],
)
async def test_a_client_breaking_the_frame_rules_gets_goaway(
    gateway: Gateway, client: H2Client, pb: Any, pb_grpc: Any, case: str, code: int
) -> None:
    """The same cases the HTTP/2 client refuses from an upstream (tests/gateway/test_http2_client.py)."""
    if case == "data-padding":
        stream_id = client.request("Unary", None, end=False)
        # Pad length 10 in a 4-byte payload: the padding cannot fit.
        client.writer.write(_FRAME.pack((4 << 8) | 0x0, 0x8, stream_id) + b"\x0aabc")
    elif case == "headers-padding":
        client.writer.write(_FRAME.pack((2 << 8) | 0x1, 0x8 | 0x4, 1) + b"\x0a\x88")
    else:
        client.writer.write(_huge_header_block(1, huffman=case == "header-list-over-64k"))
    await client.until(lambda: client.terminated is not None)
    assert client.terminated is not None
    assert client.terminated.error_code == code
    await _native_call_works(gateway, pb, pb_grpc)


def _frames(data: bytes) -> list[tuple[int, bytes]]:
    frames, offset = [], 0
    while len(data) - offset >= 9:
        head, _flags, _stream = _FRAME.unpack_from(data, offset)
        end = offset + 9 + (head >> 8)
        frames.append((head & 0xFF, data[offset + 9 : end]))
        offset = end
    return frames


async def test_goaway_on_shutdown_lets_a_running_call_finish(
    probe_address: str, work_dir: Path, direct: Any, pb: Any
) -> None:
    key = f"shutdown-{time.monotonic_ns()}"
    with run_gateway({"upstreams": {"accept.v1.Probe": [probe_address]}}, work_dir) as gateway:
        # h2 refuses every frame after a GOAWAY, so this client only encodes with h2 and reads frames itself.
        reader, writer = await asyncio.open_connection("127.0.0.1", gateway.grpc_port)
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
        conn.initiate_connection()
        stream = conn.get_next_available_stream_id()
        conn.send_headers(
            stream,
            [
                (b":method", b"POST"),
                (b":scheme", b"http"),
                (b":path", f"{PROBE}/Unary".encode()),
                (b":authority", b"gateway"),
                (b"content-type", b"application/grpc"),
                (b"te", b"trailers"),
            ],
        )
        conn.send_data(
            stream, grpc_frame(pb.CallRequest(payload=b"late", sleep_ms=1500, key=key).SerializeToString()), True
        )
        writer.write(conn.data_to_send())
        await _poll(lambda: _observed(direct, pb, key, lambda o: o.started == 1), "the call to reach the service")
        gateway.process.popen.send_signal(signal.SIGTERM)
        received = await asyncio.wait_for(reader.read(), 30)  # until the gateway closes the connection
        writer.close()
        assert gateway.process.popen.wait(30) == 0
    frames = _frames(received)
    kinds = [kind for kind, _ in frames]
    assert 7 in kinds, "no GOAWAY"
    goaway = frames[kinds.index(7)][1]
    assert struct.unpack(">II", goaway[:8]) == (stream, 0)  # our stream is let through; NO_ERROR
    # After the GOAWAY: the answer, then trailers with an OK status.
    decoder = hpack.Decoder()
    after = frames[kinds.index(7) + 1 :]
    blocks = [dict(decoder.decode(payload, raw=True)) for kind, payload in after if kind == 1]
    data = b"".join(payload for kind, payload in after if kind == 0)
    assert pb.CallReply.FromString(grpc_messages(data)[0]).payload == b"late"
    assert blocks[-1][b"grpc-status"] == b"0"
