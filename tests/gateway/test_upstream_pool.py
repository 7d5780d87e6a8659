"""UpstreamPool: power-of-two-choices on in-flight calls, and routes replaced at run time."""

from __future__ import annotations

import random
from collections import Counter

import grpc
import pytest

from gateway.errors import UnknownService, UpstreamUnavailable
from gateway.upstream.breaker import BreakerPolicy
from gateway.upstream.pool import Replica, Route, UpstreamPool
from gateway.upstream.registry_routes import _matches

OK = grpc.StatusCode.OK
A, B, C = "127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"


def test_p2c_prefers_the_replica_with_fewer_calls_in_flight() -> None:
    pool = UpstreamPool({"a.v1.S": [A, B]}, max_message_bytes=1024, balancing="p2c")
    route = pool.route("a.v1.S")
    held = [route.pick() for _ in range(10)]
    # With two replicas p2c always compares both: in-flight calls alternate, never more than 1 apart.
    assert Counter(e.address for e in held) == {A: 5, B: 5}
    for endpoint in held:
        if endpoint.address == A:
            endpoint.report(OK)
    assert {route.pick().address for _ in range(5)} == {A}  # A is idle, B has 5 in flight
    assert [e.inflight for e in route.endpoints] == [5, 5]


def test_p2c_spreads_evenly_and_counts_in_flight_calls() -> None:
    endpoints = [Replica(address, client=None, breaker=None) for address in (A, B, C)]  # type: ignore[arg-type]
    route = Route("a.v1.S", endpoints, balancing="p2c", rng=random.Random(7))
    counts: Counter[str] = Counter()
    for _ in range(300):
        endpoint = route.pick()
        counts[endpoint.address] += 1
        assert endpoint.inflight == 1
        endpoint.report(OK)
        assert endpoint.inflight == 0
    assert all(60 < n < 140 for n in counts.values()), counts


def test_p2c_skips_a_replica_whose_breaker_is_open() -> None:
    pool = UpstreamPool(
        {"a.v1.S": [A, B]},
        max_message_bytes=1024,
        balancing="p2c",
        breakers=BreakerPolicy(failure_threshold=1, reset_timeout=60),
    )
    route = pool.route("a.v1.S")
    # p2c picks at random: call until A has had its failing call (2**-100 odds of never reaching it).
    for _ in range(100):
        endpoint = route.pick()
        if endpoint.address == A:
            endpoint.report(grpc.StatusCode.UNAVAILABLE)
            break
        endpoint.report(OK)
    else:
        pytest.fail("p2c never picked replica A")
    assert {route.pick().address for _ in range(6)} == {B}


def test_round_robin_stays_the_default_of_the_pool() -> None:
    pool = UpstreamPool({"a.v1.S": [A, B]}, max_message_bytes=1024)
    route = pool.route("a.v1.S")
    picked = [route.pick() for _ in range(4)]
    assert [e.address for e in picked] == [A, B, A, B]


def test_update_replaces_routes_and_keeps_endpoints_clients_and_breakers() -> None:
    pool = UpstreamPool(
        {"static.v1.S": [A]}, max_message_bytes=1024, breakers=BreakerPolicy(failure_threshold=3, reset_timeout=5)
    )
    pool.update({"dyn.v1.S": [A, B], "static.v1.S": [C]})
    assert pool.services == ["dyn.v1.S", "static.v1.S"]
    assert [e.address for e in pool.route("static.v1.S").endpoints] == [A]  # static wins
    before = pool.route("dyn.v1.S")
    a, b = before.endpoints
    assert a.client is pool.route("static.v1.S").endpoints[0].client  # one client per address
    b.breaker.record(grpc.StatusCode.UNAVAILABLE)  # type: ignore[union-attr]

    pool.update({"dyn.v1.S": [B, C]})
    after = pool.route("dyn.v1.S")
    assert after is not before  # replaced whole: a pick sees the old or the new list
    assert after.endpoints[0] is b  # same address: same Replica, client and breaker state
    assert after.endpoints[1].address == C
    assert before.endpoints[0] is a  # a call that picked from the old route still holds its endpoint

    unchanged = pool.route("dyn.v1.S")
    pool.update({"dyn.v1.S": [B, C]})
    assert pool.route("dyn.v1.S") is unchanged

    pool.update({})
    assert pool.services == ["static.v1.S"]
    # Routed once, so a plugin provides it: no instance now is UNAVAILABLE, not an unknown service.
    with pytest.raises(UpstreamUnavailable, match=r"dyn\.v1\.S is unavailable: no instance of it can take calls now"):
        pool.route("dyn.v1.S")
    with pytest.raises(UnknownService):
        pool.route("never.v1.S")
    pool.update({}, registered=["listed.v1.S"])  # a registered plugin's service, no instance yet
    with pytest.raises(UpstreamUnavailable, match=r"listed\.v1\.S is unavailable"):
        pool.route("listed.v1.S")


def test_a_client_leaving_the_table_is_closed_only_after_its_last_call() -> None:
    closed: list[str] = []
    pool = UpstreamPool({}, max_message_bytes=1024)
    pool.update({"dyn.v1.S": [A, B]})
    route = pool.route("dyn.v1.S")
    for endpoint in route.endpoints:

        def close(address: str = endpoint.address) -> None:
            closed.append(address)

        endpoint.client.close = close  # type: ignore[method-assign]
    busy = route.pick()  # A: a call in flight
    assert busy.address == A
    pool.update({"dyn.v1.S": [A]})
    assert closed == [B]  # idle: closed at once
    pool.update({})
    assert closed == [B]  # A still has a call in flight
    busy.report(OK)
    assert closed == [B, A]


def test_if_none_match() -> None:
    assert _matches('"x", W/"abc"', '"abc"')
    assert _matches("*", '"abc"')
    assert not _matches('"abd"', '"abc"')
    assert not _matches(None, '"abc"')
