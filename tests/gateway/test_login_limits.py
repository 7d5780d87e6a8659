"""Login limits on a real `upf run` (the embedded auth plugin, its demo user, argon2 as configured):
failed logins back off per username and address, attempts are limited per address, and password
checks beyond what the plugin runs at once are refused at once (gateway/auth/login_guard.py,
plugins/auth/passwords.py). Client addresses come from X-Forwarded-For, the gateway trusting
loopback as its proxy.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator

import httpx
import pytest

from cli.allinone import DEMO_USER
from tests.support.processes import Gateway, free_port, run_gateway, wait_until

PASSWORD = str(DEMO_USER["password"])
FREE_FAILURES = 5  # auth.login defaults
LOGIN_BURST = 10


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    work_dir = tmp_path_factory.mktemp("login-limits")
    config = {
        "registryUrl": f"127.0.0.1:{free_port()}",
        "rateLimiting": {"trustedProxies": ["127.0.0.1/32"]},
        "shell": {"enabled": False},
    }
    # `upf run` starts the whole platform: more than a gateway's start-up on a busy machine.
    with run_gateway(config, work_dir, command="run", ready_timeout=60) as gateway:
        wait_until(lambda: _login(gateway, "203.0.113.1").status_code == 200, timeout=30, what="the demo user")
        yield gateway


def _login(gateway: Gateway, address: str, password: str = PASSWORD, username: str = "demo") -> httpx.Response:
    return httpx.post(
        f"{gateway.url}/api/auth/login",
        json={"username": username, "password": password},
        headers={"x-forwarded-for": address},
        timeout=30,
    )


def test_failed_logins_back_off_per_user_and_address_without_locking_the_user_out(platform: Gateway) -> None:
    guesser = "198.51.100.20"
    answers = [_login(platform, guesser, "wrong").status_code for _ in range(FREE_FAILURES)]
    assert answers == [401] * FREE_FAILURES

    refused = _login(platform, guesser)  # even the right password waits now, at this address
    assert refused.status_code == 429
    assert refused.json()["code"] == "RESOURCE_EXHAUSTED"
    assert "failed sign-ins" in refused.json()["message"]
    assert int(refused.headers["retry-after"]) >= 1

    # The real user, elsewhere, signs in at once.
    assert _login(platform, "198.51.100.21").status_code == 200
    # And the guesser's address is let try again once its wait is over.
    wait_until(lambda: _login(platform, guesser).status_code == 200, timeout=10, what="the wait to end")
    # A success forgets the failures: a new wrong password is answered, not refused.
    assert _login(platform, guesser, "wrong").status_code == 401


async def test_attempts_per_address_and_password_checks_at_once_are_bounded(platform: Gateway) -> None:
    address = "198.51.100.30"
    async with httpx.AsyncClient(base_url=platform.url, timeout=60) as http:

        async def attempt(i: int) -> httpx.Response:
            return await http.post(
                "/api/auth/login",
                json={"username": f"nobody-{i}", "password": "guess"},
                headers={"x-forwarded-for": address},
            )

        answers = await asyncio.gather(*(attempt(i) for i in range(LOGIN_BURST + 2)))
    statuses = [answer.status_code for answer in answers]
    assert set(statuses) <= {401, 429}, statuses
    messages = [answer.json()["message"] for answer in answers if answer.status_code == 429]
    assert any("from this address" in message for message in messages), messages
    # The embedded plugin checks cores / 4 passwords at once (at least 1) with 4 more waiting;
    # the rest of the burst is refused at once, RESOURCE_EXHAUSTED, no hash computed.
    at_once = max(1, (os.cpu_count() or 2) // 4) + 4
    if at_once < LOGIN_BURST:
        assert any("at once" in message for message in messages), messages
        assert statuses.count(401) <= at_once
