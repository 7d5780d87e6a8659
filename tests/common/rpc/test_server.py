"""common.rpc.Server against grpcio's own asyncio client, over loopback: every call shape, metadata,
statuses, deadlines, cancellation, compression, size limits, flow control, shutdown, health and reflection."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import grpc.aio
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from upf.demo.v1 import demo_pb2, demo_pb2_grpc

from common.rpc.channel import Channel
from common.rpc.server import Server
from plugins.demo.service import EchoService
from tests.support.processes import eventually

Context = grpc.aio.ServicerContext[Any, Any]
RAW = "test.v1.Raw"


class Recorder:
    """What the raw handlers saw, for the tests to check."""

    def __init__(self) -> None:
        self.cancelled = asyncio.Event()
        self.context_cancelled: bool | None = None
        self.release = asyncio.Event()
        self.started = asyncio.Event()
        self.metadata: tuple[tuple[str, str | bytes], ...] = ()
        self.buffered: list[int] = []
        self.address = ""
        self.seen: dict[str, Any] = {}
        self.done = asyncio.Event()


def raw_handlers(rec: Recorder, server: Server) -> grpc.GenericRpcHandler[Any, Any]:
    async def total(requests: AsyncIterator[bytes], context: Context) -> bytes:
        return str(sum([len(r) async for r in requests])).encode()

    async def echo_all(requests: AsyncIterator[bytes], context: Context) -> AsyncIterator[bytes]:
        async for request in requests:
            yield request

    async def echo_by_hand(context: Context) -> None:
        while (request := await context.read()) is not grpc.aio.EOF:  # type: ignore[attr-defined]
            await context.write(request)

    async def metadata(request: bytes, context: Context) -> bytes:
        rec.metadata = tuple(context.invocation_metadata() or ())
        await context.send_initial_metadata((("initial", "yes"), ("initial-bin", b"\x00\x01")))
        context.set_trailing_metadata((("trailing", "done"), ("trailing-bin", b"\xff")))
        return request

    async def abort(request: bytes, context: Context) -> bytes:
        # A servicer that swallows the AbortError: the call still ends with the abort's status.
        with contextlib.suppress(grpc.aio.AbortError):
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, "no, 100% not", (("why", "policy"),))
        return b"never sent"

    async def fail(request: bytes, context: Context) -> bytes:
        raise ValueError("a secret detail")

    async def wait(request: bytes, context: Context) -> bytes:
        rec.started.set()
        try:
            await rec.release.wait()
        except asyncio.CancelledError:
            rec.context_cancelled = context.cancelled()
            rec.cancelled.set()
            raise
        return b"finished"

    async def big_stream(request: bytes, context: Context) -> AsyncIterator[bytes]:
        chunk = b"x" * (64 * 1024)
        for _ in range(160):  # 10 MiB
            yield chunk
            rec.buffered.append(sum(c.transport.get_write_buffer_size() for c in server.connections if c.transport))

    async def describe(request: bytes, context: Context) -> bytes:
        rec.seen.update(peer=context.peer(), remaining=context.time_remaining(), auth=context.auth_context())
        context.add_done_callback(lambda ctx: rec.done.set())  # type: ignore[arg-type]  # grpc-stubs want a class
        context.set_compression(grpc.Compression.Gzip)  # accepted; answers stay uncompressed
        context.set_code(grpc.StatusCode.ALREADY_EXISTS)
        context.set_details("set, not raised")
        return b""

    async def refuse(requests: AsyncIterator[bytes], context: Context) -> AsyncIterator[bytes]:
        await context.abort(grpc.StatusCode.PERMISSION_DENIED, "not yours")
        yield b""  # an async generator, never reached

    async def abort_then_clean_up(requests: AsyncIterator[bytes], context: Context) -> AsyncIterator[bytes]:
        # A subscription whose backend went away: it aborts, and its clean-up waits on that backend.
        try:
            yield b"first"
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the backend is away")
        finally:
            await rec.release.wait()  # set by the test only once the client has the status
            rec.done.set()

    async def written(request: bytes, context: Context) -> None:
        for n in range(3):
            await context.write(str(n).encode())

    return grpc.method_handlers_generic_handler(
        RAW,
        {
            "Total": grpc.stream_unary_rpc_method_handler(total),
            "EchoAll": grpc.stream_stream_rpc_method_handler(echo_all),
            "EchoByHand": grpc.stream_stream_rpc_method_handler(lambda _requests, context: echo_by_hand(context)),
            "Metadata": grpc.unary_unary_rpc_method_handler(metadata),
            "Abort": grpc.unary_unary_rpc_method_handler(abort),
            "Fail": grpc.unary_unary_rpc_method_handler(fail),
            "Wait": grpc.unary_unary_rpc_method_handler(wait),
            "BigStream": grpc.unary_stream_rpc_method_handler(big_stream),
            "Written": grpc.unary_stream_rpc_method_handler(written),
            "Describe": grpc.unary_unary_rpc_method_handler(describe),
            "Refuse": grpc.stream_stream_rpc_method_handler(refuse),
            "AbortThenCleanUp": grpc.stream_stream_rpc_method_handler(abort_then_clean_up),
        },
    )


Serve = Callable[..., Awaitable[tuple[Server, grpc.aio.Channel, Recorder]]]


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    started: list[tuple[Server, grpc.aio.Channel]] = []

    async def start(**options: Any) -> tuple[Server, grpc.aio.Channel, Recorder]:
        server = Server(**options)
        rec = Recorder()
        demo_pb2_grpc.add_EchoServicer_to_server(EchoService(), server)
        server.add_generic_rpc_handlers((raw_handlers(rec, server),))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        rec.address = f"127.0.0.1:{port}"
        channel = grpc.aio.insecure_channel(rec.address)
        started.append((server, channel))
        return server, channel, rec

    yield start
    for server, channel in started:
        await channel.close(None)
        await server.stop(None)


async def test_unary_and_server_streaming_through_generated_code(serve: Serve) -> None:
    _, channel, _ = await serve()
    stub = demo_pb2_grpc.EchoStub(channel)
    assert (await stub.Say(demo_pb2.SayRequest(text="hi"))).text == "echo: hi"
    counted = [reply.n async for reply in stub.Count(demo_pb2.CountRequest(count=3))]
    assert counted == [1, 2, 3]
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.Count(demo_pb2.CountRequest(count=10**6)).read()
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT


async def test_client_and_bidi_streaming(serve: Serve) -> None:
    _, channel, _ = await serve()
    assert await channel.stream_unary(f"/{RAW}/Total", None, None)(iter([b"ab", b"cde", b""])) == b"5"
    assert [m async for m in channel.stream_stream(f"/{RAW}/EchoAll", None, None)(iter([b"1", b"22"]))] == [b"1", b"22"]
    by_hand = channel.stream_stream(f"/{RAW}/EchoByHand", None, None)
    assert [m async for m in by_hand(iter([b"a", b"b"]))] == [b"a", b"b"]
    assert [m async for m in channel.unary_stream(f"/{RAW}/Written", None, None)(b"")] == [b"0", b"1", b"2"]


async def test_metadata_both_ways(serve: Serve) -> None:
    _, channel, rec = await serve()
    sent = (("plain", "v"), ("blob-bin", b"\x00\xfe"))
    call = channel.unary_unary(f"/{RAW}/Metadata", None, None)(b"m", metadata=sent)
    assert await call == b"m"
    assert ("plain", "v") in rec.metadata
    assert ("blob-bin", b"\x00\xfe") in rec.metadata
    initial = await call.initial_metadata()
    assert initial["initial"] == "yes"
    assert initial["initial-bin"] == b"\x00\x01"
    trailing = await call.trailing_metadata()
    assert trailing["trailing"] == "done"
    assert trailing["trailing-bin"] == b"\xff"


async def test_abort_unknown_method_and_handler_failure(serve: Serve) -> None:
    _, channel, _ = await serve()
    call = channel.unary_unary(f"/{RAW}/Abort", None, None)(b"")
    with pytest.raises(grpc.aio.AioRpcError) as aborted:
        await call
    assert aborted.value.code() is grpc.StatusCode.PERMISSION_DENIED
    assert aborted.value.details() == "no, 100% not"  # percent-encoded on the wire, decoded by grpcio
    assert (await call.trailing_metadata())["why"] == "policy"
    with pytest.raises(grpc.aio.AioRpcError) as unknown:
        await channel.unary_unary("/test.v1.Nowhere/Nothing", None, None)(b"")
    assert unknown.value.code() is grpc.StatusCode.UNIMPLEMENTED
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await channel.unary_unary(f"/{RAW}/Fail", None, None)(b"")
    assert failed.value.code() is grpc.StatusCode.UNKNOWN
    assert "ValueError" in (failed.value.details() or "")
    assert "secret" not in (failed.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as garbled:
        await channel.unary_unary("/upf.demo.v1.Echo/Say", None, None)(b"\xff\xff\xff")  # not a SayRequest
    assert garbled.value.code() is grpc.StatusCode.INTERNAL
    assert "Traceback" not in (failed.value.details() or "")


async def test_an_abort_reaches_the_client_before_the_servicer_has_cleaned_up(serve: Serve) -> None:
    # As grpc.aio does: a client waiting for the status must not wait for the servicer's finally blocks.
    _, channel, rec = await serve()
    call = channel.stream_stream(f"/{RAW}/AbortThenCleanUp", None, None)()  # type: ignore[call-arg]  # requests written below
    await call.write(b"subscribe")
    assert await call.read() == b"first"
    with pytest.raises(grpc.aio.AioRpcError) as aborted:
        await asyncio.wait_for(call.read(), 5)
    assert aborted.value.code() is grpc.StatusCode.UNAVAILABLE
    assert aborted.value.details() == "the backend is away"
    assert not rec.done.is_set()
    rec.release.set()
    await asyncio.wait_for(rec.done.wait(), 5)  # the clean-up still ran to its end


async def test_context_tells_peer_deadline_and_done_and_takes_a_set_code(serve: Serve) -> None:
    _, channel, rec = await serve()
    with pytest.raises(grpc.aio.AioRpcError) as answered:
        await channel.unary_unary(f"/{RAW}/Describe", None, None)(b"", timeout=30)
    assert answered.value.code() is grpc.StatusCode.ALREADY_EXISTS
    assert answered.value.details() == "set, not raised"
    assert rec.seen["peer"].startswith("ipv4:127.0.0.1:")
    assert 25 < rec.seen["remaining"] < 31  # grpcio rounds the grpc-timeout it sends up
    assert rec.seen["auth"] == {}
    await asyncio.wait_for(rec.done.wait(), 5)


class Recording(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Sees each call's details; hides test.v1.Raw/Fail as if it did not exist."""

    def __init__(self, name: str, seen: list[str]) -> None:
        self.name = name
        self.seen = seen

    async def intercept_service(self, continuation: Any, details: grpc.HandlerCallDetails) -> Any:
        self.seen.append(f"{self.name} {details.method}")
        if details.method.endswith("/Fail"):
            return None
        return await continuation(details)


async def test_interceptors_run_outermost_first(serve: Serve) -> None:
    seen: list[str] = []
    _, channel, _ = await serve(interceptors=[Recording("outer", seen), Recording("inner", seen)])
    assert await channel.unary_unary(f"/{RAW}/Metadata", None, None)(b"x") == b"x"
    assert seen == [f"outer /{RAW}/Metadata", f"inner /{RAW}/Metadata"]
    with pytest.raises(grpc.aio.AioRpcError) as hidden:
        await channel.unary_unary(f"/{RAW}/Fail", None, None)(b"")
    assert hidden.value.code() is grpc.StatusCode.UNIMPLEMENTED


async def test_streaming_calls_ended_before_their_requests_keep_their_status(serve: Serve) -> None:
    # grpcio's asyncio client reports INTERNAL for a call whose stream ends while it is sending; the
    # server waits for the request to settle (common/rpc/dispatch.py, _end): every status arrives.
    _, channel, _ = await serve()

    async def status(path: str) -> grpc.StatusCode:
        try:
            async for _ in channel.stream_stream(path, None, None)(iter([b"a", b"b"])):
                pass
        except grpc.aio.AioRpcError as exc:
            return exc.code()
        return grpc.StatusCode.OK

    for _ in range(25):
        codes = await asyncio.gather(*(status(f"/{RAW}/Refuse") for _ in range(4)), status("/test.v1.No/Such"))
        assert codes == [grpc.StatusCode.PERMISSION_DENIED] * 4 + [grpc.StatusCode.UNIMPLEMENTED]


async def test_deadline_cancels_the_handler(serve: Serve) -> None:
    _, channel, rec = await serve()
    with pytest.raises(grpc.aio.AioRpcError) as late:
        await channel.unary_unary(f"/{RAW}/Wait", None, None)(b"", timeout=0.3)
    assert late.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    await asyncio.wait_for(rec.cancelled.wait(), 5)
    assert rec.context_cancelled is True


async def test_client_cancel_cancels_the_handler(serve: Serve) -> None:
    server, channel, rec = await serve()
    call = channel.unary_unary(f"/{RAW}/Wait", None, None)(b"")
    await asyncio.wait_for(rec.started.wait(), 5)
    call.cancel()
    await asyncio.wait_for(rec.cancelled.wait(), 5)
    assert rec.context_cancelled is True
    await eventually(lambda: not any(conn.streams for conn in server.connections), what="the stream released")


async def test_gzip_requests_accepted_deflate_refused(serve: Serve) -> None:
    _, channel, _ = await serve()
    text = "z" * 10_000  # compresses well: the message really goes gzipped
    stub = demo_pb2_grpc.EchoStub(channel)
    reply = await stub.Say(demo_pb2.SayRequest(text=text), compression=grpc.Compression.Gzip)
    assert reply.text == f"echo: {text}"
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.Say(demo_pb2.SayRequest(text=text), compression=grpc.Compression.Deflate)
    assert refused.value.code() is grpc.StatusCode.UNIMPLEMENTED


async def test_oversized_request_is_resource_exhausted(serve: Serve) -> None:
    _, channel, _ = await serve(max_message_bytes=1024 * 1024)
    with pytest.raises(grpc.aio.AioRpcError) as big:
        await channel.unary_unary(f"/{RAW}/Metadata", None, None)(b"x" * (1024 * 1024 + 1))
    assert big.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert await channel.unary_unary(f"/{RAW}/Metadata", None, None)(b"x" * (1024 * 1024)) == b"x" * (1024 * 1024)


async def test_big_server_stream_to_a_slow_reader_stays_bounded(serve: Serve) -> None:
    _, channel, rec = await serve()
    call = channel.unary_stream(f"/{RAW}/BigStream", None, None)(b"")
    received = 0
    async for message in call:
        received += len(message)
        await asyncio.sleep(0.005)  # a slow reader: the server must wait for its windows
    assert received == 10 * 1024 * 1024
    # grpcio's client opens its windows to megabytes: what bounds the server's unsent bytes is the
    # transport's drain (~200 KiB measured), nowhere near the 10 MiB the handler made.
    assert max(rec.buffered) < 1024 * 1024, max(rec.buffered)


async def test_a_long_client_stream_gets_its_windows_back(serve: Serve) -> None:
    _, channel, _ = await serve()
    chunk = b"y" * (64 * 1024)
    # 20 MiB: past the stream's 1 MiB window and the connection's 16 MiB many times over.
    total = await channel.stream_unary(f"/{RAW}/Total", None, None)(iter([chunk] * 320))
    assert total == str(320 * len(chunk)).encode()


async def test_graceful_stop_finishes_accepted_calls_and_refuses_new_ones(serve: Serve) -> None:
    server, channel, rec = await serve()
    running = asyncio.ensure_future(channel.unary_unary(f"/{RAW}/Wait", None, None)(b""))
    await asyncio.wait_for(rec.started.wait(), 5)
    stopping = asyncio.create_task(server.stop(10))
    await eventually(lambda: all(conn.going_away for conn in server.connections), what="GOAWAY sent")
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await channel.unary_unary(f"/{RAW}/Metadata", None, None)(b"", timeout=5)
    assert refused.value.code() is grpc.StatusCode.UNAVAILABLE
    rec.release.set()
    assert await running == b"finished"
    await asyncio.wait_for(stopping, 5)
    assert not rec.cancelled.is_set()


async def test_stop_cancels_calls_past_the_grace_period(serve: Serve) -> None:
    server, channel, rec = await serve()
    running = asyncio.ensure_future(channel.unary_unary(f"/{RAW}/Wait", None, None)(b""))
    await asyncio.wait_for(rec.started.wait(), 5)
    await server.stop(0.3)
    assert rec.cancelled.is_set()
    with pytest.raises(grpc.aio.AioRpcError) as cancelled:
        await running
    assert cancelled.value.code() in (grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAVAILABLE)
    assert await server.wait_for_termination(0)


async def test_health_and_reflection(serve: Serve) -> None:
    server, channel, rec = await serve()
    health = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    reflection.enable_server_reflection(["upf.demo.v1.Echo", "grpc.health.v1.Health", reflection.SERVICE_NAME], server)
    await health.set("upf.demo.v1.Echo", health_pb2.HealthCheckResponse.SERVING)
    checked = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service="upf.demo.v1.Echo"))
    assert checked.status == health_pb2.HealthCheckResponse.SERVING
    with grpc.insecure_channel(rec.address) as sync_channel:  # grpc's reflection client is synchronous
        database = ProtoReflectionDescriptorDatabase(sync_channel)
        services = await asyncio.to_thread(database.get_services)
        found = await asyncio.to_thread(database.FindFileContainingSymbol, "upf.demo.v1.Echo")
    assert "upf.demo.v1.Echo" in services
    assert found.package == "upf.demo.v1"


async def test_a_taken_port_is_a_clear_oserror(serve: Serve) -> None:
    server, _, _ = await serve()
    other = Server()
    taken = server.connections  # keep the fixture's server listening
    port = other.add_insecure_port("127.0.0.1:0")
    await other.start()
    try:
        with pytest.raises(OSError, match="in use"):
            Server().add_insecure_port(f"127.0.0.1:{port}")
    finally:
        await other.stop(None)
    assert taken is server.connections


async def test_the_sdk_channel_against_the_server(serve: Serve) -> None:
    # Plugins call one another through common.rpc.Channel and serve on Server: both sides of common.rpc.
    _, _, rec = await serve()
    async with Channel(rec.address) as channel:
        stub = demo_pb2_grpc.EchoStub(channel)
        assert (await stub.Say(demo_pb2.SayRequest(text="hi"))).text == "echo: hi"
        assert [reply.n async for reply in stub.Count(demo_pb2.CountRequest(count=3))] == [1, 2, 3]
        assert await channel.stream_unary(f"/{RAW}/Total", None, None)(iter([b"ab", b"c"])) == b"3"
        echoed = channel.stream_stream(f"/{RAW}/EchoAll", None, None)(iter([b"1", b"22"]))
        assert [m async for m in echoed] == [b"1", b"22"]
        call = channel.unary_unary(f"/{RAW}/Abort", None, None)(b"")
        with pytest.raises(grpc.aio.AioRpcError) as aborted:
            await call
        assert aborted.value.code() is grpc.StatusCode.PERMISSION_DENIED
        assert aborted.value.details() == "no, 100% not"
