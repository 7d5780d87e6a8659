"""common.rpc.Channel against real grpc.aio servers (in this process, on loopback): what a caller sees
of each call shape, metadata, statuses, deadlines, cancellation, lost and restarted servers, GOAWAY,
flow control with large streams, and the metadata hooks."""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, cast

import grpc
import pytest
from opentelemetry.sdk.trace import TracerProvider
from upf.demo.v1 import demo_pb2, demo_pb2_grpc

from common.http2.codes import ErrorCode
from common.http2.writer import goaway
from common.rpc.channel import Channel
from plugins.demo.service import EchoService
from plugins.sdk.identity import CALLER_TOKEN_METADATA, caller_token_hook
from plugins.sdk.tracing import trace_context_hook
from tests.support.h2server import GRPC_HEADERS, H2Server, Request, ServerConnection
from tests.support.processes import free_port

MiB = 1024 * 1024
_Context = Any  # grpc.aio.ServicerContext, generic in the stubs only


class Seen:
    """What the test service saw: each call's metadata, and the calls that ended cancelled."""

    def __init__(self) -> None:
        self.metadata: list[dict[str, str | bytes]] = []
        self.entered = asyncio.Event()
        self.cancelled = asyncio.Event()
        self.time_remaining: float | None = None


def _service(seen: Seen) -> grpc.GenericRpcHandler[Any, Any]:
    async def unary(request: bytes, context: _Context) -> bytes:
        metadata = dict(context.invocation_metadata() or ())
        seen.metadata.append(metadata)
        if request == b"fail":
            context.set_trailing_metadata((("x-why", "because"), ("x-blob-bin", b"\x00\xff")))
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "not like this: ä")
        if request.startswith(b"big:"):
            return b"x" * int(request[4:])
        await context.send_initial_metadata((("x-echo", str(metadata.get("x-ask", ""))),))
        context.set_trailing_metadata((("x-done", "yes"),))
        return request

    async def wait(request: bytes, context: _Context) -> bytes:
        seen.time_remaining = context.time_remaining()
        seen.entered.set()
        try:
            await asyncio.sleep(float(request))  # the call's length is its request
        except asyncio.CancelledError:
            seen.cancelled.set()
            raise
        return b"waited"

    async def server_stream(request: bytes, context: _Context) -> AsyncIterator[bytes]:
        count, size = (int(part) for part in request.split(b":"))
        sent = 0
        try:
            for n in range(count):
                yield bytes([n % 256]) * size
                sent += 1
        finally:
            # A call ended by the client closes the generator at its yield (GeneratorExit), or cancels it.
            if sent < count:
                seen.cancelled.set()

    async def client_stream(requests: AsyncIterator[bytes], context: _Context) -> bytes:
        total = 0
        async for request in requests:
            total += len(request)
        return str(total).encode()

    async def bidi(requests: AsyncIterator[bytes], context: _Context) -> AsyncIterator[bytes]:
        async for request in requests:
            yield request

    async def greet_first(requests: AsyncIterator[bytes], context: _Context) -> AsyncIterator[bytes]:
        await context.send_initial_metadata((("x-hello", "before any message"),))
        async for request in requests:
            yield request

    return grpc.method_handlers_generic_handler(
        "test.v1.Svc",
        {
            "Unary": grpc.unary_unary_rpc_method_handler(unary),
            "Wait": grpc.unary_unary_rpc_method_handler(wait),
            "ServerStream": grpc.unary_stream_rpc_method_handler(server_stream),
            "ClientStream": grpc.stream_unary_rpc_method_handler(client_stream),
            "Bidi": grpc.stream_stream_rpc_method_handler(bidi),
            "GreetFirst": grpc.stream_stream_rpc_method_handler(greet_first),
        },
    )


async def _start_server(port: int, seen: Seen) -> grpc.aio.Server:
    # Large messages both ways: the default receive limit (4 MiB) is the channel's business here, not the server's.
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", 64 * MiB)])
    server.add_generic_rpc_handlers((_service(seen),))
    demo_pb2_grpc.add_EchoServicer_to_server(EchoService(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    return server


@asynccontextmanager
async def serving(**channel_options: Any) -> AsyncIterator[tuple[Channel, Seen, grpc.aio.Server]]:
    seen = Seen()
    port = free_port()
    server = await _start_server(port, seen)
    channel = Channel(f"127.0.0.1:{port}", **channel_options)
    try:
        yield channel, seen, server
    finally:
        await channel.close()
        await server.stop(None)


async def until(predicate: Callable[[], object], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


async def test_generated_stubs_make_unary_and_server_streaming_calls() -> None:
    async with serving() as (channel, _seen, _server):
        stub = demo_pb2_grpc.EchoStub(channel)
        reply = await stub.Say(demo_pb2.SayRequest(text="hi"), timeout=5)
        assert reply.text == "echo: hi"
        numbers = [message.n async for message in stub.Count(demo_pb2.CountRequest(count=5))]
        assert numbers == [1, 2, 3, 4, 5]
        call = stub.Count(demo_pb2.CountRequest(count=2))
        first, second = await call.read(), await call.read()
        assert first == demo_pb2.CountResponse(n=1)
        assert second == demo_pb2.CountResponse(n=2)
        assert await call.read() is grpc.aio.EOF  # type: ignore[attr-defined]
        assert await call.code() is grpc.StatusCode.OK


async def test_client_streaming_from_an_iterator_and_bidi_with_write_and_done_writing() -> None:
    async with serving() as (channel, _seen, _server):
        total = await channel.stream_unary("/test.v1.Svc/ClientStream")(iter([b"ab", b"cde", b""]))
        assert total == b"5"

        async def requests() -> AsyncIterator[bytes]:
            for part in (b"1", b"22"):
                yield part

        assert await channel.stream_unary("/test.v1.Svc/ClientStream")(requests()) == b"3"
        bidi = channel.stream_stream("/test.v1.Svc/Bidi")()
        answers = []
        for word in (b"one", b"two", b"three"):
            await bidi.write(word)
            answers.append(await bidi.read())
        await bidi.done_writing()
        assert answers == [b"one", b"two", b"three"]
        assert await bidi.read() is grpc.aio.EOF  # type: ignore[attr-defined]
        assert bidi.done()
        echoed = [m async for m in channel.stream_stream("/test.v1.Svc/Bidi")(iter([b"a", b"b"]))]
        assert echoed == [b"a", b"b"]


async def test_metadata_goes_both_ways() -> None:
    async with serving() as (channel, seen, _server):
        call = channel.unary_unary("/test.v1.Svc/Unary")(
            b"hello", metadata=(("x-ask", "please"), ("x-raw-bin", b"\x00\x01\xfe")), timeout=5
        )
        assert await call == b"hello"
        assert seen.metadata[0]["x-ask"] == "please"
        assert seen.metadata[0]["x-raw-bin"] == b"\x00\x01\xfe"
        assert str(seen.metadata[0]["user-agent"]).startswith("upf-plugin-sdk")
        assert dict(await call.initial_metadata()) == {"x-echo": "please"}
        assert dict(await call.trailing_metadata()) == {"x-done": "yes"}
        assert (await call.code(), await call.details()) == (grpc.StatusCode.OK, "")
        assert seen.time_remaining is None  # no deadline asked: no grpc-timeout sent


async def test_initial_metadata_arrives_before_any_message_while_another_task_reads() -> None:
    async with serving() as (channel, _seen, _server):
        call = channel.stream_stream("/test.v1.Svc/GreetFirst")()
        reading = asyncio.ensure_future(call.read())
        assert dict(await asyncio.wait_for(call.initial_metadata(), 10)) == {"x-hello": "before any message"}
        await call.write(b"now")
        assert await asyncio.wait_for(reading, 10) == b"now"
        await call.done_writing()
        assert await call.read() is grpc.aio.EOF  # type: ignore[attr-defined]


async def test_an_error_status_carries_its_details_and_trailing_metadata() -> None:
    async with serving() as (channel, _seen, _server):
        call = channel.unary_unary("/test.v1.Svc/Unary")(b"fail")
        with pytest.raises(grpc.aio.AioRpcError) as failure:
            await call
        error = failure.value
        assert error.code() is grpc.StatusCode.FAILED_PRECONDITION
        assert error.details() == "not like this: ä"
        trailing = cast(grpc.aio.Metadata, error.trailing_metadata())  # what grpc.aio returns; the stubs say tuple
        assert trailing["x-why"] == "because"
        assert trailing["x-blob-bin"] == b"\x00\xff"
        assert await call.code() is grpc.StatusCode.FAILED_PRECONDITION
        with pytest.raises(grpc.aio.AioRpcError):
            await call  # awaiting again gives the same outcome


async def test_deadline_is_sent_and_enforced_and_the_server_sees_the_call_end() -> None:
    async with serving() as (channel, seen, _server):
        started = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as failure:
            await channel.unary_unary("/test.v1.Svc/Wait")(b"30", timeout=0.3)
        assert failure.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
        assert time.monotonic() - started < 5
        assert seen.time_remaining is not None
        assert 0 < seen.time_remaining <= 0.3
        await asyncio.wait_for(seen.cancelled.wait(), 10)


async def test_cancelling_the_awaiting_task_resets_the_stream() -> None:
    async with serving() as (channel, seen, _server):
        task = asyncio.ensure_future(channel.unary_unary("/test.v1.Svc/Wait")(b"30"))
        await asyncio.wait_for(seen.entered.wait(), 10)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.wait_for(seen.cancelled.wait(), 10)
        assert await channel.unary_unary("/test.v1.Svc/Unary")(b"still fine") == b"still fine"


async def test_call_cancel_ends_the_call_and_the_server_sees_it() -> None:
    async with serving() as (channel, seen, _server):
        call = channel.unary_stream("/test.v1.Svc/ServerStream")(b"100000:10")
        first = await call.read()
        assert first == b"\x00" * 10
        ended: list[object] = []
        call.add_done_callback(ended.append)
        assert call.cancel()
        assert call.cancelled()
        assert call.done()
        await asyncio.wait_for(seen.cancelled.wait(), 10)
        seen.cancelled.clear()
        assert await call.code() is grpc.StatusCode.CANCELLED
        with pytest.raises(asyncio.CancelledError):
            await call.read()
        await until(lambda: ended == [call])
        assert not call.cancel()  # already over

        unary = channel.unary_unary("/test.v1.Svc/Wait")(b"30")
        task = asyncio.ensure_future(unary)
        await asyncio.wait_for(seen.entered.wait(), 10)
        assert unary.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.wait_for(seen.cancelled.wait(), 10)


async def test_a_dropped_stream_call_is_reset() -> None:
    async with serving() as (channel, seen, _server):
        call = channel.unary_stream("/test.v1.Svc/ServerStream")(b"100000:1000")
        assert await call.read() == b"\x00" * 1000
        del call
        gc.collect()
        await asyncio.wait_for(seen.cancelled.wait(), 10)


async def test_connection_refused_is_unavailable() -> None:
    channel = Channel(f"127.0.0.1:{free_port()}")
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await channel.unary_unary("/test.v1.Svc/Unary")(b"x")
    assert failure.value.code() is grpc.StatusCode.UNAVAILABLE
    assert "Connection refused" in (failure.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await channel.unary_unary("/test.v1.Svc/Unary")(b"x", timeout=0.3, wait_for_ready=True)
    assert failure.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED  # kept trying until the deadline
    await channel.close()


async def test_a_restarted_server_is_reached_again_by_the_next_call() -> None:
    seen = Seen()
    port = free_port()
    server = await _start_server(port, seen)
    channel = Channel(f"127.0.0.1:{port}")
    try:
        assert await channel.unary_unary("/test.v1.Svc/Unary")(b"1") == b"1"
        await server.stop(None)
        await until(lambda: channel.get_state() is not grpc.ChannelConnectivity.READY)
        with pytest.raises(grpc.aio.AioRpcError) as failure:
            await channel.unary_unary("/test.v1.Svc/Unary")(b"2")
        assert failure.value.code() is grpc.StatusCode.UNAVAILABLE
        server = await _start_server(port, seen)
        waiting = asyncio.ensure_future(channel.channel_ready())
        await asyncio.wait_for(waiting, 10)
        assert await channel.unary_unary("/test.v1.Svc/Unary")(b"3") == b"3"
    finally:
        await channel.close()
        await server.stop(None)


async def test_goaway_lets_running_calls_finish_while_new_calls_use_a_new_connection() -> None:
    async with serving() as (channel, seen, server):
        running = asyncio.ensure_future(channel.unary_unary("/test.v1.Svc/Wait")(b"1.0", timeout=10))
        await asyncio.wait_for(seen.entered.wait(), 10)
        stopping = asyncio.ensure_future(server.stop(grace=10))
        assert await running == b"waited"  # the draining connection carried it to its end
        await stopping
        replacement = await _start_server(int(channel.target.rsplit(":", 1)[1]), seen)
        try:
            await until(lambda: channel.get_state() is not grpc.ChannelConnectivity.READY)
            assert await channel.unary_unary("/test.v1.Svc/Unary")(b"after", timeout=5) == b"after"
        finally:
            await replacement.stop(None)


async def test_calls_after_goaway_open_a_new_connection_while_the_old_one_drains() -> None:
    release = asyncio.Event()

    async def answer(conn: ServerConnection, request: Request) -> None:
        await request.ended.wait()
        if len(conn.server.seen) == 1:
            # GOAWAY naming this call as the last one served: h2 itself would stop answering after it.
            conn.raw(goaway(request.stream_id, ErrorCode.NO_ERROR))
            await release.wait()
        conn.respond(request.stream_id, GRPC_HEADERS)
        await conn.send_data(request.stream_id, bytes(request.body))
        conn.respond(request.stream_id, [(b"grpc-status", b"0")], end=True)

    async with H2Server(answer).running() as server:
        channel = Channel(server.address)
        unary = channel.unary_unary("/test.v1.Svc/Unary")
        first = asyncio.ensure_future(unary(b"first", timeout=10))
        await until(lambda: channel.get_state() is not grpc.ChannelConnectivity.READY and server.seen)
        assert await unary(b"second", timeout=10) == b"second"
        assert len(server.connections) == 2
        release.set()
        assert await first == b"first"
        await channel.close()


async def test_ten_mebibytes_stream_both_ways_within_the_flow_control_windows() -> None:
    async with serving() as (channel, _seen, _server):
        chunk = b"z" * MiB
        total = await channel.stream_unary("/test.v1.Svc/ClientStream")(iter([chunk] * 10), timeout=30)
        assert total == str(10 * MiB).encode()
        received = 0
        async for message in channel.unary_stream("/test.v1.Svc/ServerStream")(b"10:%d" % MiB, timeout=30):
            received += len(message)
        assert received == 10 * MiB
        bidi = channel.stream_stream("/test.v1.Svc/Bidi")(iter([chunk] * 10), timeout=30)
        assert sum([len(m) async for m in bidi]) == 10 * MiB
        # A unary request past the first window and frame: sent after its HEADERS, as the windows open.
        large = b"y" * (3 * MiB)
        assert await channel.unary_unary("/test.v1.Svc/Unary")(large, timeout=30) == large


async def test_a_response_over_the_limit_is_resource_exhausted() -> None:
    async with serving(max_message_bytes=MiB) as (channel, _seen, _server):
        with pytest.raises(grpc.aio.AioRpcError) as failure:
            await channel.unary_unary("/test.v1.Svc/Unary")(b"big:%d" % (2 * MiB))
        assert failure.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert await channel.unary_unary("/test.v1.Svc/Unary")(b"big:1000") == b"x" * 1000


async def test_metadata_hooks_add_to_every_call_and_replace_the_calls_own_values() -> None:
    tokens = iter(["first", "second"])
    hooks = [lambda: [("x-token", next(tokens))], lambda: [("x-trace", "t1")]]
    async with serving(metadata_hooks=hooks) as (channel, seen, _server):
        unary = channel.unary_unary("/test.v1.Svc/Unary")
        await unary(b"a", metadata=[("x-token", "forged"), ("x-own", "kept")])
        await unary(b"b")
        assert [(m["x-token"], m["x-trace"]) for m in seen.metadata] == [("first", "t1"), ("second", "t1")]
        assert seen.metadata[0]["x-own"] == "kept"


async def test_the_sdk_hooks_send_the_caller_token_and_the_current_span() -> None:
    tracer = TracerProvider().get_tracer("test")
    hooks = [caller_token_hook(lambda: "the-token"), trace_context_hook()]
    async with serving(metadata_hooks=hooks) as (channel, seen, _server):
        unary = channel.unary_unary("/test.v1.Svc/Unary")
        await unary(b"outside any span")
        with tracer.start_as_current_span("serving a call") as span:
            await unary(b"inside", metadata=[("traceparent", "00-stale-stale-00")])
        trace_id = format(span.get_span_context().trace_id, "032x")
    assert seen.metadata[0][CALLER_TOKEN_METADATA] == "the-token"
    assert "traceparent" not in seen.metadata[0]
    assert seen.metadata[1][CALLER_TOKEN_METADATA] == "the-token"
    assert str(seen.metadata[1]["traceparent"]).split("-")[1] == trace_id


async def test_an_http_answer_without_grpc_status_maps_its_http_status() -> None:
    async def unavailable(conn: ServerConnection, request: Request) -> None:
        conn.respond(request.stream_id, [(b":status", b"503"), (b"content-type", b"text/plain")])
        await conn.send_data(request.stream_id, b"try later", end=True)

    async with H2Server(unavailable).running() as server:
        channel = Channel(server.address)
        with pytest.raises(grpc.aio.AioRpcError) as failure:
            await channel.unary_unary("/test.v1.Svc/Unary")(b"x")
        await channel.close()
    assert failure.value.code() is grpc.StatusCode.UNAVAILABLE
    assert "HTTP 503" in (failure.value.details() or "")


async def test_a_reset_stream_is_unavailable_when_refused() -> None:
    async def refuse(conn: ServerConnection, request: Request) -> None:
        conn.conn.reset_stream(request.stream_id, 7)  # REFUSED_STREAM: never processed
        conn.flush()

    async with H2Server(refuse).running() as server:
        channel = Channel(server.address)
        with pytest.raises(grpc.aio.AioRpcError) as failure:
            await channel.unary_unary("/test.v1.Svc/Unary")(b"x")
        await channel.close()
    assert failure.value.code() is grpc.StatusCode.UNAVAILABLE
