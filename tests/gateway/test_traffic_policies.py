"""Manifest policies at work, with a real registry, a real plugin and a real gateway process:
per-method rate limits on every entry point (gRPC-Web, native gRPC, grpc-websockets) on top of the
per-client limit, in memory and in Redis; the manifest `timeout` as a deadline cap."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any, cast

import grpc
import httpx
import pytest
import redis
from upf.demo.v1 import demo_pb2, demo_pb2_grpc

from tests.gateway.test_grpc_websockets import data, opened
from tests.gateway.test_registry_routing import FAST, Plugin, register
from tests.support.grpcweb import BINARY, frame, parse_response
from tests.support.processes import Gateway, run_gateway, wait_until
from tests.support.redis_server import SHARED_URL, delete_prefix, new_prefix, shared_client
from tests.support.registry_process import run_registry

SERVICE = "upf.demo.v1.Echo"
OK, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED = 0, 4, 8


def echo_manifest(policies: dict[str, Any]) -> str:
    return json.dumps(
        {
            "id": "limited-echo",
            "version": "1.0.0",
            "name": "Limited Echo",
            "description": "echo with per-method policies",
            "type": "business",
            "provides": [
                {
                    "name": "IEcho",
                    "version": "1.0.0",
                    "protoFile": "demo.proto",
                    "grpcServices": [SERVICE],
                    "methods": ["Say", "Count"],
                    "policies": policies,
                }
            ],
        }
    )


def web_call(gateway: Gateway, method: str, message: Any) -> httpx.Response:
    return httpx.post(
        f"{gateway.url}/{SERVICE}/{method}",
        content=frame(message.SerializeToString()),
        headers={"content-type": BINARY},
        timeout=10,
    )


def web_status(r: httpx.Response) -> int:
    return parse_response(r.status_code, dict(r.headers), r.content).status


def routed(gateway: Gateway) -> bool:
    """The gateway routes the plugin's service (asked without spending a rate-limit token)."""
    state = httpx.get(f"{gateway.url}/api/admin/traffic").json()
    return SERVICE in state["breakers"]


async def ws_say(gateway: Gateway, text: str) -> tuple[int, dict[str, str]]:
    async with opened(gateway, "Say", service=SERVICE, origin=None) as call:
        await call.send(data(demo_pb2.SayRequest(text=text).SerializeToString()))
        await call.half_close()
        answer = await call.finish()
    return answer.status, answer.trailers


@pytest.fixture
def prefix() -> Iterator[str]:
    client = shared_client()
    prefix = new_prefix()
    try:
        yield prefix
    finally:
        delete_prefix(client, prefix)
        client.close()


@pytest.mark.parametrize("store", ["memory", "redis"])
def test_a_method_limit_holds_on_every_entry_point_on_top_of_the_per_client_limit(
    work_dir: Path, store: str, prefix: str
) -> None:
    # A refill of one token per 100 s: nothing refills while the test runs.
    policies = {"Say": {"rateLimit": {"requestsPerSecond": 0.01, "burstSize": 3}}}
    limits = {
        "enabled": True,
        "store": store,
        "redisUrl": SHARED_URL,
        "keyPrefix": prefix,
        "requestsPerSecond": 0.01,
        "burstSize": 6,
        "exemptPaths": ["/api/admin/traffic"],
    }
    plugin = Plugin(work_dir)
    with ExitStack() as stack:
        registry = stack.enter_context(run_registry(FAST, work_dir))
        plugin.start()
        stack.callback(plugin.stop)
        register(registry, plugin, "limited-1", echo_manifest(policies))
        config = {"registryUrl": registry.target, "rateLimiting": limits, "admin": {"enabled": True}}
        gateway = stack.enter_context(run_gateway(config, work_dir))
        wait_until(lambda: routed(gateway), what="the plugin to be routed")
        assert web_status(web_call(gateway, "Count", demo_pb2.CountRequest(count=1))) == OK
        # That Count call took a per-client token (5 left), none of Say's.

        first = web_call(gateway, "Say", demo_pb2.SayRequest(text="a"))
        assert web_status(first) == OK
        # Both allow: the headers describe the more restrictive, the method's (2 left, not 4).
        assert first.headers["ratelimit-policy"] == f'"{SERVICE}/Say";q=3;w=300'
        assert first.headers["ratelimit"].startswith(f'"{SERVICE}/Say";r=2;')

        with grpc.insecure_channel(gateway.grpc_target) as channel:
            stub = demo_pb2_grpc.EchoStub(channel)
            assert stub.Say(demo_pb2.SayRequest(text="b"), timeout=5).text == f"b @{plugin.port}"

            status, _ = asyncio.run(ws_say(gateway, "c"))
            assert status == OK

            # The method's bucket is empty on every entry point; the per-client one still has 2.
            refused = web_call(gateway, "Say", demo_pb2.SayRequest(text="d"))
            assert web_status(refused) == RESOURCE_EXHAUSTED
            assert refused.headers["ratelimit-policy"] == f'"{SERVICE}/Say";q=3;w=300'
            assert refused.headers["ratelimit"].startswith(f'"{SERVICE}/Say";r=0;t=')
            assert int(refused.headers["retry-after"]) > 0
            with pytest.raises(grpc.RpcError) as caught:
                stub.Say(demo_pb2.SayRequest(text="e"), timeout=5)
            assert caught.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
            trailers: dict[str, Any] = dict(cast(Any, caught.value.trailing_metadata()) or ())
            assert trailers["ratelimit-policy"] == f'"{SERVICE}/Say";q=3;w=300'
            status, ws_trailers = asyncio.run(ws_say(gateway, "f"))
            assert status == RESOURCE_EXHAUSTED
            assert ws_trailers["ratelimit-policy"] == f'"{SERVICE}/Say";q=3;w=300'
            # The calls its method refused took no per-client token (one decision, all or nothing):
            # 4 taken, 2 left. A method without a limit of its own is held to the per-client limit.
            for left in (1, 0):
                allowed = web_call(gateway, "Count", demo_pb2.CountRequest(count=1))
                assert web_status(allowed) == OK
                assert allowed.headers["ratelimit-policy"] == '"default";q=6;w=600'
                assert allowed.headers["ratelimit"].startswith(f'"default";r={left};')
            refused = web_call(gateway, "Count", demo_pb2.CountRequest(count=1))
            assert web_status(refused) == RESOURCE_EXHAUSTED
            assert refused.headers["ratelimit-policy"] == '"default";q=6;w=600'

        metrics = httpx.get(f"{gateway.url}/metrics").text
        assert (
            f'upf_ratelimit_decisions_total{{decision="limited",policy="{SERVICE}/Say",source="store"}} 3.0' in metrics
        )
        assert (
            f'upf_ratelimit_decisions_total{{decision="allowed",policy="{SERVICE}/Say",source="store"}} 3.0' in metrics
        )
        assert 'upf_ratelimit_decisions_total{decision="allowed",policy="default",source="store"} 6.0' in metrics
        assert 'upf_ratelimit_decisions_total{decision="limited",policy="default",source="store"} 1.0' in metrics

        if store == "redis":
            client = redis.Redis.from_url(SHARED_URL)
            try:
                assert client.exists(f"{prefix}:{SERVICE}/Say:ip:127.0.0.1")
            finally:
                client.close()


def test_the_manifest_timeout_caps_the_deadline_on_every_entry_point(work_dir: Path) -> None:
    policies = {"Count": {"timeout": 0.3}}
    plugin = Plugin(work_dir)
    with ExitStack() as stack:
        registry = stack.enter_context(run_registry(FAST, work_dir))
        plugin.start()
        stack.callback(plugin.stop)
        register(registry, plugin, "timed-1", echo_manifest(policies))
        config = {"registryUrl": registry.target, "admin": {"enabled": True}}
        gateway = stack.enter_context(run_gateway(config, work_dir))
        wait_until(lambda: web_status(web_call(gateway, "Say", demo_pb2.SayRequest(text="x"))) == OK, what="route")

        # Count streams a message every 200 ms: within 0.3 s the first two, then the deadline.
        slow = demo_pb2.CountRequest(count=10, interval_ms=200)
        started = time.monotonic()
        r = web_call(gateway, "Count", slow)
        answer = parse_response(r.status_code, dict(r.headers), r.content)
        assert answer.status == DEADLINE_EXCEEDED
        assert 1 <= len(answer.messages) <= 2
        assert time.monotonic() - started < 2.0

        with grpc.insecure_channel(gateway.grpc_target) as channel:
            stub = demo_pb2_grpc.EchoStub(channel)
            with pytest.raises(grpc.RpcError) as caught:
                list(stub.Count(slow, timeout=30))  # the client asks for 30 s; the manifest says 0.3
            assert caught.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED

        async def over_websocket() -> int:
            async with opened(gateway, "Count", service=SERVICE, origin=None) as call:
                await call.send(data(slow.SerializeToString()))
                await call.half_close()
                return (await call.finish()).status

        assert asyncio.run(over_websocket()) == DEADLINE_EXCEEDED
        # A quick call is not touched by the cap.
        quick = web_call(gateway, "Count", demo_pb2.CountRequest(count=3))
        assert parse_response(quick.status_code, dict(quick.headers), quick.content).status == OK
