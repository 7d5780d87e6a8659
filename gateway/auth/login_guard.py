"""Limits on /api/auth/login and /api/auth/refresh: password guessing, and logins as a way to burn CPU.

Two checks before the auth plugin is asked (each refusal: 429 / RESOURCE_EXHAUSTED with Retry-After,
and no password hash computed):

- attempts per client address: a token bucket for logins and another for refreshes
  (auth.login.loginPerMinute / loginBurst, refreshPerMinute / refreshBurst);
- failed logins per username and client address, as Keycloak's brute-force detection counts them:
  after `freeFailures` failures each attempt must wait `waitIncrement` seconds, doubled per further
  failure, up to `maxWait`; a success, or `failureReset` seconds without a failure, forgets them.

Failures are counted per username *and* address, not per username alone: an attacker guessing from
elsewhere then cannot keep the real user out (Keycloak's per-user lockout can be used exactly so);
the per-address bucket is what stops one address from trying many usernames. A guesser with many
addresses gets `freeFailures` tries per address and username, then waits; the plugin's bound on
hashes at once (plugins/auth/passwords.py) caps what all of them together cost.

State is this process's (each gateway replica counts on its own), bounded by `maxTracked` entries
per table, the least recently used forgotten first.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from typing import Literal

from gateway.errors import RateLimited
from gateway.ratelimit.bucket import Clock
from gateway.ratelimit.memory import MemoryTokenBucket
from gateway.settings import LoginLimitSettings

__all__ = ["LoginGuard"]

Attempt = Literal["login", "refresh"]


class LoginGuard:
    def __init__(self, settings: LoginLimitSettings, *, clock: Clock = time.monotonic) -> None:
        self.settings = settings
        self.clock = clock
        self._buckets: dict[Attempt, MemoryTokenBucket] = {
            "login": MemoryTokenBucket(
                rate=settings.login_per_minute / 60,
                burst=settings.login_burst,
                clock=clock,
                max_keys=settings.max_tracked,
            ),
            "refresh": MemoryTokenBucket(
                rate=settings.refresh_per_minute / 60,
                burst=settings.refresh_burst,
                clock=clock,
                max_keys=settings.max_tracked,
            ),
        }
        # (username, address) -> (failures in a row, when the last one was), least recently failed first.
        self._failures: OrderedDict[tuple[str, str], tuple[int, float]] = OrderedDict()

    async def admit(self, attempt: Attempt, address: str, username: str | None = None) -> None:
        """Let an attempt through, or refuse it.

        Raises:
            RateLimited: too many attempts from `address`, or `username` must wait after failures.
        """
        if username is not None:
            wait = self._wait(username, address)
            if wait > 0:
                raise RateLimited("too many failed sign-ins for this user; try again later", headers=_retry_after(wait))
        decision = await self._buckets[attempt].take(address)
        if not decision.allowed:
            raise RateLimited(
                f"too many {attempt} attempts from this address; try again later",
                headers=_retry_after(decision.retry_after),
            )

    def failed(self, username: str, address: str) -> None:
        key = (_fold(username), address)
        now = self.clock()
        failures, last = self._failures.pop(key, (0, now))
        if now - last >= self.settings.failure_reset:
            failures = 0
        self._failures[key] = (failures + 1, now)
        if len(self._failures) > self.settings.max_tracked:
            self._failures.popitem(last=False)

    def succeeded(self, username: str, address: str) -> None:
        self._failures.pop((_fold(username), address), None)

    def _wait(self, username: str, address: str) -> float:
        """Seconds `username` must still wait at `address` before its next attempt (0: none)."""
        record = self._failures.get((_fold(username), address))
        if record is None:
            return 0.0
        failures, last = record
        elapsed = self.clock() - last
        extra = failures - self.settings.free_failures
        if extra < 0 or elapsed >= self.settings.failure_reset:
            return 0.0
        wait = min(self.settings.max_wait, self.settings.wait_increment * 2.0 ** min(extra, 32))
        return max(0.0, wait - elapsed)


def _fold(username: str) -> str:
    # One user, one count, however the name is capitalised or padded.
    return username.strip().casefold()


def _retry_after(seconds: float) -> dict[str, str]:
    return {"retry-after": str(max(1, math.ceil(seconds)))}
