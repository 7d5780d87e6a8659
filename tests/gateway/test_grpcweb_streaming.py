"""Server streaming and connection handling through the gRPC-Web endpoint (research section 4, R1-R5).

Choices pinned here:

- R1 every response frame is flushed as the upstream produces it: nothing between the endpoint and
  the socket buffers (no compression middleware; `accept-encoding: gzip` is ignored for gRPC-Web).
- R2 a client that goes away cancels the upstream call: the endpoint watches the ASGI receive
  channel for `http.disconnect` once the request body is read, during unary waits and streams alike.
- R3 the gateway has no idle or write timeout of its own on a response: an idle stream stays open
  until the backend speaks again. uvicorn's `timeout_keep_alive` (75 s) applies between requests on
  a kept-alive connection, not during a response. There is no heartbeat: gRPC-Web has no in-band
  ping, so a proxy in front with an idle timeout shorter than the backend's silences cuts the
  stream; that is for the deployment (or a backend-level heartbeat message) to handle. A > 60 s
  idle test is too slow for the suite, so a ~3 s idle period checks that no gateway timer fires.
- R4 a server stream with no message and no response metadata is trailers-only (status in the
  headers, empty body, no empty trailer frame); with response metadata it is headers plus one
  trailer frame.
- R5 sequential calls on one kept-alive HTTP/1.1 connection leak nothing: not file descriptors,
  not threads, not upstream calls.
"""

from __future__ import annotations

import base64
import os
import select
import socket
import struct
from collections.abc import Iterator
from typing import Any

import h11
import httpx
import pytest

from tests.support.grpcweb import BINARY, TEXT, frame, new_key, parse_response, parse_trailer_block
from tests.support.processes import Gateway, wait_until

TRAILER = 0x80


def observe(pb: Any, probe_stub: Any, key: str) -> Any:
    return probe_stub.Observe(pb.Key(key=key), timeout=5)


class FrameReader:
    """Takes frames off a response body as its chunks arrive (text bodies decoded 4 characters at a time)."""

    def __init__(self, chunks: Iterator[bytes], *, text: bool = False) -> None:
        self._chunks = chunks
        self._text = text
        self._pending = b""
        self._buffer = b""

    def _more(self) -> bool:
        chunk = next(self._chunks, None)
        if chunk is None:
            return False
        if self._text:
            data = self._pending + chunk
            usable = len(data) - len(data) % 4
            self._pending = data[usable:]
            chunk = b"".join(base64.b64decode(data[i : i + 4]) for i in range(0, usable, 4))
        self._buffer += chunk
        return True

    def next_frame(self) -> tuple[int, bytes]:
        while True:
            if len(self._buffer) >= 5:
                flags, length = struct.unpack_from(">BI", self._buffer)
                if len(self._buffer) >= 5 + length:
                    payload = self._buffer[5 : 5 + length]
                    self._buffer = self._buffer[5 + length :]
                    return flags, payload
            assert self._more(), f"body ended inside a frame: {self._buffer!r}"

    def assert_at_end(self) -> None:
        assert not self._more(), "bytes after the trailer frame"
        assert not self._buffer, "bytes after the trailer frame"
        assert not self._pending, "bytes after the trailer frame"


# R1 -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["binary", "text"])
def test_r1_each_message_reaches_the_client_before_the_next_is_produced(
    gateway: Gateway, pb: Any, probe_stub: Any, mode: str
) -> None:
    key = new_key()
    text = mode == "text"
    body = frame(pb.CallRequest(key=key, count=3, wait_release=True, payload=b"m").SerializeToString())
    headers = {"content-type": TEXT if text else BINARY, "accept-encoding": "gzip"}
    # The read timeout bounds each wait: a buffered message would never arrive before the next Release.
    with (
        httpx.Client(timeout=httpx.Timeout(5.0)) as client,
        client.stream(
            "POST",
            f"{gateway.url}/accept.v1.Probe/ServerStream",
            content=base64.b64encode(body) if text else body,
            headers=headers,
        ) as response,
    ):
        assert response.status_code == 200
        assert "content-encoding" not in response.headers
        reader = FrameReader(response.iter_raw(), text=text)
        for index in range(3):
            flags, payload = reader.next_frame()
            assert flags == 0
            assert pb.CallReply.FromString(payload).index == index
            # The probe is still waiting for its Release: message `index + 1` does not exist yet.
            assert observe(pb, probe_stub, key).finished == 0
            probe_stub.Release(pb.Key(key=key), timeout=5)
        flags, block = reader.next_frame()
        assert flags == TRAILER
        assert dict(parse_trailer_block(block))["grpc-status"] == "0"
        reader.assert_at_end()


@pytest.mark.parametrize("mode", ["binary", "text"])
@pytest.mark.parametrize("method", ["Unary", "ServerStream"])
def test_r1_response_headers_reach_the_client_before_the_first_message_exists(
    gateway: Gateway, pb: Any, probe_stub: Any, method: str, mode: str
) -> None:
    # The server sends its headers, then waits for a Release before any reply: a direct gRPC client
    # sees the headers now, and so must a gRPC-Web client (a stream that answers minutes later).
    key = new_key()
    text = mode == "text"
    request = pb.CallRequest(key=key, count=1, headers={"x-early": "yes"}, wait_release_first=True, payload=b"m")
    body = frame(request.SerializeToString())
    with (
        httpx.Client(timeout=httpx.Timeout(5.0)) as client,
        client.stream(
            "POST",
            f"{gateway.url}/accept.v1.Probe/{method}",
            content=base64.b64encode(body) if text else body,
            headers={"content-type": TEXT if text else BINARY},
        ) as response,
    ):
        # client.stream returns once the response head is in; the probe has not replied yet.
        assert response.status_code == 200
        assert response.headers["x-early"] == "yes"
        assert response.headers["content-type"] == ("application/grpc-web-text+proto" if text else BINARY)
        assert "grpc-status" not in response.headers
        assert observe(pb, probe_stub, key).finished == 0
        probe_stub.Release(pb.Key(key=key), timeout=5)
        reader = FrameReader(response.iter_raw(), text=text)
        flags, payload = reader.next_frame()
        assert (flags, pb.CallReply.FromString(payload).payload) == (0, b"m")
        flags, block = reader.next_frame()
        assert flags == TRAILER
        assert dict(parse_trailer_block(block))["grpc-status"] == "0"
        reader.assert_at_end()


def test_r1_a_unary_answer_that_is_all_there_goes_out_in_one_piece(gateway: Gateway, pb: Any) -> None:
    # The usual unary answer: headers, message and status in one burst from the server.
    body = frame(pb.CallRequest(trailers={"x-trail": "t"}, payload=b"m").SerializeToString())
    r = httpx.post(f"{gateway.url}/accept.v1.Probe/Unary", content=body, headers={"content-type": BINARY})
    assert r.headers["content-length"] == str(len(r.content))  # not chunked
    response = parse_response(r.status_code, dict(r.headers), r.content)
    assert (pb.CallReply.FromString(response.messages[0]).payload, response.trailer("x-trail")) == (b"m", "t")


# R2 -----------------------------------------------------------------------------------------------


def test_r2_client_leaving_mid_stream_cancels_the_upstream_call(gateway: Gateway, pb: Any, probe_stub: Any) -> None:
    key = new_key()
    body = frame(pb.CallRequest(key=key, count=3, wait_release=True).SerializeToString())
    with (
        httpx.Client(timeout=httpx.Timeout(5.0)) as client,
        client.stream(
            "POST", f"{gateway.url}/accept.v1.Probe/ServerStream", content=body, headers={"content-type": BINARY}
        ) as response,
    ):
        flags, _payload = FrameReader(response.iter_raw()).next_frame()
        assert flags == 0
    # The response was not read to its end, so httpx closed the connection. Without a Release the
    # probe's stream can only end by being torn down. (It does not always count as `cancelled`:
    # when the cancellation lands while a reply is being written, grpc.aio closes the handler at its
    # `yield` instead of raising CancelledError in it.)
    observation = wait_until(
        lambda: (o := observe(pb, probe_stub, key)).finished and o,
        timeout=5.0,
        what="the probe's stream to be torn down",
    )
    assert (observation.started, observation.finished) == (1, 1)


def test_r2_client_leaving_during_a_unary_wait_cancels_the_upstream_call(
    gateway: Gateway, pb: Any, probe_stub: Any
) -> None:
    key = new_key()
    body = frame(pb.CallRequest(key=key, sleep_ms=30_000).SerializeToString())
    with socket.create_connection(("127.0.0.1", gateway.http_port), timeout=5) as sock:
        sock.sendall(
            b"POST /accept.v1.Probe/Unary HTTP/1.1\r\nhost: gateway\r\ncontent-type: application/grpc-web+proto\r\n"
            + f"content-length: {len(body)}\r\n\r\n".encode()
            + body
        )
        wait_until(lambda: observe(pb, probe_stub, key).started, timeout=5.0, what="the probe to start the call")
    observation = wait_until(
        lambda: (o := observe(pb, probe_stub, key)).cancelled and o,
        timeout=5.0,
        what="the probe to see its call cancelled",
    )
    assert (observation.started, observation.cancelled, observation.finished) == (1, 1, 1)


# R3 -----------------------------------------------------------------------------------------------


class RawExchange:
    """One HTTP/1.1 request on a plain socket, so a test can tell "no data yet" from "connection closed"."""

    def __init__(self, gateway: Gateway, path: str, body: bytes) -> None:
        self.sock = socket.create_connection(("127.0.0.1", gateway.http_port), timeout=5)
        self.conn = h11.Connection(h11.CLIENT)
        headers = [("host", "gateway"), ("content-type", BINARY), ("content-length", str(len(body)))]
        self.sock.sendall(
            self.conn.send(h11.Request(method="POST", target=path, headers=headers))
            + self.conn.send(h11.Data(data=body))
            + self.conn.send(h11.EndOfMessage())
        )

    def next_event(self) -> Any:
        while True:
            event = self.conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            self.conn.receive_data(self.sock.recv(65536))

    def body_chunks(self) -> Iterator[bytes]:
        while isinstance(event := self.next_event(), h11.Data):
            yield bytes(event.data)
        assert isinstance(event, h11.EndOfMessage), event

    def silent_for(self, seconds: float) -> bool:
        """True when the socket stays unreadable (no byte, no close) for `seconds`."""
        readable, _, _ = select.select([self.sock], [], [], seconds)
        return not readable

    def close(self) -> None:
        self.sock.close()


def test_r3_gateway_applies_no_idle_timeout_to_a_quiet_stream(gateway: Gateway, pb: Any, probe_stub: Any) -> None:
    key = new_key()
    body = frame(pb.CallRequest(key=key, count=2, wait_release=True).SerializeToString())
    exchange = RawExchange(gateway, "/accept.v1.Probe/ServerStream", body)
    try:
        response = exchange.next_event()
        assert isinstance(response, h11.Response)
        assert response.status_code == 200
        reader = FrameReader(exchange.body_chunks())
        assert reader.next_frame()[0] == 0
        # The stream is idle: the probe waits for its Release. The gateway must neither close the
        # connection nor send anything meanwhile.
        assert exchange.silent_for(3.0), "the gateway closed or wrote to an idle stream"
        probe_stub.Release(pb.Key(key=key), timeout=5)
        flags, payload = reader.next_frame()
        assert (flags, pb.CallReply.FromString(payload).index) == (0, 1)
        probe_stub.Release(pb.Key(key=key), timeout=5)
        flags, block = reader.next_frame()
        assert flags == TRAILER
        assert dict(parse_trailer_block(block))["grpc-status"] == "0"
        reader.assert_at_end()
    finally:
        exchange.close()


# R4 -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["binary", "text"])
def test_r4_stream_without_messages_is_trailers_only(gateway: Gateway, pb: Any, mode: str) -> None:
    text = mode == "text"
    body = frame(pb.CallRequest(count=0, trailers={"x-trail": "t"}).SerializeToString())
    r = httpx.post(
        f"{gateway.url}/accept.v1.Probe/ServerStream",
        content=base64.b64encode(body) if text else body,
        headers={"content-type": TEXT if text else BINARY},
    )
    assert r.status_code == 200
    assert r.content == b""  # in particular no empty trailer frame 80 00 00 00 00
    assert r.headers["content-type"] == ("application/grpc-web-text+proto" if text else BINARY)
    assert r.headers["grpc-status"] == "0"
    assert r.headers["x-trail"] == "t"


def test_r4_stream_without_messages_but_with_headers_is_headers_and_a_trailer_frame(gateway: Gateway, pb: Any) -> None:
    body = frame(pb.CallRequest(count=0, headers={"x-head": "h"}, trailers={"x-trail": "t"}).SerializeToString())
    r = httpx.post(f"{gateway.url}/accept.v1.Probe/ServerStream", content=body, headers={"content-type": BINARY})
    response = parse_response(r.status_code, dict(r.headers), r.content)
    assert not response.trailers_only
    assert response.messages == []
    assert response.headers["x-head"] == "h"
    assert "grpc-status" not in response.headers
    assert response.status == 0
    assert response.trailer("x-trail") == "t"


# R5 -----------------------------------------------------------------------------------------------


def _open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _threads(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        return int(next(line for line in status if line.startswith("Threads:")).split()[1])


def test_r5_a_thousand_calls_on_one_connection_leak_nothing(gateway: Gateway, pb: Any, probe_stub: Any) -> None:
    key = new_key()
    pid = gateway.process.pid
    url = f"{gateway.url}/accept.v1.Probe/Unary"
    headers = {"content-type": BINARY}
    ports = set()
    with httpx.Client(timeout=10.0) as client:

        def unary(index: int) -> None:
            payload = str(index).encode()
            body = frame(pb.CallRequest(key=key, payload=payload).SerializeToString())
            r = client.post(url, content=body, headers=headers)
            response = parse_response(r.status_code, dict(r.headers), r.content)
            assert response.status == 0, response.message
            assert pb.CallReply.FromString(response.messages[0]).payload == payload
            ports.add(r.extensions["network_stream"].get_extra_info("client_addr")[1])

        for index in range(20):  # warm up: the connection and the upstream channel exist from here on
            unary(index)
        fds, threads = _open_fds(pid), _threads(pid)
        for index in range(20, 1020):
            unary(index)
        assert len(ports) == 1, "the calls did not share one kept-alive connection"
        assert _open_fds(pid) <= fds + 3
        assert _threads(pid) <= threads + 2
    observation = observe(pb, probe_stub, key)
    assert (observation.started, observation.finished, observation.cancelled) == (1020, 1020, 0)
