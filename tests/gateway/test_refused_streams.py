"""Transparent retries of calls a replica refused before processing them, with real processes: a
gateway with two static replicas of upf.demo.v1.Echo, none of whose methods is idempotent (no
manifest says so). A stream the replica refused (RST_STREAM REFUSED_STREAM, or a GOAWAY whose last
stream id is below the call's) was never processed (RFC 9113 8.7): the call goes to the other replica
whatever its idempotency, as gRPC's own transparent retry does."""

from __future__ import annotations

import asyncio
import signal
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import grpc
import httpx
import pytest
from upf.demo.v1 import demo_pb2, demo_pb2_grpc

from tests.gateway.test_registry_routing import Plugin
from tests.gateway.test_retries import CountLoad, count
from tests.support.grpcweb import BINARY, frame, parse_response
from tests.support.h2server import H2Server, Request, ServerConnection
from tests.support.processes import Gateway, run_gateway, wait_until

SERVICE = "upf.demo.v1.Echo"
OK, CANCELLED = 0, 1
REFUSED_STREAM = 0x7


def static_gateway(*endpoints: str) -> dict[str, object]:
    return {
        "upstreams": {SERVICE: list(endpoints)},
        "loadBalancing": "round_robin",
        # The breaker would soon stop picking a replica that refuses everything: only the retries
        # decide what the client sees here.
        "circuitBreaker": {"failureThreshold": 100_000},
    }


@contextmanager
def refusing_peer(how: str) -> Iterator[H2Server]:
    """A hand-written HTTP/2 server, on its own thread, that processes no call: it refuses each
    stream with RST_STREAM REFUSED_STREAM, or with a GOAWAY whose last stream id is below it."""

    async def refuse(conn: ServerConnection, request: Request) -> None:
        if how == "refused-stream":
            conn.conn.reset_stream(request.stream_id, REFUSED_STREAM)
        else:
            conn.conn.close_connection(last_stream_id=request.stream_id - 1)
        conn.flush()
        if how == "goaway" and conn.transport is not None:
            conn.transport.close()  # a server going away closes the connection once it has said so

    server = H2Server(refuse)
    started = threading.Event()
    loop = asyncio.new_event_loop()

    async def serve(stop: asyncio.Event) -> None:
        async with server.running():
            started.set()
            await stop.wait()

    stop = asyncio.Event()
    thread = threading.Thread(target=loop.run_until_complete, args=(serve(stop),))
    thread.start()
    try:
        assert started.wait(10), "the peer did not start"
        yield server
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join()
        loop.close()


def say(client: httpx.Client, gateway: Gateway, text: str) -> tuple[int, str]:
    body = frame(demo_pb2.SayRequest(text=text).SerializeToString())
    r = client.post(f"{gateway.url}/{SERVICE}/Say", content=body, headers={"content-type": BINARY})
    answer = parse_response(r.status_code, dict(r.headers), r.content)
    if answer.status != OK:
        return answer.status, answer.message
    return OK, demo_pb2.SayResponse.FromString(answer.messages[0]).text


def connect_say(client: httpx.Client, gateway: Gateway, text: str) -> tuple[int, str]:
    body = demo_pb2.SayRequest(text=text).SerializeToString()
    r = client.post(f"{gateway.url}/{SERVICE}/Say", content=body, headers={"content-type": "application/proto"})
    if r.status_code != 200:
        return r.status_code, r.text
    return OK, demo_pb2.SayResponse.FromString(r.content).text


@pytest.mark.parametrize("how", ["refused-stream", "goaway"])
def test_a_call_the_replica_refused_unprocessed_goes_to_the_other_one_whatever_the_method(
    work_dir: Path, how: str
) -> None:
    plugin = Plugin(work_dir)
    with ExitStack() as stack, httpx.Client(timeout=10) as client:
        peer = stack.enter_context(refusing_peer(how))
        plugin.start()
        stack.callback(plugin.stop)
        gateway = stack.enter_context(run_gateway(static_gateway(peer.address, plugin.endpoint), work_dir))
        tag = f"@{plugin.port}"
        answers = [say(client, gateway, f"web{n}") for n in range(20)]
        answers += [connect_say(client, gateway, f"connect{n}") for n in range(20)]
        with grpc.insecure_channel(gateway.grpc_target) as channel:
            stub = demo_pb2_grpc.EchoStub(channel)
            answers += [(OK, stub.Say(demo_pb2.SayRequest(text=f"native{n}"), timeout=5).text) for n in range(20)]
            counted = [list(stub.Count(demo_pb2.CountRequest(count=2), timeout=5)) for _ in range(10)]
        assert all(len(replies) == 2 for replies in counted)  # a server stream, over native gRPC
        expected = [f"{kind}{n} {tag}" for kind in ("web", "connect", "native") for n in range(20)]
        assert answers == [(OK, text) for text in expected]
        assert Counter(count(client, gateway) for _ in range(20)) == {OK: 20}  # a server stream
        # Round robin sent about half of the calls to the peer first: each was refused, then retried.
        assert len(peer.seen) >= 30


def test_a_gracefully_stopped_replica_fails_no_call_it_refused_under_non_idempotent_load(work_dir: Path) -> None:
    """grpcio's server.stop(grace): GOAWAY, the streams that cross it refused, then its listener gone
    (connections refused). None of that fails a call while the other replica lives.

    What can fail is not a refusal: grpc's core cancels, as its stop begins and sometimes ahead of
    its GOAWAY, the calls it had received but not yet handed to the application, and answers them
    CANCELLED with no headers, exactly as it answers a call cancelled while its handler ran. No
    client can tell the two apart, so the gateway does not send them elsewhere (a non-idempotent
    call could run twice), and gRPC clients see the same. At most one per calling thread (each has
    one call in flight): they are counted, not hidden."""
    staying, leaving = Plugin(work_dir), Plugin(work_dir, "--grace", "5")
    threads = 6
    with ExitStack() as stack, httpx.Client(timeout=10) as client:
        for plugin in (staying, leaving):
            plugin.start()
            stack.callback(plugin.stop)
        gateway = stack.enter_context(run_gateway(static_gateway(staying.endpoint, leaving.endpoint), work_dir))
        tags = {f"@{staying.port}", f"@{leaving.port}"}
        wait_until(lambda: {say(client, gateway, "x")[1].split()[-1] for _ in range(8)} == tags, what="both")
        load = stack.enter_context(CountLoad(gateway, web_threads=threads - 2, native_threads=2))
        wait_until(lambda: load.done() >= 100, what="calls before the stop")
        process = leaving.process
        assert process is not None
        stopped_at = load.done()
        process.popen.send_signal(signal.SIGTERM)
        wait_until(lambda: not process.alive(), timeout=15, what="the replica to stop")
        wait_until(lambda: load.done() >= stopped_at + 300, timeout=60, what="calls after the stop")
        load.hold()
        statuses = Counter(load.statuses)
        assert set(statuses) <= {OK, CANCELLED}, statuses  # no UNAVAILABLE: no refused call reached a client
        assert statuses[CANCELLED] <= threads, statuses
        assert {say(client, gateway, "after")[1].split()[-1] for _ in range(10)} == {f"@{staying.port}"}
