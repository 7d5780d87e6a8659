"""circuitBreaker.shareVia: redis, with two gateway processes, a backend that is killed, and a
redis-server of the test's own that is killed too."""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import redis
from upf.demo.v1 import demo_pb2

from gateway.upstream.breaker import BreakerPolicy, BreakerState
from gateway.upstream.breaker_share import BreakerHints
from gateway.upstream.pool import UpstreamPool
from tests.support.clock import ManualClock
from tests.support.grpcweb import BINARY, frame, parse_response
from tests.support.processes import Gateway, Process, _died, free_port, run_gateway, wait_until
from tests.support.redis_server import SHARED_URL, delete_prefix, new_prefix, redis_server, shared_client

SERVICE = "upf.demo.v1.Echo"
OK, UNAVAILABLE = 0, 14
RESET = 8.0  # seconds: long enough for a late gateway to start and catch the hint


def say(gateway: Gateway, service: str = SERVICE) -> tuple[int, str]:
    body = frame(demo_pb2.SayRequest(text="hi").SerializeToString())
    r = httpx.post(f"{gateway.url}/{service}/Say", content=body, headers={"content-type": BINARY}, timeout=10)
    answer = parse_response(r.status_code, dict(r.headers), r.content)
    return answer.status, answer.message


def breaker(gateway: Gateway, service: str = SERVICE) -> dict[str, Any]:
    state = httpx.get(f"{gateway.url}/api/admin/traffic", timeout=5).json()
    [replica] = state["breakers"][service]
    return dict(replica)


def sharing(gateway: Gateway) -> dict[str, Any]:
    return dict(httpx.get(f"{gateway.url}/api/admin/traffic", timeout=5).json()["breakerSharing"])


def start_backend(work_dir: Path, port: int) -> Process:
    args = [sys.executable, "-m", "tests.support.plugin_server", "--port", str(port)]
    process = Process(args, log=work_dir / f"shared-breaker-backend-{port}.log")
    wait_until(lambda: "PORT " in process.output() or (not process.alive() and _died(process)), what="backend")
    return process


def test_a_breaker_that_opens_on_one_gateway_opens_on_the_other_and_redis_down_changes_nothing(
    work_dir: Path,
) -> None:
    port, other = free_port(), free_port()  # `other`: a second service whose backend never runs
    prefix = new_prefix()
    with ExitStack() as stack:
        store = stack.enter_context(redis_server(work_dir))
        backend = start_backend(work_dir, port)
        stack.callback(backend.stop)
        config = {
            "upstreams": {SERVICE: [f"127.0.0.1:{port}"], "t.other.v1.S": [f"127.0.0.1:{other}"]},
            "circuitBreaker": {
                "failureThreshold": 3,
                "resetTimeout": RESET,
                "shareVia": "redis",
                "redisUrl": store.url,
                "keyPrefix": prefix,
            },
            "admin": {"enabled": True},
        }
        a = stack.enter_context(run_gateway(config, work_dir))
        b = stack.enter_context(run_gateway(config, work_dir))
        for gateway in (a, b):
            wait_until(lambda gateway=gateway: sharing(gateway)["redisConnected"], what="the hint subscription")
            assert say(gateway)[0] == OK

        backend.stop(signal.SIGKILL)
        # Gateway A trips on its own failures ...
        for _ in range(3):
            assert say(a)[0] == UNAVAILABLE
        assert breaker(a)["state"] == "open"
        assert breaker(a)["lastTransition"]["cause"] == "failures"
        # ... and B follows on the hint, before any call of its own failed.
        hinted = wait_until(lambda: (state := breaker(b))["state"] == "open" and state, timeout=5, what="the hint")
        assert hinted["lastTransition"]["cause"] == "hint"
        assert hinted["failures"] == 0
        assert 0 < hinted["retryAfter"] <= RESET  # it half-opens on its own clock
        started = time.monotonic()
        status, message = say(b)
        assert (status, "circuit breaker" in message) == (UNAVAILABLE, True)
        assert time.monotonic() - started < 1.0
        assert (sharing(a)["published"], sharing(b)["applied"]) == (1, 1)
        keys = redis.Redis.from_url(store.url)
        try:
            name = f"{prefix}:open:{SERVICE}@127.0.0.1:{port}"
            assert 0 < keys.pttl(name) <= RESET * 1000
        finally:
            keys.close()

        # A gateway started now learns the open breaker from the key that is still alive.
        late = stack.enter_context(run_gateway(config, work_dir))
        wait_until(lambda: breaker(late)["state"] == "open", timeout=5, what="the late gateway to catch up")

        # Redis dies: nothing is shared any more, and nothing else changes. Calls are answered
        # (the open breaker fails fast), /readyz stays ready, breakers still trip on their own.
        store.kill()
        wait_until(lambda: not sharing(b)["redisConnected"], timeout=5, what="B to notice")
        for gateway in (a, b):
            assert say(gateway)[0] == UNAVAILABLE
            assert httpx.get(f"{gateway.url}/readyz").status_code == 200
        for _ in range(3):
            started = time.monotonic()
            assert say(b, "t.other.v1.S")[0] == UNAVAILABLE
            assert time.monotonic() - started < 1.0  # no waiting on Redis
        assert breaker(b, "t.other.v1.S")["state"] == "open"
        assert breaker(b, "t.other.v1.S")["lastTransition"]["cause"] == "failures"
        assert breaker(a, "t.other.v1.S")["state"] == "closed"

        # The backend is back: each gateway half-opens on its own clock, its probe passes, and
        # calls flow again, with Redis still down.
        revived = start_backend(work_dir, port)
        stack.callback(revived.stop)
        for gateway in (a, b, late):
            wait_until(lambda gateway=gateway: say(gateway)[0] == OK, timeout=RESET + 10, what="recovery")


async def test_hints_in_one_process_open_the_other_pool_and_a_passed_probe_deletes_the_key() -> None:
    prefix = new_prefix()
    clock = ManualClock()
    policy = BreakerPolicy(failure_threshold=2, reset_timeout=30)
    hints: list[BreakerHints] = []

    def pool(number: int) -> UpstreamPool:
        # As the app wires it: the pool's transition listener tells the pool's hints.
        def listener(name: str, previous: BreakerState, state: BreakerState) -> None:
            hints[number].transition(name, previous, state)

        return UpstreamPool(
            {"a.v1.S": ["127.0.0.1:1"]}, max_message_bytes=1024, breakers=policy, clock=clock, on_transition=listener
        )

    pools = [pool(0), pool(1)]
    hints += [BreakerHints(pool, url=SHARED_URL, prefix=prefix, reset_timeout=30) for pool in pools]
    for hint in hints:
        await hint.start()
    store = shared_client()
    key = f"{prefix}:open:a.v1.S@127.0.0.1:1"
    try:
        await async_wait(lambda: all(hint.connected for hint in hints), "both to subscribe")
        mine, theirs = (pool.route("a.v1.S").endpoints[0].breaker for pool in pools)
        assert mine is not None
        assert theirs is not None
        mine.record_failure()
        mine.record_failure()
        await async_wait(lambda: theirs.state is BreakerState.OPEN, "the hint")
        assert theirs.last_change is not None
        assert theirs.last_change[3] == "hint"
        assert store.get(key) == hints[0].gateway_id.encode()
        assert hints[1].published == 0  # an opening on a hint is not published again
        clock.now += 30  # both half-open on their clocks; this one's probe passes
        assert mine.try_acquire()
        mine.record_success()
        await async_wait(lambda: not store.exists(key), "the key to go")
    finally:
        for hint in hints:
            await hint.close()
        delete_prefix(store, prefix)
        store.close()


async def async_wait(predicate: Any, what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)
