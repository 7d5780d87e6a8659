"""Live events for tests: an /api/events client, NATS JetStream streams of the test's own, nats-servers to kill."""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
import nats.errors
import nats.js.errors
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.support.processes import Gateway, Process, free_port, wait_until

SHARED_NATS = "nats://127.0.0.1:4222"
NATS_SERVER = shutil.which("nats-server") or "/usr/sbin/nats-server"


def events_url(gateway: Gateway | str, query: str = "") -> str:
    base = gateway.url if isinstance(gateway, Gateway) else gateway
    return base.replace("http://", "ws://", 1) + "/api/events" + (f"?{query}" if query else "")


@dataclass
class Closed:
    code: int | None
    reason: str


class EventsClient:
    """A socket on /api/events that reads JSON messages; heartbeats are counted, not returned."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.heartbeats = 0

    async def next(self, timeout: float = 10.0, *, heartbeats: bool = False) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            while True:
                message = json.loads(await self.ws.recv())
                if message["type"] == "heartbeat":
                    self.heartbeats += 1
                    if not heartbeats:
                        continue
                return dict(message)

    async def expect(self, kind: str, timeout: float = 10.0) -> dict[str, Any]:
        message = await self.next(timeout)
        assert message["type"] == kind, f"expected a {kind} message, got {message}"
        return message

    async def events(self, count: int, timeout: float = 15.0) -> list[dict[str, Any]]:
        return [await self.expect("event", timeout) for _ in range(count)]

    async def send(self, message: dict[str, Any]) -> None:
        await self.ws.send(json.dumps(message))

    async def subscribe(self, *topics: str, last_event_id: str | None = None) -> dict[str, Any]:
        message: dict[str, Any] = {"type": "subscribe", "topics": list(topics)}
        if last_event_id is not None:
            message["lastEventId"] = last_event_id
        await self.send(message)
        return await self.expect("subscribed")

    async def quiet(self, seconds: float) -> list[dict[str, Any]]:
        """Whatever arrives (heartbeats aside) within `seconds`: for asserting that nothing does."""
        received: list[dict[str, Any]] = []
        with _suppress_timeout():
            async with asyncio.timeout(seconds):
                while True:
                    received.append(await self.next(seconds + 1))
        return received

    async def closed(self, timeout: float = 15.0) -> tuple[list[dict[str, Any]], Closed]:
        """Reads until the server closes: the messages on the way (heartbeats aside), and the close."""
        received: list[dict[str, Any]] = []
        async with asyncio.timeout(timeout):
            try:
                while True:
                    message = json.loads(await self.ws.recv())
                    if message["type"] != "heartbeat":
                        received.append(message)
            except ConnectionClosed as exc:
                rcvd = exc.rcvd
                return received, Closed(rcvd.code if rcvd else None, rcvd.reason if rcvd else "")


@contextmanager
def _suppress_timeout() -> Iterator[None]:
    with suppress(TimeoutError):
        yield


@asynccontextmanager
async def events_client(url: str, **options: Any) -> AsyncIterator[EventsClient]:
    async with connect(url, proxy=None, open_timeout=10, **options) as ws:
        yield EventsClient(ws)


# NATS JetStream -------------------------------------------------------------------------------------


@dataclass
class EventStream:
    """A stream and subject prefix of the test's own, on the shared NATS; deleted afterwards."""

    name: str
    prefix: str
    url: str = SHARED_NATS

    def settings(self, **extra: Any) -> dict[str, Any]:
        return {
            "enabled": True,
            "bus": "nats",
            "natsUrl": self.url,
            "stream": self.name,
            "subjectPrefix": self.prefix,
            "storage": "memory",
            **extra,
        }


def new_stream() -> EventStream:
    tag = uuid.uuid4().hex[:12]
    return EventStream(name=f"UPF_TEST_{tag}", prefix=f"upftest.{tag}")


async def delete_stream(stream: EventStream) -> None:
    nc = await nats.connect(stream.url, connect_timeout=2, max_reconnect_attempts=1)
    try:
        await nc.jetstream().delete_stream(stream.name)
    except nats.js.errors.NotFoundError:
        pass
    finally:
        await nc.close()


async def shared_nats() -> Any:
    """A client of the shared NATS; the test fails (never skips) when it does not answer."""
    try:
        return await nats.connect(SHARED_NATS, connect_timeout=2, max_reconnect_attempts=1, allow_reconnect=False)
    except (nats.errors.Error, OSError) as exc:
        pytest.fail(f"NATS is not reachable at {SHARED_NATS} ({exc}); .ci/run starts it")


class NatsServer:
    """A nats-server with JetStream of the test's own, on a free port, with its store in `work_dir`."""

    def __init__(self, work_dir: Path, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"nats://127.0.0.1:{self.port}"
        self.store = work_dir / f"nats-{self.port}-{uuid.uuid4().hex[:6]}"
        self.log_dir = work_dir
        self.process: Process | None = None

    def start(self) -> None:
        args = [NATS_SERVER, "-a", "127.0.0.1", "-p", str(self.port), "-js", "-sd", str(self.store)]
        self.process = Process(args, log=self.log_dir / f"nats-{self.port}-{uuid.uuid4().hex[:6]}.log")
        wait_until(self._listening, what=f"nats-server on port {self.port}")

    def _listening(self) -> bool:
        assert self.process is not None
        if not self.process.alive():
            raise RuntimeError(f"nats-server exited:\n{self.process.output()}")
        with socket.socket() as sock:
            return sock.connect_ex(("127.0.0.1", self.port)) == 0

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
            self.process = None


def slow_socket(port: int) -> socket.socket:
    """A socket to the gateway with a tiny receive buffer (set before connecting, so the window
    stays small): a client that stops reading holds the server back at once, not after megabytes."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    return sock
