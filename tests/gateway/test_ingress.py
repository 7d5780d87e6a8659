"""Native gRPC through the gateway's grpcPort: all four call kinds, with metadata, deadlines,
cancellation and status (including grpc-status-details-bin) passed through to and from a service
the gateway has no descriptors for."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any, cast

import grpc
import pytest

from tests.support.processes import Gateway

pytestmark = pytest.mark.asyncio


@pytest.fixture
async def stub(gateway: Gateway, pb_grpc: Any) -> AsyncIterator[Any]:
    async with grpc.aio.insecure_channel(gateway.grpc_target) as channel:
        yield pb_grpc.ProbeStub(channel)


@pytest.fixture
async def direct(probe_address: str, pb_grpc: Any) -> AsyncIterator[Any]:
    async with grpc.aio.insecure_channel(probe_address) as channel:
        yield pb_grpc.ProbeStub(channel)


async def test_unary(stub: Any, pb: Any) -> None:
    reply = await stub.Unary(pb.CallRequest(payload=b"native"))
    assert reply.payload == b"native"


async def test_server_streaming(stub: Any, pb: Any) -> None:
    replies = [reply.index async for reply in stub.ServerStream(pb.CallRequest(count=4))]
    assert replies == [0, 1, 2, 3]


async def test_client_streaming(stub: Any, pb: Any) -> None:
    async def requests() -> AsyncIterator[Any]:
        for part in (b"a", b"b", b"c"):
            yield pb.CallRequest(payload=part)

    reply = await stub.ClientStream(requests())
    assert (reply.payload, reply.requests) == (b"abc", 3)


async def test_bidi_ping_pong_answers_each_request_before_the_next(stub: Any, pb: Any) -> None:
    call = stub.Bidi()
    for n in range(5):
        await call.write(pb.CallRequest(payload=str(n).encode()))
        reply = await call.read()
        assert (reply.payload, reply.requests) == (str(n).encode(), n + 1)
    await call.done_writing()
    assert await call.read() is grpc.aio.EOF  # type: ignore[attr-defined]
    assert await call.code() is grpc.StatusCode.OK


async def test_metadata_both_ways(stub: Any, pb: Any) -> None:
    request = pb.CallRequest(headers={"x-answer": "42"}, trailers={"x-trailer-bin": "AAEC"})
    call = stub.Unary(request, metadata=(("x-custom", "abc"), ("x-trace-bin", b"\x00\xff")))
    reply = await call
    assert reply.metadata["x-custom"] == "abc"
    assert reply.metadata["x-trace-bin"] == "AP8="
    assert ("x-answer", "42") in tuple(await call.initial_metadata())
    assert ("x-trailer-bin", b"\x00\x01\x02") in tuple(await call.trailing_metadata())


async def test_response_headers_arrive_before_a_server_stream_has_replied(stub: Any, direct: Any, pb: Any) -> None:
    # The service sends its headers, then waits for a Release before any reply.
    key = f"early-{time.monotonic_ns()}"
    request = pb.CallRequest(key=key, count=1, headers={"x-early": "yes"}, wait_release_first=True)
    call = stub.ServerStream(request, timeout=10)
    assert ("x-early", "yes") in tuple(await asyncio.wait_for(call.initial_metadata(), 5))
    assert (await direct.Observe(pb.Key(key=key))).finished == 0
    await direct.Release(pb.Key(key=key))
    assert [reply.index async for reply in call] == [0]
    assert await call.code() is grpc.StatusCode.OK


async def test_bidi_headers_arrive_before_the_client_has_sent_anything(stub: Any, pb: Any) -> None:
    # The service answers a message only once it has one: its headers must not wait for that.
    call = stub.Bidi(metadata=(("x-headers-first", "yes"),), timeout=10)
    assert ("x-headers-first", "yes") in tuple(await asyncio.wait_for(call.initial_metadata(), 5))
    await call.write(pb.CallRequest(payload=b"then"))
    assert (await call.read()).payload == b"then"
    await call.done_writing()
    assert await call.code() is grpc.StatusCode.OK


async def test_error_status_message_and_details_pass_through(stub: Any, pb: Any) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Unary(pb.CallRequest(fail_code=5, fail_message="no such thing: 100% é", details=True))
    error = caught.value
    assert error.code() is grpc.StatusCode.NOT_FOUND
    assert error.details() == "no such thing: 100% é"
    details = dict(cast(Any, error.trailing_metadata()))["grpc-status-details-bin"]
    from google.rpc import status_pb2  # type: ignore[import-untyped]

    assert status_pb2.Status.FromString(details).message == "no such thing: 100% é"


async def test_deadline_reaches_the_service(stub: Any, pb: Any) -> None:
    reply = await stub.Unary(pb.CallRequest(), timeout=7.5)
    # grpc rounds a timeout up on the wire (PROTOCOL-HTTP2.md: at most 8 digits), hence the slack.
    assert 6.0 < reply.deadline_remaining <= 7.6


async def test_deadline_is_capped_by_max_timeout(stub: Any, pb: Any) -> None:
    # The session gateway has maxTimeout: 60 s.
    assert 50 < (await stub.Unary(pb.CallRequest(), timeout=3600)).deadline_remaining <= 60.1
    assert 50 < (await stub.Unary(pb.CallRequest())).deadline_remaining <= 60.1


async def test_deadline_expires_through_the_gateway(stub: Any, pb: Any) -> None:
    started = time.monotonic()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Unary(pb.CallRequest(sleep_ms=5000), timeout=0.3)
    assert caught.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - started < 3.0


async def test_cancellation_reaches_the_service(stub: Any, direct: Any, pb: Any) -> None:
    key = f"ingress-cancel-{time.monotonic_ns()}"
    call = stub.ServerStream(pb.CallRequest(count=5, key=key, wait_release=True))
    assert (await call.read()).index == 0
    call.cancel()
    deadline = time.monotonic() + 10
    while (await direct.Observe(pb.Key(key=key))).cancelled != 1:
        assert time.monotonic() < deadline, "the service never saw the cancellation"
        await asyncio.sleep(0.02)


async def test_unknown_service_is_unimplemented(gateway: Gateway) -> None:
    async with grpc.aio.insecure_channel(gateway.grpc_target) as channel:
        call = channel.unary_unary("/nowhere.v1.Service/Method", None, None)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call(b"")
    assert caught.value.code() is grpc.StatusCode.UNIMPLEMENTED


async def test_unknown_method_is_answered_by_the_service(stub: Any, gateway: Gateway) -> None:
    async with grpc.aio.insecure_channel(gateway.grpc_target) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await channel.unary_unary("/accept.v1.Probe/Nope", None, None)(b"")
    assert caught.value.code() is grpc.StatusCode.UNIMPLEMENTED


async def test_backend_down_is_unavailable_and_names_the_service(gateway: Gateway) -> None:
    async with grpc.aio.insecure_channel(gateway.grpc_target) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await channel.unary_unary("/gone.v1.Nothing/Call", None, None)(b"")
    assert caught.value.code() is grpc.StatusCode.UNAVAILABLE
    assert "gone.v1.Nothing" in (caught.value.details() or "")


async def test_request_message_over_the_limit_is_resource_exhausted(stub: Any, pb: Any) -> None:
    # The session gateway has maxMessageBytes: 1 MiB.
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Unary(pb.CallRequest(payload=b"x" * (1024 * 1024 + 1)))
    assert caught.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert (await stub.Unary(pb.CallRequest(payload=b"x" * 1000))).payload == b"x" * 1000
