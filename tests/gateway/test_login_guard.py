"""LoginGuard's arithmetic on the test's clock: the backoff grows, is capped, and is forgotten
(gateway/auth/login_guard.py; the whole flow on a real `upf run` is test_login_limits.py)."""

from __future__ import annotations

import pytest

from gateway.auth.login_guard import LoginGuard
from gateway.errors import RateLimited
from gateway.settings import LoginLimitSettings


class ManualClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def guard(clock: ManualClock, **settings: object) -> LoginGuard:
    limits = {"freeFailures": 2, "waitIncrement": 1.0, "maxWait": 8.0, "failureReset": 600.0, **settings}
    return LoginGuard(LoginLimitSettings.model_validate(limits), clock=clock)


async def refused_for(login: LoginGuard, username: str = "demo", address: str = "ip:a") -> int | None:
    """Retry-After of a refused login, None when it is let through."""
    try:
        await login.admit("login", address, username)
    except RateLimited as refused:
        return int(refused.headers["retry-after"])
    return None


async def test_failures_beyond_the_free_ones_wait_twice_as_long_each_time_up_to_max_wait() -> None:
    clock = ManualClock()
    login = guard(clock, loginBurst=100)
    waits = []
    for _ in range(7):
        assert await refused_for(login) is None  # let through: the wait, if any, is over
        login.failed("demo", "ip:a")
        waits.append(await refused_for(login))
        clock.now += 8.0
    assert waits == [None, 1, 2, 4, 8, 8, 8]


async def test_the_count_is_per_user_and_address_case_folded_and_a_success_forgets_it() -> None:
    clock = ManualClock()
    login = guard(clock)
    for _ in range(3):
        login.failed("Demo ", "ip:a")
    assert await refused_for(login, "demo", "ip:a") == 2
    assert await refused_for(login, "demo", "ip:b") is None  # the real user elsewhere
    assert await refused_for(login, "other", "ip:a") is None
    clock.now += 2
    login.succeeded("demo", "ip:a")
    login.failed("demo", "ip:a")
    assert await refused_for(login, "demo", "ip:a") is None  # one failure: free again


async def test_failures_are_forgotten_after_failure_reset() -> None:
    clock = ManualClock()
    login = guard(clock)
    for _ in range(4):
        login.failed("demo", "ip:a")
    clock.now += 600
    assert await refused_for(login) is None
    login.failed("demo", "ip:a")
    assert await refused_for(login) is None  # counting starts over


@pytest.mark.parametrize("attempt", ["login", "refresh"])
async def test_attempts_per_address_are_a_token_bucket(attempt: str) -> None:
    clock = ManualClock()
    login = guard(clock, loginPerMinute=60, loginBurst=3, refreshPerMinute=60, refreshBurst=3)
    for _ in range(3):
        await login.admit(attempt, "ip:a")  # type: ignore[arg-type]
    with pytest.raises(RateLimited) as refused:
        await login.admit(attempt, "ip:a")  # type: ignore[arg-type]
    assert refused.value.headers["retry-after"] == "1"
    await login.admit(attempt, "ip:b")  # type: ignore[arg-type]
    clock.now += 1
    await login.admit(attempt, "ip:a")  # type: ignore[arg-type]
