"""Limits on the HTTP edge, against a real `upf gateway` and raw sockets (gateway/edge/).

What a client can make the gateway hold by sending much or slowly: a huge or crowded request head
is refused (414 / 431), a head or body dribbled byte by byte is cut off, and connections and
WebSockets are counted per client address, so one address cannot take every socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from tests.support.processes import Gateway, run_gateway, wait_until

EDGE: dict[str, Any] = {
    "maxRequestLineBytes": 1024,
    "maxHeaderBytes": 2048,
    "maxHeaders": 20,
    "maxHeaderBlockBytes": 8192,
    "headerTimeout": 1.0,
    "bodyTimeout": 1.0,
    "bodyMinRate": 100,
    "maxConnections": 40,
    "maxConnectionsPerClient": 6,
    "maxWebsocketsPerClient": 2,
}


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    work_dir = tmp_path_factory.mktemp("edge")
    with run_gateway(
        {"edge": EDGE, "shell": {"enabled": False}, "events": {"enabled": True, "publish": True}}, work_dir
    ) as running:
        yield running


@contextlib.contextmanager
def raw(gateway: Gateway, source: str = "127.0.0.1") -> Iterator[socket.socket]:
    sock = socket.create_connection(("127.0.0.1", gateway.http_port), timeout=10, source_address=(source, 0))
    try:
        yield sock
    finally:
        sock.close()


def answer(sock: socket.socket) -> bytes:
    """Everything the gateway sends until it closes the connection (a reset counts as closed)."""
    chunks = []
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def status_of(data: bytes) -> int:
    return int(data.split(b" ", 2)[1])


def request(headers: str = "", target: str = "/healthz") -> bytes:
    return f"GET {target} HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n{headers}\r\n".encode()


def healthy(gateway: Gateway) -> bool:
    return httpx.get(f"{gateway.url}/healthz", timeout=5).status_code == 200


# The request head --------------------------------------------------------------------------------


def test_a_plain_request_passes(gateway: Gateway) -> None:
    with raw(gateway) as sock:
        sock.sendall(request("X-Small: yes\r\n"))
        assert status_of(answer(sock)) == 200


@pytest.mark.parametrize(
    ("head", "status"),
    [
        (request(target="/healthz?" + "a" * 2000), 414),  # request line
        (request("Authorization: Bearer " + "x" * 4000 + "\r\n"), 431),  # one header
        (request("".join(f"X-H{i}: {i}\r\n" for i in range(30))), 431),  # header count
        (request("".join(f"X-H{i}: {'v' * 1500}\r\n" for i in range(7))), 431),  # the whole block
    ],
    ids=["request-line", "one-header", "header-count", "header-block"],
)
def test_an_oversized_head_is_refused(gateway: Gateway, head: bytes, status: int) -> None:
    with raw(gateway) as sock:
        sock.sendall(head)
        data = answer(sock)
    assert status_of(data) == status
    assert b"connection: close" in data.lower()
    assert healthy(gateway)


def test_a_megabyte_header_is_refused_before_it_is_all_read(gateway: Gateway) -> None:
    with raw(gateway) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer ")
        sent = 0
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            for _ in range(16):  # 1 MiB, unless the gateway cuts it short
                sock.sendall(b"x" * 65536)
                sent += 65536
        data = answer(sock)
    assert status_of(data) == 431


# Slow clients ------------------------------------------------------------------------------------


def test_a_head_dribbled_byte_by_byte_is_cut_off_408(gateway: Gateway) -> None:
    with raw(gateway) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: gw\r\nX-Slow: ")
        started = time.monotonic()
        sock.settimeout(0.2)
        data = b""
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            while time.monotonic() - started < 10 and not data:
                sock.sendall(b"a")  # one byte every 0.2 s keeps it alive without a timeout per read
                with contextlib.suppress(TimeoutError):
                    data = sock.recv(65536)
        elapsed = time.monotonic() - started
    assert status_of(data) == 408
    assert 0.8 < elapsed < 5


def test_a_connection_that_sends_nothing_is_closed(gateway: Gateway) -> None:
    with raw(gateway) as sock:
        started = time.monotonic()
        assert answer(sock) == b""
        assert 0.8 < time.monotonic() - started < 5


def test_a_body_dribbled_slower_than_the_minimum_rate_is_cut_off(gateway: Gateway) -> None:
    with raw(gateway) as sock:
        sock.sendall(b"POST /api/events/edge.slow HTTP/1.1\r\nHost: gw\r\ncontent-length: 5000\r\n\r\n")
        started = time.monotonic()
        sock.settimeout(0.3)
        closed = False
        while time.monotonic() - started < 15 and not closed:
            try:
                sock.sendall(b"\x00")  # ~3 bytes/s against a minimum of 100
                closed = sock.recv(65536) == b""
            except TimeoutError:
                continue
            except (BrokenPipeError, ConnectionResetError):
                closed = True
        elapsed = time.monotonic() - started
    assert closed
    assert 0.8 < elapsed < 6


def test_a_body_sent_slowly_but_steadily_is_served(gateway: Gateway) -> None:
    with raw(gateway) as sock:
        sock.sendall(b"POST /api/events/edge.steady HTTP/1.1\r\nHost: gw\r\ncontent-length: 600\r\n\r\n")
        for _ in range(6):  # 600 bytes in 1.5 s: past bodyTimeout, but above the minimum rate
            sock.sendall(b"x" * 100)
            time.sleep(0.25)
        sock.sendall(b"")
        data = sock.recv(65536)
    assert status_of(data) == 200


# Connections and WebSockets per client -----------------------------------------------------------


def test_one_address_cannot_hold_more_than_its_share(gateway: Gateway) -> None:
    with contextlib.ExitStack() as stack:
        held = [stack.enter_context(raw(gateway, "127.0.0.2")) for _ in range(EDGE["maxConnectionsPerClient"])]
        for sock in held:
            sock.sendall(b"G")  # a request begun: the connection is the gateway's to count
        wait_until(lambda: _refused_with_429(gateway, "127.0.0.2"), what="the 7th connection to be refused 429")
        # A gRPC-Web client is told as the rate limiter tells it: trailers-only RESOURCE_EXHAUSTED.
        with raw(gateway, "127.0.0.2") as grpc_web:
            grpc_web.sendall(request("content-type: application/grpc-web+proto\r\n", "/echo.v1.Echo/Say"))
            refused = answer(grpc_web)
        assert status_of(refused) == 200
        assert b"grpc-status: 8\r\n" in refused
        assert b"content-type: application/grpc-web+proto\r\n" in refused
        # Another address is not affected.
        with raw(gateway, "127.0.0.3") as other:
            other.sendall(request())
            assert status_of(answer(other)) == 200
    # Once they are closed, the address gets its share back.
    wait_until(lambda: _answered(gateway, "127.0.0.2") == 200, what="the address's share to come back")


def _refused_with_429(gateway: Gateway, source: str) -> bool:
    return _answered(gateway, source) == 429


def _answered(gateway: Gateway, source: str) -> int:
    with raw(gateway, source) as sock:
        sock.sendall(request())
        return status_of(answer(sock))


def test_beyond_max_connections_new_connections_are_closed_at_once(gateway: Gateway) -> None:
    total = EDGE["maxConnections"]
    per_client = EDGE["maxConnectionsPerClient"]
    with contextlib.ExitStack() as stack:
        for i in range(total):
            stack.enter_context(raw(gateway, f"127.0.1.{i // per_client + 1}")).sendall(b"G")
        wait_until(lambda: _closed_at_once(gateway), what="a connection beyond maxConnections to be closed")
    wait_until(lambda: _answered(gateway, "127.0.2.1") == 200, what="connections to be accepted again")


def _closed_at_once(gateway: Gateway) -> bool:
    with raw(gateway, "127.0.2.1") as sock:
        sock.settimeout(0.5)
        try:
            return sock.recv(100) == b""
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False


async def test_websockets_per_client_are_capped(gateway: Gateway) -> None:
    url = f"ws://127.0.0.1:{gateway.http_port}/api/mux"
    async with contextlib.AsyncExitStack() as stack:
        for _ in range(EDGE["maxWebsocketsPerClient"]):
            await stack.enter_async_context(connect(url, subprotocols=["upf-mux.v1"]))  # type: ignore[list-item]
        with pytest.raises(InvalidStatus) as refused:
            async with connect(url, subprotocols=["upf-mux.v1"]):  # type: ignore[list-item]
                pass
        assert refused.value.response.status_code == 429
    # Closed sockets give their places back.
    deadline = time.monotonic() + 5
    while True:
        try:
            async with connect(url, subprotocols=["upf-mux.v1"]):  # type: ignore[list-item]
                break
        except InvalidStatus:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)
