"""The one call path (gateway/proxy/), as a client sees it on each of the four entry points:
gRPC-Web, native gRPC, grpc-websockets and upf-mux.v1 give the same answer to the same call.

- A request frame whose flag byte is anything but 0 or 1 is refused INTERNAL, as grpc-go refuses it
  ("received unexpected payload format"), instead of reaching a server that drops the message.
- A service that plugins registered but that has no instance able to take a call is UNAVAILABLE,
  naming it (clients retry that); a service no plugin ever provided stays UNIMPLEMENTED.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import struct
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import h2.config
import h2.connection
import h2.events
import httpx
import pytest
from upf.demo.v1 import demo_pb2
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol

from gateway.websocket.mux_frames import FrameType
from tests.gateway.test_registry_routing import Plugin, register
from tests.support.grpcweb import BINARY, parse_response, parse_trailer_block, split_frames
from tests.support.mux_client import MuxClient, frame as mux_frame
from tests.support.processes import Gateway, run_gateway, wait_until
from tests.support.registry_process import run_registry

ENTRY_POINTS = ("grpc-web", "native", "grpc-websockets", "mux")
PROBE = "accept.v1.Probe"
ECHO = "upf.demo.v1.Echo"
OK, INTERNAL, UNIMPLEMENTED, UNAVAILABLE = 0, 13, 12, 14
TIMEOUT = 10.0
# Health checked often, so that a killed instance leaves soon; with time to answer on a busy machine.
HEALTH = {"health": {"interval": 0.2, "timeout": 3, "failuresBeforeUnhealthy": 2, "successesBeforeHealthy": 1}}


def grpc_frame(payload: bytes, flags: int = 0) -> bytes:
    return struct.pack(">BI", flags, len(payload)) + payload


def grpc_web(gateway: Gateway, path: str, body: bytes) -> tuple[int, str]:
    r = httpx.post(f"{gateway.url}{path}", content=body, headers={"content-type": BINARY}, timeout=TIMEOUT)
    answer = parse_response(r.status_code, dict(r.headers), r.content)
    return answer.status, answer.message


def native(gateway: Gateway, path: str, body: bytes) -> tuple[int, str]:
    """One call over a raw HTTP/2 connection: the test writes the frame bytes, flag byte included."""
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
    conn.initiate_connection()
    stream_id = conn.get_next_available_stream_id()
    headers = [
        (b":method", b"POST"),
        (b":scheme", b"http"),
        (b":path", path.encode()),
        (b":authority", b"gateway"),
        (b"content-type", b"application/grpc"),
        (b"te", b"trailers"),
    ]
    conn.send_headers(stream_id, headers)
    conn.send_data(stream_id, body, end_stream=True)
    fields: dict[bytes, bytes] = {}
    with socket.create_connection(("127.0.0.1", gateway.grpc_port), timeout=TIMEOUT) as sock:
        sock.sendall(conn.data_to_send())
        while True:
            chunk = sock.recv(1 << 16)
            assert chunk, "the gateway closed the connection without ending the call"
            for event in conn.receive_data(chunk):
                if isinstance(event, h2.events.ResponseReceived | h2.events.TrailersReceived):
                    fields.update(dict(event.headers))
                elif isinstance(event, h2.events.DataReceived):
                    conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                elif isinstance(event, h2.events.StreamReset):
                    raise AssertionError(f"stream reset with HTTP/2 error code {event.error_code}")
                elif isinstance(event, h2.events.StreamEnded) and event.stream_id == stream_id:
                    return int(fields[b"grpc-status"]), unquote(fields.get(b"grpc-message", b"").decode())
            sock.sendall(conn.data_to_send())


async def _grpc_websockets(gateway: Gateway, path: str, body: bytes) -> tuple[int, str]:
    received = b""
    async with connect(
        f"ws://127.0.0.1:{gateway.http_port}{path}",
        subprotocols=[Subprotocol("grpc-websockets")],
        compression=None,
        proxy=None,
        open_timeout=TIMEOUT,
        close_timeout=TIMEOUT,
    ) as ws:
        with contextlib.suppress(ConnectionClosed):  # a call refused at once may close before we are done
            await ws.send(b"content-type: application/grpc-web+proto\r\n")
            await ws.send(b"\x00" + body)
            await ws.send(b"\x01")
        with contextlib.suppress(ConnectionClosed):
            async with asyncio.timeout(TIMEOUT):
                async for message in ws:
                    assert isinstance(message, bytes)
                    received += message
    trailer = [payload for flags, payload in split_frames(received) if flags == 0x80][-1]
    lines = dict(parse_trailer_block(trailer))
    return int(lines["grpc-status"]), unquote(lines.get("grpc-message", ""))


async def _mux(gateway: Gateway, path: str, body: bytes) -> tuple[int, str]:
    service, _, method = path[1:].partition("/")
    async with MuxClient.connect(f"ws://127.0.0.1:{gateway.http_port}/api/mux") as client:
        stream_id = await client.open(method, service=service)
        await client.send(mux_frame(FrameType.DATA, stream_id, body), mux_frame(FrameType.HALF_CLOSE, stream_id))
        result = await client.result(stream_id)
    return result.status, result.message


def call(entry: str, gateway: Gateway, path: str, body: bytes) -> tuple[int, str]:
    if entry == "grpc-web":
        return grpc_web(gateway, path, body)
    if entry == "native":
        return native(gateway, path, body)
    if entry == "grpc-websockets":
        return asyncio.run(_grpc_websockets(gateway, path, body))
    return asyncio.run(_mux(gateway, path, body))


@pytest.fixture(scope="module")
def routed(probe_address: str, work_dir: Path) -> Iterator[tuple[Gateway, Plugin]]:
    """A gateway with the probe as a static upstream, and a registry where a plugin provides ECHO."""
    plugin = Plugin(work_dir)
    with ExitStack() as stack:
        registry = stack.enter_context(run_registry(HEALTH, work_dir))
        plugin.start()
        stack.callback(plugin.stop)
        register(registry, plugin, "echo-1")
        config: dict[str, Any] = {
            "registryUrl": registry.target,
            "routeRefreshInterval": 1,
            "upstreams": {PROBE: [probe_address]},
        }
        gateway = stack.enter_context(run_gateway(config, work_dir))
        yield gateway, plugin


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_a_frame_with_reserved_flag_bits_is_refused_as_grpc_go_refuses_it(
    routed: tuple[Gateway, Plugin], pb: Any, entry: str
) -> None:
    gateway, _plugin = routed
    request = pb.CallRequest(payload=b"hello").SerializeToString()
    assert call(entry, gateway, f"/{PROBE}/Unary", grpc_frame(request))[0] == OK
    # 0x1e: reserved bits only. A server reading the low bit alone took it for a message, and the
    # call went on without it.
    status, message = call(entry, gateway, f"/{PROBE}/Unary", grpc_frame(request, flags=0x1E))
    assert (status, message) == (
        INTERNAL,
        "request frame has the flag byte 0x1e; a message frame's is 0x00, or 0x01 when compressed",
    )


def test_a_registered_service_without_instances_is_unavailable_on_every_entry_point(
    routed: tuple[Gateway, Plugin],
) -> None:
    gateway, plugin = routed
    say = grpc_frame(demo_pb2.SayRequest(text="hi").SerializeToString())
    wait_until(lambda: call("grpc-web", gateway, f"/{ECHO}/Say", say)[0] == OK, what="the plugin to be routed")
    unknown = "unknown service nope.v1.Missing: no upstream serves it"
    for entry in ENTRY_POINTS:
        assert call(entry, gateway, "/nope.v1.Missing/Call", say) == (UNIMPLEMENTED, unknown), entry

    plugin.stop(signal.SIGKILL)  # the registry marks its only instance unhealthy after two checks
    gone = (UNAVAILABLE, f"{ECHO} is unavailable: no instance of it can take calls now (down, draining or unhealthy)")
    wait_until(lambda: call("grpc-web", gateway, f"/{ECHO}/Say", say) == gone, what="the instance to leave")
    for entry in ENTRY_POINTS:
        assert call(entry, gateway, f"/{ECHO}/Say", say) == gone, entry
        # A service that no plugin ever provided is still not there at all.
        assert call(entry, gateway, "/nope.v1.Missing/Call", say) == (UNIMPLEMENTED, unknown), entry
