"""LoginGuard's arithmetic on the test's clock: the backoff grows, is capped, and is forgotten; the
per-address buckets count failures and attempts under way, never successes
(gateway/auth/login_guard.py; the whole flow on a real `upf run` is test_login_limits.py)."""

from __future__ import annotations

import contextlib
from typing import Literal

import pytest

from gateway.auth.login_guard import LoginGuard
from gateway.errors import RateLimited, Unauthenticated
from gateway.settings import LoginLimitSettings
from tests.support.clock import ManualClock

Outcome = Literal["ok", "wrong"]


def guard(clock: ManualClock, **settings: object) -> LoginGuard:
    limits = {"freeFailures": 2, "waitIncrement": 1.0, "maxWait": 8.0, "failureReset": 600.0, **settings}
    return LoginGuard(LoginLimitSettings.model_validate(limits), clock=clock)


def login(
    guard: LoginGuard, outcome: Outcome = "wrong", username: str | None = "demo", address: str = "ip:a"
) -> int | None:
    """One attempt: Retry-After when refused, None when it reached the plugin (which answered `outcome`)."""
    kind: Literal["login", "refresh"] = "login" if username is not None else "refresh"
    try:
        with contextlib.suppress(Unauthenticated), guard.attempt(kind, address, username):
            if outcome == "wrong":
                raise Unauthenticated("invalid username or password")
    except RateLimited as refused:
        return int(refused.headers["retry-after"])
    return None


def fail(
    limits: LoginGuard, clock: ManualClock, times: int, username: str = "demo", address: str = "ip:a"
) -> list[int]:
    """`times` wrong passwords that reach the plugin, waiting out each refusal: the waits seen."""
    waits = []
    for _ in range(times):
        while (wait := login(limits, "wrong", username, address)) is not None:
            waits.append(wait)
            clock.now += wait
    return waits


def test_failures_beyond_the_free_ones_wait_twice_as_long_each_time_up_to_max_wait() -> None:
    clock = ManualClock()
    limits = guard(clock, failedLoginBurst=100)
    assert fail(limits, clock, 7) == [1, 2, 4, 8, 8]


def test_the_count_is_per_user_and_address_case_folded_and_a_success_forgets_it() -> None:
    clock = ManualClock()
    limits = guard(clock)
    fail(limits, clock, 3, username="Demo ")
    assert login(limits, "ok", "demo", "ip:a") == 2
    assert login(limits, "ok", "demo", "ip:b") is None  # the real user elsewhere
    assert login(limits, "ok", "other", "ip:a") is None
    clock.now += 2
    assert login(limits, "ok") is None  # the wait is over, and the success forgets the failures
    assert fail(limits, clock, 2) == []  # free again


def test_failures_are_forgotten_after_failure_reset() -> None:
    clock = ManualClock()
    limits = guard(clock)
    fail(limits, clock, 4)
    clock.now += 600
    assert fail(limits, clock, 2) == []  # counting started over


@pytest.mark.parametrize("username", ["a-user", None], ids=["login", "refresh"])
def test_failed_attempts_per_address_are_a_bucket_and_successes_cost_nothing(username: str | None) -> None:
    clock = ManualClock()
    limits = guard(
        clock, failedLoginsPerMinute=60, failedLoginBurst=3, failedRefreshesPerMinute=60, failedRefreshBurst=3
    )
    for _ in range(20):
        assert login(limits, "ok", username) is None  # a page polling with the right password
    for i in range(3):
        assert login(limits, "wrong", username and f"{username}-{i}") is None  # other names: no backoff
    assert login(limits, "ok", username) == 1  # the address's failures are spent
    assert login(limits, "ok", username, address="ip:b") is None
    clock.now += 1
    assert login(limits, "ok", username) is None


def test_attempts_under_way_hold_a_token() -> None:
    limits = guard(ManualClock(), failedLoginBurst=2)
    with limits.attempt("login", "ip:a", "x"), limits.attempt("login", "ip:a", "y"):
        assert login(limits, "ok", "z") is not None  # two under way: a third would be beyond the burst
    assert login(limits, "ok", "z") is None  # both ended well
