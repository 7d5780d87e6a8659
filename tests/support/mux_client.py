"""A raw upf-mux.v1 client for tests: frames built and read byte by byte over the `websockets` client.

It does no flow control of its own: tests decide every WINDOW_UPDATE, and see every frame.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import NamedTuple

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from websockets.typing import Origin, Subprotocol

from gateway.websocket.mux_frames import HEADER, OPEN_FIXED, FrameType

SUBPROTOCOL = Subprotocol("upf-mux.v1")
TIMEOUT = 10.0
BIG_WINDOW = 1 << 30


class Frame(NamedTuple):
    kind: FrameType
    flags: int
    stream_id: int
    payload: bytes


def frame(kind: int, stream_id: int, payload: bytes = b"", flags: int = 0) -> bytes:
    return HEADER.pack(kind, flags, stream_id, len(payload)) + payload


def grpc_message(payload: bytes) -> bytes:
    return struct.pack(">BI", 0, len(payload)) + payload


def open_payload(
    path: str, metadata: dict[str, str] | None = None, window: int = BIG_WINDOW, timeout_ms: int = 0
) -> bytes:
    block = "".join(f"{name}: {value}\r\n" for name, value in (metadata or {}).items()).encode()
    encoded = path.encode()
    return OPEN_FIXED.pack(window, timeout_ms, len(encoded)) + encoded + block


def parse_block(payload: bytes) -> dict[str, str]:
    result = {}
    for line in payload.decode("ascii").split("\r\n"):
        if line:
            name, _, value = line.partition(":")
            result[name] = value.strip()
    return result


@dataclass
class Result:
    """What one call's stream carried, in order."""

    frames: list[Frame] = field(default_factory=list)

    @property
    def kinds(self) -> list[str]:
        return [f.kind.name for f in self.frames]

    @property
    def headers(self) -> dict[str, str] | None:
        found = [f for f in self.frames if f.kind is FrameType.HEADERS]
        return parse_block(found[0].payload) if found else None

    @property
    def data(self) -> bytes:
        return b"".join(f.payload for f in self.frames if f.kind is FrameType.DATA)

    @property
    def messages(self) -> list[bytes]:
        stream, out, offset = self.data, [], 0
        while offset < len(stream):
            _flags, length = struct.unpack_from(">BI", stream, offset)
            out.append(stream[offset + 5 : offset + 5 + length])
            offset += 5 + length
        return out

    @property
    def trailer_frame(self) -> Frame:
        assert self.frames, "no frames"
        assert self.frames[-1].kind is FrameType.TRAILERS, f"no TRAILERS at the end: {self.kinds}"
        return self.frames[-1]

    @property
    def status(self) -> int:
        return int(struct.unpack_from(">H", self.trailer_frame.payload)[0])

    @property
    def message(self) -> str:
        payload = self.trailer_frame.payload
        length = struct.unpack_from(">H", payload, 2)[0]
        return payload[4 : 4 + length].decode()

    @property
    def trailers(self) -> dict[str, str]:
        payload = self.trailer_frame.payload
        length = struct.unpack_from(">H", payload, 2)[0]
        return parse_block(payload[4 + length :])


class MuxClient:
    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.queues: dict[int, asyncio.Queue[Frame]] = defaultdict(asyncio.Queue)
        self.messages_received = 0
        self.next_id = 1
        self._reader = asyncio.ensure_future(self._read())

    @classmethod
    @contextlib.asynccontextmanager
    async def connect(
        cls, url: str, *, origin: str | None = None, subprotocols: list[Subprotocol] | None = None
    ) -> AsyncIterator[MuxClient]:
        async with connect(
            url,
            subprotocols=[SUBPROTOCOL] if subprotocols is None else subprotocols,
            origin=Origin(origin) if origin else None,
            compression=None,
            max_size=None,
            proxy=None,
            open_timeout=TIMEOUT,
            close_timeout=TIMEOUT,
        ) as ws:
            client = cls(ws)
            try:
                yield client
            finally:
                client._reader.cancel()

    async def _read(self) -> None:
        with contextlib.suppress(ConnectionClosed):
            async for message in self.ws:
                assert isinstance(message, bytes), f"text message from the gateway: {message!r}"
                self.messages_received += 1
                offset = 0
                while offset < len(message):
                    kind, flags, stream_id, length = HEADER.unpack_from(message, offset)
                    start = offset + HEADER.size
                    payload = message[start : start + length]
                    assert len(payload) == length, "frame cut short by the end of its message"
                    self.queues[stream_id].put_nowait(Frame(FrameType(kind), flags, stream_id, payload))
                    offset = start + length

    # --- sending ------------------------------------------------------------------------------

    async def send(self, *frames: bytes) -> None:
        """Frames in one WebSocket message."""
        await self.ws.send(b"".join(frames))

    async def open(
        self,
        method: str,
        *,
        service: str = "accept.v1.Probe",
        metadata: dict[str, str] | None = None,
        window: int = BIG_WINDOW,
        timeout_ms: int = 0,
        stream_id: int | None = None,
        then: tuple[bytes, ...] = (),
    ) -> int:
        if stream_id is None:
            stream_id = self.next_id
        self.next_id = max(self.next_id, stream_id) + 2
        payload = open_payload(f"/{service}/{method}", metadata, window, timeout_ms)
        await self.send(frame(FrameType.OPEN, stream_id, payload), *then)
        return stream_id

    async def message(self, stream_id: int, payload: bytes) -> None:
        await self.send(frame(FrameType.DATA, stream_id, grpc_message(payload)))

    async def half_close(self, stream_id: int) -> None:
        await self.send(frame(FrameType.HALF_CLOSE, stream_id))

    async def cancel(self, stream_id: int) -> None:
        await self.send(frame(FrameType.CANCEL, stream_id))

    async def window_update(self, stream_id: int, increment: int) -> None:
        await self.send(frame(FrameType.WINDOW_UPDATE, stream_id, struct.pack(">I", increment)))

    async def unary(self, method: str, payload: bytes, **open_args: object) -> Result:
        stream_id = await self.open(
            method,
            then=(
                frame(FrameType.DATA, self.next_id, grpc_message(payload)),
                frame(FrameType.HALF_CLOSE, self.next_id),
            ),
            **open_args,  # type: ignore[arg-type]
        )
        return await self.result(stream_id)

    # --- receiving ----------------------------------------------------------------------------

    async def next(self, stream_id: int, timeout: float = TIMEOUT) -> Frame:
        return await asyncio.wait_for(self.queues[stream_id].get(), timeout)

    async def next_message(self, stream_id: int) -> bytes:
        """The next response message, skipping HEADERS (each DATA frame is one whole message here)."""
        while True:
            got = await self.next(stream_id)
            if got.kind is FrameType.DATA:
                return got.payload[5:]
            assert got.kind is FrameType.HEADERS, f"expected DATA, got {got}"

    async def result(self, stream_id: int, timeout: float = TIMEOUT) -> Result:
        """Every frame of the stream up to its TRAILERS."""
        result = Result()
        async with asyncio.timeout(timeout):
            while not result.frames or result.frames[-1].kind is not FrameType.TRAILERS:
                result.frames.append(await self.queues[stream_id].get())
        return result

    def pending(self, stream_id: int) -> list[Frame]:
        """Frames that have arrived for the stream and not been taken, without waiting."""
        queue, out = self.queues[stream_id], []
        while not queue.empty():
            out.append(queue.get_nowait())
        return out

    async def closed(self, timeout: float = TIMEOUT) -> tuple[int | None, str | None]:
        """Wait for the gateway to close the socket: (code, reason)."""
        with contextlib.suppress(ConnectionClosed):
            await asyncio.wait_for(self.ws.wait_closed(), timeout)
        await asyncio.wait_for(asyncio.shield(self._reader), timeout)
        return self.ws.close_code, self.ws.close_reason
