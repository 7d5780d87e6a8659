"""Graceful drain of grpc-websockets sockets: a real gateway process, stopped with SIGTERM mid-call.

Choices pinned here (gateway/websocket/grpcws.py describes the drain):

- A call in flight when SIGTERM arrives runs to its end; its trailer frame is followed by close 1001
  (not 1000), telling the client this gateway is going away.
- A socket that has no call yet (no header block) is closed with 1001 at once, not after the grace.
- A call still running after websocket.drainGrace gets UNAVAILABLE "the gateway is shutting down",
  then close 1001, and its upstream call is cancelled.
- The process exits with 0 in every case.
- With `workers: 2` each worker process drains its own sockets the same way (uvicorn's own workers
  would close them all with 1012 at once).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.typing import Origin

from tests.conftest import ALLOWED_ORIGIN
from tests.gateway.test_grpc_websockets import (
    OK,
    SUBPROTOCOL,
    UNAVAILABLE,
    Call,
    key,
    observe,
    opened,
    wait_cancelled,
    ws_url,
)
from tests.support.processes import Gateway, run_gateway, wait_until

GOING_AWAY = 1001


@contextmanager
def own_gateway(probe_address: str, work_dir: Path, drain_grace: float) -> Iterator[Gateway]:
    """A gateway of the test's own: the test stops it, so it cannot be the session's."""
    config = {
        "upstreams": {"accept.v1.Probe": [probe_address]},
        "cors": {"allowOrigins": [ALLOWED_ORIGIN]},
        "websocket": {"drainGrace": drain_grace},
    }
    with run_gateway(config, work_dir) as gateway:
        yield gateway


def sigterm(gateway: Gateway) -> None:
    os.kill(gateway.process.pid, signal.SIGTERM)


async def exit_code(gateway: Gateway) -> int:
    # Process.stop waits for the exit (after sending another SIGTERM, which a draining uvicorn ignores).
    return await asyncio.to_thread(gateway.process.stop, signal.SIGTERM, 20.0)


async def test_a_call_in_flight_finishes_then_its_socket_closes_1001(
    probe_address: str, work_dir: Path, pb: Any
) -> None:
    with own_gateway(probe_address, work_dir, drain_grace=10) as gateway:
        async with opened(gateway, "Bidi") as call:
            for n in range(2):
                await call.request(pb, payload=f"ping {n}".encode())
                assert (await call.reply(pb)).index == n
            sigterm(gateway)
            await asyncio.to_thread(
                wait_until, lambda: "WebSockets: draining" in gateway.process.output(), what="the drain to begin"
            )
            for n in range(2, 5):
                await call.request(pb, payload=f"ping {n}".encode())
                reply = await call.reply(pb)
                assert (reply.payload, reply.index) == (f"ping {n}".encode(), n)
            # No new calls meanwhile: the listener is closed (or, on a kept-alive connection, 503).
            with pytest.raises((OSError, InvalidStatus)):
                async with connect(ws_url(gateway, "Bidi"), subprotocols=[SUBPROTOCOL], proxy=None, open_timeout=5):
                    pass
            await call.half_close()
            answer = await call.finish()
        assert answer.status == OK
        assert answer.close_code == GOING_AWAY
        assert await exit_code(gateway) == 0


async def test_a_socket_without_a_call_is_closed_1001_at_once(probe_address: str, work_dir: Path) -> None:
    with own_gateway(probe_address, work_dir, drain_grace=30) as gateway:
        async with connect(
            ws_url(gateway, "Bidi"), subprotocols=[SUBPROTOCOL], origin=Origin(ALLOWED_ORIGIN), proxy=None
        ) as ws:
            started = time.monotonic()
            sigterm(gateway)
            try:
                await asyncio.wait_for(ws.recv(), 5)
                raise AssertionError("the gateway sent a message to a socket without a call")
            except ConnectionClosed:
                pass
            elapsed = time.monotonic() - started
        assert ws.close_code == GOING_AWAY
        assert elapsed < 2, f"closed after {elapsed:.1f} s, not at once (the grace is 30 s)"
        assert await exit_code(gateway) == 0


async def test_a_call_past_the_grace_is_cut_with_unavailable(
    probe_address: str, work_dir: Path, pb: Any, probe_stub: Any
) -> None:
    name = key()
    with own_gateway(probe_address, work_dir, drain_grace=1) as gateway:
        async with opened(gateway, "ServerStream") as call:
            # Holds after its first reply until a Release that never comes.
            await call.request(pb, count=3, key=name, wait_release=True)
            await call.half_close()
            assert (await call.reply(pb)).index == 0
            started = time.monotonic()
            sigterm(gateway)
            answer = await call.finish()
            elapsed = time.monotonic() - started
        assert answer.status == UNAVAILABLE
        assert answer.message == "the gateway is shutting down"
        assert answer.close_code == GOING_AWAY
        assert 0.8 < elapsed < 5, f"cut after {elapsed:.1f} s; the grace is 1 s"
        wait_cancelled(pb, probe_stub, name)
        assert observe(pb, probe_stub, name).finished == 1
        assert await exit_code(gateway) == 0


# Several worker processes: each drains its own sockets ------------------------------------------


def worker_connections(gateway: Gateway) -> dict[int, int]:
    """Established connections to the gateway's HTTP port, per worker process (from /proc)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == gateway.http_port and fields[3] == "01":
                inodes.add(fields[9])
    counts = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) != gateway.process.pid:
                continue
            links = [os.readlink(fd) for fd in (entry / "fd").iterdir()]
        except OSError:
            continue  # gone meanwhile
        counts[int(entry.name)] = sum(link.removeprefix("socket:[").rstrip("]") in inodes for link in links)
    return {pid: count for pid, count in counts.items() if count}


async def both_workers_serving(gateway: Gateway, timeout: float = 30.0) -> None:
    """Until each worker has taken a connection: /readyz answered from one, the other may still start."""
    seen: set[int] = set()
    deadline = time.monotonic() + timeout
    while len(seen) < 2:
        assert time.monotonic() < deadline, f"only worker(s) {seen} took connections within {timeout} s"
        async with connect(ws_url(gateway, "Bidi"), subprotocols=[SUBPROTOCOL], proxy=None, open_timeout=10):
            seen.update(worker_connections(gateway))


async def test_with_two_workers_each_drains_its_own_sockets(probe_address: str, work_dir: Path, pb: Any) -> None:
    config = {
        "upstreams": {"accept.v1.Probe": [probe_address]},
        "cors": {"allowOrigins": [ALLOWED_ORIGIN]},
        "websocket": {"drainGrace": 10},
        "workers": 2,
        "grpcPort": 0,
    }
    with run_gateway(config, work_dir) as gateway:
        await both_workers_serving(gateway)
        async with contextlib.AsyncExitStack() as stack:
            calls: list[Call] = []
            # Until both workers hold calls in flight (the kernel picks the worker of each connection; on
            # a busy machine one worker can take the first dozens while the other is not in accept yet).
            while (len(calls) < 64 and len(worker_connections(gateway)) < 2) or len(calls) < 4:
                call = await stack.enter_async_context(opened(gateway, "Bidi"))
                await call.request(pb, payload=b"before")
                assert (await call.reply(pb)).payload == b"before"
                calls.append(call)
            held = worker_connections(gateway)
            sigterm(gateway)
            # Each worker says when its drain begins (the supervisor relays the SIGTERM to it).
            await asyncio.to_thread(
                wait_until,
                lambda: gateway.process.output().count("WebSockets: draining") == 2,
                what="both workers to start draining",
            )
            answers = []
            for call in calls:
                await call.request(pb, payload=b"during")
                assert (await call.reply(pb)).payload == b"during"
                await call.half_close()
                answers.append(await call.finish())
        assert len(held) == 2, f"the calls all went to one worker: {held}"
        assert [(answer.status, answer.close_code) for answer in answers] == [(OK, GOING_AWAY)] * len(calls)
        assert await exit_code(gateway) == 0
