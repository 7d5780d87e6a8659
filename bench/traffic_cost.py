"""`python -m bench.traffic_cost`: what traffic control adds to one call, measured in this process.

The whole-gateway rows (bench.traffic) move by more from run to run on a shared 2-core machine than
traffic control costs, so its parts are measured here without load generators, servers or sockets
(Redis aside): each step runs N times on one uvloop event loop, CPU from resource.getrusage, minus
the same loop with the step left out.

    rate limit (admission)         admit() (gateway/proxy/: the limiter's part of every gRPC call's
                                   admission) with CallLimiter, minus admit() without a limiter:
                                   memory store, Redis store (one and 32 requests in flight)
    method limit                   the same with a manifest rateLimit on the method too (memory, and
                                   Redis with 32 in flight: both buckets in one EVALSHA)
    leases                         both, Redis with leaseTokens 16 and one request in flight: a
                                   round trip per 17 calls, the rest spent from the lease
    breaker                        Route.pick + Replica.report with a breaker, against none
    retry budget                   RetryBudget.deposit (idempotent calls only)
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable

import grpc
import redis
import uvloop
from starlette.types import Message, Receive, Scope, Send

from gateway.proxy import ProxyConfig, admit
from gateway.ratelimit.calls import CallLimiter
from gateway.ratelimit.keys import identify_from_settings
from gateway.settings import RateLimitSettings
from gateway.upstream.breaker import BreakerPolicy
from gateway.upstream.policies import MethodPolicies
from gateway.upstream.pool import Route, UpstreamPool
from gateway.upstream.retry import RetryBudget

REDIS_URL = "redis://127.0.0.1:6379/0"
PATH = "/bench.v1.Echo/Unary"
SCOPE: Scope = {
    "type": "http",
    "method": "POST",
    "path": PATH,
    "headers": [(b"content-type", b"application/grpc-web+proto")],
    "client": ("127.0.0.1", 40000),
}
START: Message = {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/grpc-web")]}
BODY: Message = {"type": "http.response.body", "body": b""}


async def answer(scope: Scope, receive: Receive, send: Send) -> None:
    await send(START)
    await send(BODY)


async def receive() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}


async def send(message: Message) -> None:
    return None


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def per_call(step: Callable[[], Awaitable[None]], n: int, concurrency: int = 1) -> float:
    """CPU microseconds per `step`, `concurrency` at a time."""

    async def worker(count: int) -> None:
        for _ in range(count):
            await step()

    await asyncio.gather(*(worker(200) for _ in range(concurrency)))  # warm
    started = cpu()
    await asyncio.gather(*(worker(n // concurrency) for _ in range(concurrency)))
    return (cpu() - started) / n * 1e6


def limiter(store: str, prefix: str, policies: MethodPolicies) -> CallLimiter:
    settings = RateLimitSettings.model_validate(
        {
            "enabled": True,
            "store": "redis" if store == "lease" else store,
            "redisUrl": REDIS_URL,
            "keyPrefix": prefix,
            "requestsPerSecond": 1e9,
            "burstSize": 1_000_000_000,
            "leaseTokens": 16 if store == "lease" else 0,
        }
    )
    return CallLimiter.from_settings(settings, policies=policies, counters=Counter())


def _admitting(config: ProxyConfig) -> Callable[[], Awaitable[None]]:
    """One call's admission with `config`, then an answer at once."""

    async def step() -> None:
        scope = dict(SCOPE)
        await admit(
            config,
            protocol="grpc-web",
            path=PATH,
            service="bench.v1.Echo",
            method="Unary",
            credentials=scope["headers"],
            scope=scope,
        )
        await answer(scope, receive, send)

    return step


async def measure(n: int, prefix: str) -> list[tuple[str, float]]:
    rows: list[tuple[str, float]] = []
    identify = identify_from_settings(RateLimitSettings())
    echo = UpstreamPool({"bench.v1.Echo": ["127.0.0.1:1"]}, max_message_bytes=1024)
    none = MethodPolicies()
    method = MethodPolicies()
    method.update(
        [
            {
                "id": "b",
                "provides": [
                    {
                        "grpcServices": ["bench.v1.Echo"],
                        "policies": {"Unary": {"rateLimit": {"requestsPerSecond": 1e9, "burstSize": 1_000_000_000}}},
                    }
                ],
            }
        ]
    )
    for label, store, policies, concurrency in (
        ("rate limit, memory store", "memory", none, 1),
        ("rate limit + method limit, memory store", "memory", method, 1),
        ("rate limit, Redis store, 1 in flight", "redis", none, 1),
        ("rate limit, Redis store, 32 in flight", "redis", none, 32),
        ("rate limit + method limit, Redis store, 32 in flight", "redis", method, 32),
        ("rate limit, Redis store, leaseTokens 16, 1 in flight", "lease", none, 1),
        ("rate limit + method limit, Redis store, leaseTokens 16, 1 in flight", "lease", method, 1),
    ):
        calls = limiter(store, prefix, policies)
        limited_config = ProxyConfig(echo, max_message_bytes=1024, policies=policies, limiter=calls, identify=identify)
        unlimited_config = ProxyConfig(echo, max_message_bytes=1024, policies=policies)

        base = await per_call(_admitting(unlimited_config), n, concurrency)
        cost = await per_call(_admitting(limited_config), n // (4 if store != "memory" else 1), concurrency)
        rows.append((label, cost - base))
        await calls.close()

    pools = {
        "with": UpstreamPool(
            {"a.v1.S": ["127.0.0.1:1", "127.0.0.1:2"]}, max_message_bytes=1024, breakers=BreakerPolicy()
        ),
        "without": UpstreamPool({"a.v1.S": ["127.0.0.1:1", "127.0.0.1:2"]}, max_message_bytes=1024, breakers=None),
    }
    picked = {}
    for name, pool in pools.items():
        route = pool.route("a.v1.S")

        async def pick_report(route: Route = route) -> None:
            route.pick().report(grpc.StatusCode.OK)

        picked[name] = await per_call(pick_report, n)
    rows.append(("breaker (pick + report, p2c, 2 replicas)", picked["with"] - picked["without"]))
    budget = RetryBudget(0.2, 1.0)

    async def deposit() -> None:
        budget.deposit()

    rows.append(("retry budget deposit (idempotent calls only)", await per_call(deposit, n)))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-n", type=int, default=40_000, help="steps per measurement (Redis: a quarter)")
    args = parser.parse_args()
    prefix = f"upf:bench:{uuid.uuid4().hex[:10]}"
    try:
        rows = uvloop.run(measure(args.n, prefix))
    finally:
        store = redis.Redis.from_url(REDIS_URL)
        keys = list(store.scan_iter(match=f"{prefix}:*", count=1000))
        if keys:
            store.delete(*keys)
        store.close()
    print(f"added gateway CPU per call, {args.n} steps each, uvloop, {time.strftime('%Y-%m-%d %H:%M')}")
    print("| what | us per call |")
    print("|---|---|")
    for label, us in rows:
        print(f"| {label} | {us:.1f} |")


if __name__ == "__main__":
    main()
