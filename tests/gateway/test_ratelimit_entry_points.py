"""Native gRPC and grpc-websockets calls take from the same buckets as gRPC-Web calls, refused their own way."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import grpc
import httpx
import pytest

from tests.conftest import ALLOWED_ORIGIN
from tests.gateway.test_grpc_websockets import unary
from tests.support.grpcweb import BINARY, frame, parse_response
from tests.support.processes import run_gateway


def test_native_calls_are_limited_with_the_same_bucket_and_told_when_to_retry(
    probe_address: str, work_dir: Path, pb: Any, pb_grpc: Any
) -> None:
    # A slow refill (one token per 100 s) so that the bucket cannot refill during the test.
    limits = {"enabled": True, "store": "memory", "requestsPerSecond": 0.01, "burstSize": 3}
    config = {"upstreams": {"accept.v1.Probe": [probe_address]}, "rateLimiting": limits}
    with run_gateway(config, work_dir) as gateway, grpc.insecure_channel(gateway.grpc_target) as channel:
        stub = pb_grpc.ProbeStub(channel)
        body = frame(pb.CallRequest(payload=b"web").SerializeToString())
        r = httpx.post(f"{gateway.url}/accept.v1.Probe/Unary", content=body, headers={"content-type": BINARY})
        assert parse_response(r.status_code, dict(r.headers), r.content).status == 0  # one token, over HTTP
        assert stub.Unary(pb.CallRequest(payload=b"a"), timeout=5).payload == b"a"
        assert stub.Unary(pb.CallRequest(payload=b"b"), timeout=5).payload == b"b"
        with pytest.raises(grpc.RpcError) as caught:
            stub.Unary(pb.CallRequest(payload=b"c"), timeout=5)
    error = caught.value
    assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "rate limit exceeded" in (error.details() or "")
    trailers: dict[str, Any] = dict(cast(Any, error.trailing_metadata()) or ())
    assert int(trailers["retry-after"]) > 0
    assert trailers["ratelimit-policy"] == '"default";q=3;w=300'
    assert trailers["ratelimit"].startswith('"default";r=0;t=')


async def test_websocket_calls_are_limited_and_closed_with_try_again_later(
    probe_address: str, work_dir: Path, pb: Any
) -> None:
    limits = {"enabled": True, "store": "memory", "requestsPerSecond": 0.01, "burstSize": 2}
    config = {
        "upstreams": {"accept.v1.Probe": [probe_address]},
        "rateLimiting": limits,
        "cors": {"allowOrigins": [ALLOWED_ORIGIN]},
    }
    with run_gateway(config, work_dir) as gateway:
        answers = [await unary(gateway, pb, payload=b"ws") for _ in range(3)]
    assert [answer.status for answer in answers[:2]] == [0, 0]
    refused = answers[2]
    assert refused.status == 8  # RESOURCE_EXHAUSTED
    assert refused.close_code == 1013  # Try Again Later
    assert int(refused.trailers["retry-after"]) > 0
    assert refused.trailers["ratelimit-policy"] == '"default";q=2;w=200'
