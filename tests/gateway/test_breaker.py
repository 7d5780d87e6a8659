"""Circuit breakers: the state machine with a hand-moved clock, replica choice, and a real backend
killed and restarted behind a real gateway."""

from __future__ import annotations

import re
import signal
import time
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

from gateway.errors import UpstreamUnavailable
from gateway.upstream.breaker import BreakerPolicy, BreakerState, CircuitBreaker
from gateway.upstream.pool import UpstreamPool
from tests.support.clock import ManualClock
from tests.support.grpcweb import BINARY, frame, parse_response
from tests.support.processes import free_port, probe_backend, run_gateway, wait_until

UNAVAILABLE, NOT_FOUND = grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.NOT_FOUND


def breaker(threshold: int = 3, reset: float = 10.0, probes: int = 1) -> tuple[CircuitBreaker, ManualClock, list[str]]:
    clock = ManualClock()
    moves: list[str] = []
    policy = BreakerPolicy(failure_threshold=threshold, reset_timeout=reset, half_open_probes=probes)
    cb = CircuitBreaker("svc@a", policy, clock=clock, listener=lambda n, a, b: moves.append(f"{a.value}->{b.value}"))
    return cb, clock, moves


def test_opens_after_threshold_consecutive_failures_only() -> None:
    cb, _clock, moves = breaker(threshold=3)
    for code in (UNAVAILABLE, UNAVAILABLE, grpc.StatusCode.OK, UNAVAILABLE, UNAVAILABLE):
        assert cb.try_acquire()
        cb.record(code)
    assert cb.state is BreakerState.CLOSED  # the success in between reset the count
    cb.record(grpc.StatusCode.DEADLINE_EXCEEDED)
    assert moves == ["closed->open"]
    assert not cb.try_acquire()
    assert cb.retry_after == 10


def test_client_errors_and_cancellations_never_open_it() -> None:
    cb, _clock, _moves = breaker(threshold=2)
    for code in [NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.CANCELLED] * 20:
        assert cb.try_acquire()
        cb.record(code)
    assert cb.state is BreakerState.CLOSED


def test_half_open_lets_a_bounded_number_of_probes_through() -> None:
    cb, clock, moves = breaker(threshold=1, reset=10, probes=2)
    cb.record(UNAVAILABLE)
    clock.now += 9.9
    assert not cb.try_acquire()
    assert cb.retry_after == pytest.approx(0.1)
    clock.now += 0.1
    assert cb.try_acquire()
    assert cb.try_acquire()
    assert not cb.try_acquire()  # two probes in flight: no third
    cb.record(grpc.StatusCode.OK)
    assert cb.state is BreakerState.CLOSED
    assert moves == ["closed->open", "open->half_open", "half_open->closed"]


def test_failed_probe_opens_it_again_for_a_full_reset_timeout() -> None:
    cb, clock, moves = breaker(threshold=1, reset=10)
    cb.record(UNAVAILABLE)
    clock.now += 10
    assert cb.try_acquire()
    cb.record(UNAVAILABLE)
    assert cb.state is BreakerState.OPEN
    clock.now += 9
    assert not cb.try_acquire()
    assert moves == ["closed->open", "open->half_open", "half_open->open"]


def test_a_probe_that_never_reports_does_not_hold_it_half_open_for_ever() -> None:
    cb, clock, _moves = breaker(threshold=1, reset=10)
    cb.record(UNAVAILABLE)
    clock.now += 10
    assert cb.try_acquire()  # this probe is lost
    clock.now += 5
    assert not cb.try_acquire()
    clock.now += 5
    assert cb.try_acquire()


def test_pick_skips_open_replicas_and_fails_fast_when_all_are_open() -> None:
    clock = ManualClock()
    pool = UpstreamPool(
        {"a.v1.S": ["127.0.0.1:1", "127.0.0.1:2"]},
        max_message_bytes=1024,
        breakers=BreakerPolicy(failure_threshold=1, reset_timeout=5),
        clock=clock,
    )
    route = pool.route("a.v1.S")
    first = route.pick()
    first.report(UNAVAILABLE)
    assert {route.pick().address for _ in range(4)} == {"127.0.0.1:2"}
    route.pick().report(UNAVAILABLE)
    with pytest.raises(UpstreamUnavailable, match=r"circuit breaker of every replica is open \(next probe in 5\.0 s\)"):
        route.pick()


# --- a real backend behind a real gateway ----------------------------------------------------------


def call(client: httpx.Client, url: str, pb: Any, **fields: Any) -> tuple[int, str]:
    body = frame(pb.CallRequest(**fields).SerializeToString())
    r = client.post(f"{url}/accept.v1.Probe/Unary", content=body, headers={"content-type": BINARY})
    response = parse_response(r.status_code, dict(r.headers), r.content)
    return response.status, response.message


def test_killed_backend_trips_the_breaker_and_traffic_recovers(probe_gen: Path, work_dir: Path, pb: Any) -> None:
    port = free_port()
    address = f"127.0.0.1:{port}"
    config = {"circuitBreaker": {"failureThreshold": 3, "resetTimeout": 1}, "upstreams": {"accept.v1.Probe": [address]}}
    with (
        probe_backend(probe_gen, work_dir, port=port) as (_address, backend),
        run_gateway(config, work_dir) as gateway,
        httpx.Client(timeout=10) as client,
    ):
        assert call(client, gateway.url, pb) == (0, "")
        # A storm of NOT_FOUND is the service answering: it never opens the breaker.
        for _ in range(20):
            assert call(client, gateway.url, pb, fail_code=5, fail_message="no")[0] == 5
        backend.stop(signal.SIGKILL)
        failures = [call(client, gateway.url, pb) for _ in range(3)]
        assert all(status == 14 for status, _ in failures)
        assert not any("circuit breaker" in message for _, message in failures)
        status, message = call(client, gateway.url, pb)
        assert status == 14
        assert "circuit breaker of every replica is open" in message  # failing fast now
        # Native gRPC shares the breakers.
        with grpc.insecure_channel(gateway.grpc_target) as channel, pytest.raises(grpc.RpcError) as caught:
            channel.unary_unary("/accept.v1.Probe/Unary", None, None)(b"", timeout=5)
        assert caught.value.code() is UNAVAILABLE
        assert "circuit breaker of every replica is open" in (caught.value.details() or "")
        with probe_backend(probe_gen, work_dir, port=port):
            # Once reset_timeout has passed, a half-open probe reaches the new backend.
            wait_until(lambda: call(client, gateway.url, pb)[0] == 0, timeout=20, interval=0.1)
            assert all(call(client, gateway.url, pb)[0] == 0 for _ in range(5))
        log = gateway.process.output()
    name = f"accept.v1.Probe@{address}"
    assert f"circuit breaker {name}: closed -> open" in log
    assert f"circuit breaker {name}: half_open -> closed" in log


def test_a_probe_the_client_cancelled_gives_its_slot_back() -> None:
    cb, clock, moves = breaker(threshold=1, reset=10, probes=2)
    cb.record(UNAVAILABLE)
    clock.now += 10
    assert cb.try_acquire()
    assert cb.try_acquire()
    assert not cb.try_acquire()  # both probe slots taken
    # A cancelled call proved nothing: its slot is free again (one slot per call), and nothing moves.
    cb.record(grpc.StatusCode.CANCELLED)
    assert cb.state is BreakerState.HALF_OPEN
    assert cb.try_acquire()
    assert not cb.try_acquire()
    cb.record(grpc.StatusCode.CANCELLED)
    cb.record(grpc.StatusCode.CANCELLED)
    assert [cb.try_acquire() for _ in range(3)] == [True, True, False]
    assert moves == ["closed->open", "open->half_open"]


def test_a_cancellation_with_no_probe_in_flight_frees_no_extra_slot() -> None:
    cb, clock, _moves = breaker(threshold=1, reset=10, probes=1)
    cb.record(UNAVAILABLE)
    clock.now += 10
    assert cb.state is BreakerState.HALF_OPEN
    cb.record(grpc.StatusCode.CANCELLED)  # a call let through before the breaker opened
    assert cb.try_acquire()
    assert not cb.try_acquire()  # still one probe at a time


def test_last_change_names_the_cause_of_every_transition() -> None:
    cb, clock, _moves = breaker(threshold=2, reset=10)
    causes: list[tuple[str, str, str]] = []

    def note() -> None:
        assert cb.last_change is not None
        before, after, _at, cause = cb.last_change
        causes.append((before.value, after.value, cause))

    assert cb.last_change is None  # never moved
    cb.record(UNAVAILABLE)
    cb.record(UNAVAILABLE)
    note()
    clock.now += 10
    assert cb.try_acquire()  # half-opens on reading the state
    note()
    cb.record(UNAVAILABLE)
    note()
    clock.now += 10
    assert cb.try_acquire()
    note()
    cb.record(grpc.StatusCode.OK)
    note()
    assert cb.open_on_hint()
    note()
    # These are the causes /api/admin/traffic shows as lastTransition.cause.
    assert causes == [
        ("closed", "open", "failures"),
        ("open", "half_open", "reset timeout"),
        ("half_open", "open", "probe failed"),
        ("open", "half_open", "reset timeout"),
        ("half_open", "closed", "probe"),
        ("closed", "open", "hint"),
    ]


def test_last_change_is_stamped_with_the_wall_clock() -> None:
    cb, _clock, _moves = breaker(threshold=1)
    before = time.time()
    cb.record(UNAVAILABLE)
    after = time.time()
    assert cb.last_change is not None
    # The admin API shows when it happened as wall-clock seconds, not the breaker's monotonic clock.
    assert before <= cb.last_change[2] <= after


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"failure_threshold": 0}, "failure_threshold must be at least 1"),
        ({"failure_threshold": -1}, "failure_threshold must be at least 1"),
        ({"reset_timeout": 0}, "reset_timeout must be positive"),
        ({"reset_timeout": -0.5}, "reset_timeout must be positive"),
        ({"half_open_probes": 0}, "half_open_probes must be at least 1"),
    ],
)
def test_the_policy_refuses_each_impossible_value_with_its_reason(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        BreakerPolicy(**fields)


def test_the_policy_accepts_the_smallest_sensible_values() -> None:
    policy = BreakerPolicy(failure_threshold=1, reset_timeout=0.001, half_open_probes=1)
    assert (policy.failure_threshold, policy.reset_timeout, policy.half_open_probes) == (1, 0.001, 1)
    assert BreakerPolicy(reset_timeout=0.5).reset_timeout == 0.5  # under a second is fine


def test_a_hint_for_a_breaker_already_open_changes_nothing() -> None:
    cb, clock, moves = breaker(threshold=1, reset=10)
    cb.record(UNAVAILABLE)
    opened = cb.last_change
    clock.now += 4
    assert not cb.open_on_hint()  # not "applied": it was open already
    # Still the first opening: same transition, and its reset timeout runs from then, not from the hint.
    assert cb.last_change == opened
    assert cb.retry_after == 6
    assert moves == ["closed->open"]


def test_a_hint_for_a_half_open_breaker_leaves_the_decision_to_its_probe() -> None:
    cb, clock, moves = breaker(threshold=1, reset=10)
    cb.record(UNAVAILABLE)
    clock.now += 10
    assert cb.try_acquire()
    assert not cb.open_on_hint()
    assert cb.state is BreakerState.HALF_OPEN
    cb.record(grpc.StatusCode.OK)
    assert moves == ["closed->open", "open->half_open", "half_open->closed"]
