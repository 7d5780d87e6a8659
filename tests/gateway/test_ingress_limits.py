"""Connection caps on the native gRPC port, against a real `upf gateway` and raw sockets: the same
`edge` settings as the HTTP port, counted together with its connections (gateway/edge/guard.py).

Loopback has a whole /8, so each test's clients come from addresses of their own (127.0.x.y)."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from typing import Any

import h2.config
import h2.connection
import h2.events
import pytest
from upf.demo.v1 import demo_pb2

from tests.gateway.test_registry_routing import Plugin
from tests.support.h2server import grpc_frame
from tests.support.processes import Gateway, run_gateway, wait_until

OK, RESOURCE_EXHAUSTED = 0, 8
PER_CLIENT, TOTAL = 3, 8
EDGE: dict[str, Any] = {"maxConnections": TOTAL, "maxConnectionsPerClient": PER_CLIENT}


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, Plugin]]:
    work_dir = tmp_path_factory.mktemp("ingress-limits")
    plugin = Plugin(work_dir)
    plugin.start()
    try:
        config = {"edge": EDGE, "shell": {"enabled": False}, "upstreams": {"upf.demo.v1.Echo": [plugin.endpoint]}}
        with run_gateway(config, work_dir) as running:
            yield running, plugin
    finally:
        plugin.stop()


def grpc_say(port: int, source: str, text: str = "hi") -> tuple[int, str] | None:
    """One Say over a new h2c connection from `source`: (grpc-status, message or reply text), or None
    when the gateway closes the connection without answering."""
    with socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0)) as sock:
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
        conn.initiate_connection()
        stream_id = conn.get_next_available_stream_id()
        headers = [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", "/upf.demo.v1.Echo/Say"),
            (":authority", "gateway"),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
        ]
        conn.send_headers(stream_id, headers)
        conn.send_data(stream_id, grpc_frame(demo_pb2.SayRequest(text=text).SerializeToString()), end_stream=True)
        answered: dict[str, str] = {}
        body = b""
        try:
            sock.sendall(conn.data_to_send())
            while data := sock.recv(65536):
                for event in conn.receive_data(data):
                    if isinstance(event, h2.events.ResponseReceived | h2.events.TrailersReceived):
                        answered.update(dict(event.headers))  # type: ignore[arg-type]
                    elif isinstance(event, h2.events.DataReceived):
                        body += event.data
                        conn.acknowledge_received_data(event.flow_controlled_length, stream_id)
                    elif isinstance(event, h2.events.StreamEnded):
                        status = int(answered["grpc-status"])
                        if status != OK:
                            return status, answered.get("grpc-message", "")
                        return OK, demo_pb2.SayResponse.FromString(body[5:]).text
                sock.sendall(conn.data_to_send())
        except (ConnectionResetError, BrokenPipeError):
            pass
        return None


@contextlib.contextmanager
def held(port: int, source: str, *, http: bool = False) -> Iterator[socket.socket]:
    """A connection the gateway has accepted and holds: h2c whose SETTINGS came back, or on the HTTP
    port, a request begun."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0))
    try:
        if http:
            sock.sendall(b"G")
        else:
            conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
            conn.initiate_connection()
            sock.sendall(conn.data_to_send())
            assert sock.recv(65536), "the gateway did not answer the connection preface"
        yield sock
    finally:
        sock.close()


TOO_MANY = (RESOURCE_EXHAUSTED, "too many connections from this address")


def http_status(port: int, source: str) -> int:
    with socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0)) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nhost: gateway\r\nconnection: close\r\n\r\n")
        return int(sock.recv(65536).split(b" ", 2)[1])


def test_one_address_cannot_hold_more_than_its_share_of_native_grpc_connections(
    gateway: tuple[Gateway, Plugin],
) -> None:
    running, plugin = gateway
    port = running.grpc_port
    assert grpc_say(port, "127.0.3.1") == (OK, f"hi @{plugin.port}")
    with contextlib.ExitStack() as stack:
        for _ in range(PER_CLIENT):
            stack.enter_context(held(port, "127.0.3.1"))
        assert grpc_say(port, "127.0.3.1") == TOO_MANY
        assert grpc_say(port, "127.0.3.2") == (OK, f"hi @{plugin.port}")  # another address is not affected
    # Once they are closed, the address gets its share back.
    wait_until(lambda: grpc_say(port, "127.0.3.1") == (OK, f"hi @{plugin.port}"), what="the share to come back")


def test_connections_on_the_http_port_count_in_the_same_share(gateway: tuple[Gateway, Plugin]) -> None:
    running, plugin = gateway
    with contextlib.ExitStack() as stack:
        for _ in range(PER_CLIENT):
            stack.enter_context(held(running.http_port, "127.0.4.1", http=True))
        # Accepted in order: once a fourth HTTP connection is refused, the three are held.
        wait_until(lambda: http_status(running.http_port, "127.0.4.1") == 429, what="the share to be held")
        assert grpc_say(running.grpc_port, "127.0.4.1") == TOO_MANY
    wait_until(
        lambda: grpc_say(running.grpc_port, "127.0.4.1") == (OK, f"hi @{plugin.port}"), what="the share to come back"
    )


def test_beyond_max_connections_a_new_native_grpc_connection_is_closed_at_once(
    gateway: tuple[Gateway, Plugin],
) -> None:
    running, plugin = gateway
    port = running.grpc_port
    with contextlib.ExitStack() as stack:
        for i in range(TOTAL):
            stack.enter_context(held(port, f"127.0.5.{i // PER_CLIENT + 1}"))
        assert grpc_say(port, "127.0.6.1") is None
    wait_until(lambda: grpc_say(port, "127.0.6.1") == (OK, f"hi @{plugin.port}"), what="connections accepted again")
