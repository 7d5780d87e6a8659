"""Limits on /api/auth/login and /api/auth/refresh: password guessing, and logins as a way to burn CPU.

Two checks before the auth plugin is asked (each refusal: 429 / RESOURCE_EXHAUSTED with Retry-After,
and no password hash computed):

- failed attempts per client address: a token bucket per address for logins and another for
  refreshes (auth.login.failedLoginsPerMinute / failedLoginBurst, and the refresh pair), which a
  failed attempt empties by one and an attempt under way holds a token of; a success costs nothing,
  so a user (or a page polling) that signs in correctly is never held back, while guessing from one
  address, over any number of usernames, soon waits;
- failed logins per username and client address, as Keycloak's brute-force detection counts them:
  after `freeFailures` failures each attempt must wait `waitIncrement` seconds, doubled per further
  failure, up to `maxWait`; a success, or `failureReset` seconds without a failure, forgets them.

Failures are counted per username *and* address, not per username alone: an attacker guessing from
elsewhere then cannot keep the real user out (Keycloak's per-user lockout can be used exactly so).
A guesser with many addresses gets `freeFailures` tries per address and username, then waits; the
plugin's bound on hashes at once (plugins/auth/passwords.py) caps what all of them together cost.

State is this process's (each gateway replica counts on its own), bounded by `maxTracked` entries
per table, the least recently used forgotten first.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import grpc

from gateway.errors import GatewayError, RateLimited
from gateway.ratelimit.bucket import Clock
from gateway.settings import LoginLimitSettings

__all__ = ["LoginGuard"]

Attempt = Literal["login", "refresh"]


class _FailureBuckets:
    """A token bucket per address that failures take from; attempts under way hold a token each."""

    def __init__(self, per_minute: float, burst: int, max_keys: int, clock: Clock) -> None:
        self.rate = per_minute / 60
        self.burst = burst
        self.max_keys = max_keys
        self.clock = clock
        self._levels: OrderedDict[str, tuple[float, float]] = OrderedDict()  # address -> (tokens, when)
        self._pending: dict[str, int] = {}

    def _level(self, address: str) -> float:
        now = self.clock()
        tokens, when = self._levels.get(address, (float(self.burst), now))
        return min(float(self.burst), tokens + (now - when) * self.rate)

    def begin(self, address: str) -> float:
        """Holds a token for an attempt; returns 0, or the seconds until one is free (refused)."""
        free = self._level(address) - self._pending.get(address, 0)
        if free < 1:
            return (1 - free) / self.rate
        self._pending[address] = self._pending.get(address, 0) + 1
        return 0.0

    def end(self, address: str, *, failed: bool) -> None:
        pending = self._pending.pop(address, 1) - 1
        if pending > 0:
            self._pending[address] = pending
        if failed:
            level = self._level(address) - 1
            self._levels.pop(address, None)  # re-inserted last: the most recently used
            self._levels[address] = (level, self.clock())
            if len(self._levels) > self.max_keys:
                self._levels.popitem(last=False)


class LoginGuard:
    def __init__(self, settings: LoginLimitSettings, *, clock: Clock = time.monotonic) -> None:
        self.settings = settings
        self.clock = clock
        self._buckets: dict[Attempt, _FailureBuckets] = {
            "login": _FailureBuckets(
                settings.failed_logins_per_minute, settings.failed_login_burst, settings.max_tracked, clock
            ),
            "refresh": _FailureBuckets(
                settings.failed_refreshes_per_minute, settings.failed_refresh_burst, settings.max_tracked, clock
            ),
        }
        # (username, address) -> (failures in a row, when the last one was), least recently failed first.
        self._failures: OrderedDict[tuple[str, str], tuple[int, float]] = OrderedDict()

    @contextmanager
    def attempt(self, kind: Attempt, address: str, username: str | None = None) -> Iterator[None]:
        """Around one call to the auth plugin: refused at once, or let through and its outcome counted.

        An UNAUTHENTICATED answer (wrong password, unknown user, bad refresh token) is a failure.

        Raises:
            RateLimited: `address` has failed too often, or `username` must wait after failures.
        """
        if username is not None:
            wait = self._wait(username, address)
            if wait > 0:
                raise RateLimited("too many failed sign-ins for this user; try again later", headers=_retry_after(wait))
        buckets = self._buckets[kind]
        wait = buckets.begin(address)
        if wait > 0:
            raise RateLimited(
                f"too many failed {kind} attempts from this address; try again later", headers=_retry_after(wait)
            )
        outcome: str | None = None  # "failed", "succeeded", or None: neither (the plugin busy or down)
        try:
            yield
            outcome = "succeeded"
        except GatewayError as exc:
            if exc.code is grpc.StatusCode.UNAUTHENTICATED:
                outcome = "failed"
            raise
        finally:
            buckets.end(address, failed=outcome == "failed")
            if username is not None and outcome == "failed":
                self._failed(username, address)
            elif username is not None and outcome == "succeeded":
                self._failures.pop((_fold(username), address), None)

    def _failed(self, username: str, address: str) -> None:
        key = (_fold(username), address)
        now = self.clock()
        failures, last = self._failures.pop(key, (0, now))
        if now - last >= self.settings.failure_reset:
            failures = 0
        self._failures[key] = (failures + 1, now)
        if len(self._failures) > self.settings.max_tracked:
            self._failures.popitem(last=False)

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
