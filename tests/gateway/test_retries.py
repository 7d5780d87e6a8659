"""Retries with real processes: a registry, two replicas of a plugin and gateways.

Say is idempotent in the manifest, Count is not. Policy retries: one replica is reached and refuses
every call with UNAVAILABLE. Transparent retries: one replica is SIGKILLed, so calls to it never
reach it. The registry checks health only once a minute, so the refusing or dead replica stays in
the routing table and the gateways keep picking it: what the client sees then is the retries'
doing alone."""

from __future__ import annotations

import json
import re
import signal
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from upf.demo.v1 import demo_pb2, demo_pb2_grpc

from gateway.upstream.retry import RetryBudget
from tests.gateway.test_registry_routing import Plugin, register
from tests.support.grpcweb import BINARY, frame, parse_response
from tests.support.processes import Gateway, run_gateway, wait_until
from tests.support.registry_process import run_registry

SERVICE = "upf.demo.v1.Echo"
OK, UNAVAILABLE = 0, 14
SLOW_HEALTH = {"health": {"interval": 60, "timeout": 1, "failuresBeforeUnhealthy": 2, "successesBeforeHealthy": 1}}
MANIFEST = json.dumps(
    {
        "id": "retried-echo",
        "version": "1.0.0",
        "name": "Retried Echo",
        "description": "Say may be retried, Count may not",
        "type": "business",
        "provides": [
            {
                "name": "IEcho",
                "version": "1.0.0",
                "protoFile": "demo.proto",
                "grpcServices": [SERVICE],
                "methods": ["Say", "Count"],
                "policies": {"Say": {"idempotent": True}},
            }
        ],
    }
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_budget_allows_a_ratio_of_the_calls_plus_a_minimum_over_a_sliding_window() -> None:
    clock = Clock()
    budget = RetryBudget(0.2, 0.5, window=10, clock=clock)
    assert [budget.withdraw() for _ in range(6)] == [True] * 5 + [False]  # the minimum: 0.5/s x 10 s
    for _ in range(10):
        budget.deposit()
    assert [budget.withdraw() for _ in range(3)] == [True, True, False]  # + 20 % of 10 calls
    assert budget.state() == {"windowSeconds": 10, "calls": 10, "retries": 7, "available": 0}
    clock.now += 10.5  # everything slid out of the window
    assert budget.state()["calls"] == 0
    assert [budget.withdraw() for _ in range(6)] == [True] * 5 + [False]
    clock.now += 5
    for _ in range(5):
        budget.deposit()
    clock.now += 6  # the retries left, the calls are still in the window
    assert budget.state() == {"windowSeconds": 10, "calls": 5, "retries": 0, "available": 6}


def say(client: httpx.Client, gateway: Gateway, text: str) -> tuple[int, str]:
    body = frame(demo_pb2.SayRequest(text=text).SerializeToString())
    r = client.post(f"{gateway.url}/{SERVICE}/Say", content=body, headers={"content-type": BINARY})
    answer = parse_response(r.status_code, dict(r.headers), r.content)
    if answer.status != OK:
        return answer.status, answer.message
    return OK, demo_pb2.SayResponse.FromString(answer.messages[0]).text


def answered_by(client: httpx.Client, gateway: Gateway, tags: set[str]) -> bool:
    """Whether a few calls reach every replica in `tags` (`@port`)."""
    return {say(client, gateway, "x")[1].split()[-1] for _ in range(8)} == tags


def count(client: httpx.Client, gateway: Gateway) -> int:
    body = frame(demo_pb2.CountRequest(count=1).SerializeToString())
    r = client.post(f"{gateway.url}/{SERVICE}/Count", content=body, headers={"content-type": BINARY})
    return parse_response(r.status_code, dict(r.headers), r.content).status


def retry_counts(gateway: Gateway) -> dict[str, float]:
    text = httpx.get(f"{gateway.url}/metrics").text
    return {m[1]: float(m[2]) for m in re.finditer(r'upf_retries_total\{outcome="(\w+)"\} (\S+)', text)}


@pytest.fixture(scope="module")
def replicas(work_dir: Path) -> Iterator[tuple[str, Plugin, Plugin]]:
    """A registry and two replicas of the plugin, the second one refusing every call (UNAVAILABLE)."""
    with ExitStack() as stack:
        registry = stack.enter_context(run_registry(SLOW_HEALTH, work_dir))
        plugins = (Plugin(work_dir), Plugin(work_dir, "--refuse"))
        for number, plugin in enumerate(plugins, 1):
            plugin.start()
            stack.callback(plugin.stop)
            register(registry, plugin, f"retried-{number}", MANIFEST)
        yield registry.target, *plugins


def gateway_config(registry: str, **retries: Any) -> dict[str, Any]:
    return {
        "registryUrl": registry,
        "circuitBreaker": {"failureThreshold": 1000},  # retries alone decide what the client sees
        "retries": retries,
        "admin": {"enabled": True},
    }


def test_idempotent_calls_go_to_the_other_replica_and_the_budget_caps_a_storm(
    replicas: tuple[str, Plugin, Plugin], work_dir: Path
) -> None:
    registry, alive, _refusing = replicas
    with ExitStack() as stack, httpx.Client(timeout=10) as client:
        generous = stack.enter_context(run_gateway(gateway_config(registry, budgetRatio=1.0), work_dir))
        storm = stack.enter_context(run_gateway(gateway_config(registry, budgetRatio=0.2, minPerSecond=0), work_dir))
        for gateway in (generous, storm):
            wait_until(
                lambda gateway=gateway: {count(client, gateway) for _ in range(12)} == {OK, UNAVAILABLE},
                what="both replicas to be routed",
            )

        # Idempotent: every call answered, by the replica that is left, over gRPC-Web and native gRPC.
        answers = Counter(say(client, generous, f"web{n}") for n in range(20))
        assert answers == Counter({(OK, f"web{n} @{alive.port}"): 1 for n in range(20)})
        with grpc.insecure_channel(generous.grpc_target) as channel:
            stub = demo_pb2_grpc.EchoStub(channel)
            texts = [stub.Say(demo_pb2.SayRequest(text=f"n{n}"), timeout=5).text for n in range(20)]
        assert texts == [f"n{n} @{alive.port}" for n in range(20)]
        retried = retry_counts(generous)
        assert retried["attempted"] >= 1  # 40 calls, half of them to the dead replica at random
        assert retried["succeeded"] == retried["attempted"]
        assert retried["budget_exhausted"] == 0

        # Not idempotent: a call the refusing replica took is not retried; the client sees UNAVAILABLE.
        statuses = Counter(count(client, generous) for _ in range(20))
        assert statuses[UNAVAILABLE] >= 1
        assert statuses[OK] >= 1
        assert set(statuses) == {OK, UNAVAILABLE}
        assert retry_counts(generous)["attempted"] == retried["attempted"]

        # A storm: 100 idempotent calls, about half of them first sent to the refusing replica. Retries
        # stay within 20 % of the calls in the window (these and the few made while waiting for
        # both replicas); the rest of the refused calls reach the client.
        results = Counter(say(client, storm, "s")[0] for _ in range(100))
        counts = retry_counts(storm)
        budget = httpx.get(f"{storm.url}/api/admin/traffic").json()["retries"]["budget"]
        assert budget["retries"] == counts["attempted"]
        assert 100 <= budget["calls"] <= 140
        assert counts["attempted"] <= 0.2 * budget["calls"] + 1
        assert counts["attempted"] >= 10  # with ~50 refusals, the budget was used, not idle
        assert counts["budget_exhausted"] >= 1
        assert results[UNAVAILABLE] == counts["budget_exhausted"]
        assert results[OK] == 100 - results[UNAVAILABLE]


class CountLoad:
    """Threads calling Count (not idempotent) without pause, over gRPC-Web and native gRPC, that can
    be held between calls: `hold` returns once no call is in flight."""

    def __init__(self, gateway: Gateway, web_threads: int = 3, native_threads: int = 1) -> None:
        self.gateway = gateway
        self.statuses: list[int] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._open = threading.Event()
        self._open.set()
        self._idle = threading.Condition(self._lock)
        self._running = 0
        targets = [self._web] * web_threads + [self._native] * native_threads
        self._threads = [threading.Thread(target=target) for target in targets]

    def _calls(self, one: Any) -> None:
        while not self._stop.is_set():
            self._open.wait()
            with self._lock:
                if not self._open.is_set():
                    continue
                self._running += 1
            try:
                status = one()
            finally:
                with self._lock:
                    self._running -= 1
                    self.statuses.append(status)
                    self._idle.notify_all()

    def _web(self) -> None:
        with httpx.Client(timeout=10) as client:
            self._calls(lambda: count(client, self.gateway))

    def _native(self) -> None:
        with grpc.insecure_channel(self.gateway.grpc_target) as channel:
            stub = demo_pb2_grpc.EchoStub(channel)

            def one() -> int:
                try:
                    list(stub.Count(demo_pb2.CountRequest(count=1), timeout=10))
                except grpc.RpcError as error:
                    return int(error.code().value[0])
                return OK

            self._calls(one)

    def hold(self) -> None:
        with self._lock:
            self._open.clear()
            assert self._idle.wait_for(lambda: self._running == 0, timeout=10), "calls still running"

    def resume(self) -> None:
        self._open.set()

    def done(self) -> int:
        with self._lock:
            return len(self.statuses)

    def __enter__(self) -> CountLoad:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._open.set()
        for thread in self._threads:
            thread.join()


def test_a_sigkilled_replica_fails_no_call_that_never_reached_it(work_dir: Path) -> None:
    """Transparent retries: a call that never reached a replica (its connection is refused) goes to
    the other one whatever its idempotency, so SIGKILLing one of two replicas under load of a
    non-idempotent method fails no call. The kill falls between calls: a call a replica had already
    taken when it died may have run, and is not tried again (neither does gRPC)."""
    alive, doomed = Plugin(work_dir), Plugin(work_dir)
    with ExitStack() as stack, httpx.Client(timeout=10) as client:
        registry = stack.enter_context(run_registry(SLOW_HEALTH, work_dir))
        for number, plugin in enumerate((alive, doomed), 1):
            plugin.start()
            stack.callback(plugin.stop)
            register(registry, plugin, f"transparent-{number}", MANIFEST)
        # Breakers as configured by default: the dead replica keeps being picked until its opens.
        gateway = stack.enter_context(run_gateway({"registryUrl": registry.target}, work_dir))
        tags = {f"@{alive.port}", f"@{doomed.port}"}
        wait_until(lambda: answered_by(client, gateway, tags), what="both replicas to answer")
        load = stack.enter_context(CountLoad(gateway))
        wait_until(lambda: load.done() >= 50, what="calls before the kill")
        load.hold()
        doomed.stop(signal.SIGKILL)
        killed_at = load.done()
        load.resume()
        wait_until(lambda: load.done() >= killed_at + 300, timeout=60, what="calls after the kill")
        load.hold()
        statuses = Counter(load.statuses)
        assert statuses == Counter({OK: len(load.statuses)}), statuses
        # Everything after the kill was answered by the replica that is left.
        assert {say(client, gateway, "after")[1].split()[-1] for _ in range(10)} == {f"@{alive.port}"}
