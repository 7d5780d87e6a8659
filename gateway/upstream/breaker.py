"""Circuit breakers: one per service replica, so a failing replica stops getting calls at once.

The design is pybreaker's (states, consecutive-failure counting, a listener for transitions), made
for one asyncio event loop: no locks are needed because no state change spans an `await`, and
time comes from an injected monotonic clock so tests move it by hand. pybreaker itself relies on
threading locks, drives async code only through Tornado, and reads the wall clock.

    CLOSED --(failure_threshold consecutive failures)--> OPEN --(reset_timeout)--> HALF_OPEN
    HALF_OPEN --(a probe succeeds)--> CLOSED        HALF_OPEN --(a probe fails)--> OPEN

Only the upstream's own trouble counts as a failure: transport errors and, by default, the statuses
UNAVAILABLE and DEADLINE_EXCEEDED. Client errors (INVALID_ARGUMENT, NOT_FOUND, ...) prove that the
replica is alive and count as successes; a call the client cancelled counts as nothing.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc

from common.clock import Clock

__all__ = ["BreakerPolicy", "BreakerState", "CircuitBreaker", "Clock", "TransitionListener"]


class BreakerState(enum.Enum):
    CLOSED = "closed"  # calls flow; consecutive failures are counted
    OPEN = "open"  # calls fail at once, without touching the network
    HALF_OPEN = "half_open"  # a bounded number of probe calls decide between CLOSED and OPEN


TransitionListener = Callable[[str, BreakerState, BreakerState], None]


@dataclass(frozen=True, slots=True)
class BreakerPolicy:
    failure_threshold: int = 5  # consecutive failures that open the breaker
    reset_timeout: float = 30.0  # seconds open before probes are let through
    half_open_probes: int = 1  # probe calls in flight at once while half-open
    failure_codes: frozenset[grpc.StatusCode] = field(
        default_factory=lambda: frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
    )

    def __post_init__(self) -> None:
        if self.failure_threshold < 1:
            raise ValueError("failure_threshold must be at least 1")
        if self.reset_timeout <= 0:
            raise ValueError("reset_timeout must be positive")
        if self.half_open_probes < 1:
            raise ValueError("half_open_probes must be at least 1")


class CircuitBreaker:
    __slots__ = (
        "_clock", "_failures", "_listener", "_opened_at", "_probe_started", "_probes", "_state", "last_change", "name",
        "policy",
    )  # fmt: skip

    def __init__(
        self,
        name: str,
        policy: BreakerPolicy,
        *,
        clock: Clock = time.monotonic,
        listener: TransitionListener | None = None,
    ) -> None:
        self.name = name
        self.policy = policy
        self._clock = clock
        self._listener = listener
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._probes = 0
        self._probe_started = 0.0
        # The last transition, for /api/admin/traffic: (from, to, wall-clock seconds, cause).
        self.last_change: tuple[BreakerState, BreakerState, float, str] | None = None

    @property
    def failures(self) -> int:
        """Consecutive failures counted while closed."""
        return self._failures

    @property
    def state(self) -> BreakerState:
        if self._state is BreakerState.OPEN and self._clock() - self._opened_at >= self.policy.reset_timeout:
            self._move(BreakerState.HALF_OPEN)
        return self._state

    @property
    def retry_after(self) -> float:
        """Seconds until an open breaker lets a probe through (0 when it is not open)."""
        if self.state is not BreakerState.OPEN:
            return 0.0
        return max(0.0, self.policy.reset_timeout - (self._clock() - self._opened_at))

    def try_acquire(self) -> bool:
        """May a call go to this replica now? A True while half-open reserves a probe slot."""
        state = self.state
        if state is BreakerState.CLOSED:
            return True
        if state is BreakerState.HALF_OPEN:
            now = self._clock()
            if self._probes >= self.policy.half_open_probes and now - self._probe_started >= self.policy.reset_timeout:
                # Probes that never reported back (lost, or still hanging) must not hold the breaker
                # half-open for ever: after another reset_timeout, new probes may go.
                self._probes = 0
            if self._probes < self.policy.half_open_probes:
                self._probes += 1
                self._probe_started = now
                return True
        return False

    def record(self, code: grpc.StatusCode) -> None:
        """The outcome of a call that try_acquire let through."""
        if code in self.policy.failure_codes:
            self.record_failure()
        elif code is grpc.StatusCode.CANCELLED:
            self.release()
        else:
            self.record_success()

    def record_success(self) -> None:
        if self._state is BreakerState.HALF_OPEN:
            self._move(BreakerState.CLOSED)  # which also frees every probe slot
        self._failures = 0

    def record_failure(self) -> None:
        if self._state is BreakerState.HALF_OPEN:
            self._open(cause="probe failed")  # which also frees every probe slot
            return
        if self._state is BreakerState.CLOSED:
            self._failures += 1
            if self._failures >= self.policy.failure_threshold:
                self._open()

    def release(self) -> None:
        """A call that proved nothing (the client cancelled it): give its probe slot back."""
        if self._state is BreakerState.HALF_OPEN:
            self._probes = max(0, self._probes - 1)

    def open_on_hint(self) -> bool:
        """Another gateway saw this replica fail and opened its breaker: open this one too, unless it
        is half-open already (its own probe decides then). It half-opens on its own clock, after
        reset_timeout. Returns whether it opened."""
        if self.state is not BreakerState.CLOSED:
            return False
        self._open(cause="hint")
        return True

    def _open(self, cause: str = "failures") -> None:
        self._opened_at = self._clock()
        self._failures = 0
        self._move(BreakerState.OPEN, cause)

    def _move(self, state: BreakerState, cause: str = "") -> None:
        if state is self._state:
            return
        previous, self._state = self._state, state
        if not cause:
            cause = "reset timeout" if state is BreakerState.HALF_OPEN else "probe"
        self.last_change = (previous, state, time.time(), cause)
        if state is not BreakerState.HALF_OPEN:
            self._probes = 0
        if self._listener is not None:
            self._listener(self.name, previous, state)
