"""Retries of calls an upstream refused before answering, within a budget (Finagle / Envoy style).

A call is retried only when all of these hold:
- its method's manifest policy says `idempotent: true` (running it twice is harmless);
- its request is fully buffered, so it can be sent again (gRPC-Web always; native gRPC when the
  client had half-closed before the call started: unary and server-streaming calls, in practice;
  grpc-websockets calls stream their request upstream as it comes and are never retried);
- the attempt failed with UNAVAILABLE, or the connection failed, was refused or went away
  (GOAWAY, REFUSED_STREAM), before any response byte reached the client (the response headers
  count: they go out as soon as the replica sends them, so a replica that answered headers and
  then failed is not retried, as with gRPC's own retries once headers were received);
- the budget has room, and attempts are left (`retries.maxAttempts`, the first included).

The next attempt goes to another replica when there is one whose breaker lets it through (one
replica alone is tried again: a connection that went away may be back). The failed attempt counts
for its replica's breaker like any other failure. The call's deadline covers every attempt.

The budget (`RetryBudget`) bounds retries to `budgetRatio` of the retryable calls seen over a sliding
window of 10 s, plus `minPerSecond` x 10 s so that a quiet service can retry at all: a storm of
failures adds at most that fraction of load to the replicas that are left, instead of multiplying it.
"""

from __future__ import annotations

import time

import grpc

from common.clock import Clock
from gateway.errors import UpstreamUnavailable
from gateway.settings import RetrySettings
from gateway.upstream.pool import Replica, Route

__all__ = ["Retries", "RetryBudget"]


class RetryBudget:
    """Retries allowed over a sliding window of `window` seconds, kept in `slots` buckets."""

    __slots__ = ("_calls", "_clock", "_current", "_retries", "_width", "min_per_second", "ratio", "window")

    def __init__(
        self,
        ratio: float,
        min_per_second: float,
        *,
        window: float = 10.0,
        slots: int = 10,
        clock: Clock = time.monotonic,
    ) -> None:
        if not 0 <= ratio <= 1 or min_per_second < 0 or window <= 0 or slots < 1:
            raise ValueError("ratio must be within 0..1, min_per_second >= 0, window > 0, slots >= 1")
        self.ratio = ratio
        self.min_per_second = min_per_second
        self.window = window
        self._width = window / slots
        self._clock = clock
        self._calls = [0] * slots
        self._retries = [0] * slots
        self._current = int(clock() / self._width)

    def _slot(self) -> int:
        """The current bucket's index, clearing the buckets that slid out of the window."""
        now = int(self._clock() / self._width)
        size = len(self._calls)
        if now != self._current:
            for tick in range(max(self._current + 1, now - size + 1), now + 1):
                self._calls[tick % size] = 0
                self._retries[tick % size] = 0
            self._current = now
        return now % size

    def deposit(self) -> None:
        """A retryable call started (its first attempt)."""
        self._calls[self._slot()] += 1

    def withdraw(self) -> bool:
        """May one retry go now? If so it is counted."""
        slot = self._slot()
        if sum(self._retries) >= self.ratio * sum(self._calls) + self.min_per_second * self.window:
            return False
        self._retries[slot] += 1
        return True

    def state(self) -> dict[str, float]:
        self._slot()
        calls, retries = sum(self._calls), sum(self._retries)
        allowed = self.ratio * calls + self.min_per_second * self.window
        return {
            "windowSeconds": self.window,
            "calls": calls,
            "retries": retries,
            "available": max(0, int(allowed - retries)),
        }


class Retries:
    """The `retries` settings at work: the budget, the attempts, and what happened (for /metrics)."""

    def __init__(self, settings: RetrySettings, *, clock: Clock = time.monotonic) -> None:
        self.settings = settings
        self.max_attempts = settings.max_attempts
        self.budget = RetryBudget(settings.budget_ratio, settings.min_per_second, clock=clock)
        self.attempted = 0
        self.succeeded = 0
        self.budget_exhausted = 0

    def next_replica(self, route: Route, failed: Replica) -> Replica | None:
        """The replica for a retry after `failed` refused the call; None: no retry (the caller
        answers with the failure it has). The caller must `report` on the replica it gets."""
        try:
            endpoint = route.pick(avoid=failed)
        except UpstreamUnavailable:
            return None  # every other replica's breaker is open
        if not self.budget.withdraw():
            endpoint.report(grpc.StatusCode.CANCELLED)  # not used after all: proves nothing
            self.budget_exhausted += 1
            return None
        self.attempted += 1
        return endpoint

    def finished(self, code: grpc.StatusCode) -> None:
        """How a call that was retried at least once ended."""
        if code is grpc.StatusCode.OK:
            self.succeeded += 1

    def state(self) -> dict[str, object]:
        return {
            "enabled": True,
            "budgetRatio": self.settings.budget_ratio,
            "minPerSecond": self.settings.min_per_second,
            "maxAttempts": self.max_attempts,
            "budget": self.budget.state(),
            "attempted": self.attempted,
            "succeeded": self.succeeded,
            "budgetExhausted": self.budget_exhausted,
        }
