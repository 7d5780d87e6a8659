"""Password hashing: argon2id (argon2-cffi), off the event loop, with the same cost for unknown users.

An unknown username is checked against a dummy hash made with the same parameters, so that a login
takes about as long whether the user exists or not, and the answer cannot tell them apart.

A hash costs about a quarter of a second of every core it has lanes for, so logins are what an
attacker sends to make everything else slow. Hashes run at most `maxConcurrent` at once, with at
most `maxQueued` waiting, each for at most `maxQueueWait` seconds: a login beyond that is refused
(HashingBusy, RESOURCE_EXHAUSTED) rather than queued behind seconds of work. And they run on threads
of the lowest CPU priority (nice 19 and SCHED_IDLE, inherited by argon2's own lane threads), so that a
process serving calls and logins side by side (`upf run`) keeps serving the calls first. On a machine
whose cores are all busy serving calls, hashes wait (and logins with them) until a core is idle.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from plugins.auth.settings import PasswordHashSettings

__all__ = ["HashingBusy", "Passwords"]

# Nice value of the hashing threads: the lowest, so a hash takes only what serving calls leaves (at 10,
# bench.login_flood's calls saw p99 x 2.9 during a flood of bad logins on 2 cores; at 19, x 1.7-2.3;
# at 19 with SCHED_IDLE, x 1.80-2.17, median 1.88 of 5 runs on a quiet machine, against 2.30 of 3).
_LOWER_PRIORITY = 19


class HashingBusy(Exception):
    """Every hashing slot is taken and the queue is full: the login is refused, not queued."""


def _lower_priority() -> None:
    # Linux: nice and the scheduling policy are per thread, and threads argon2 starts inherit them.
    # Elsewhere: a no-op.
    thread = threading.get_native_id()
    with contextlib.suppress(AttributeError, OSError):
        os.setpriority(os.PRIO_PROCESS, thread, _LOWER_PRIORITY)
    # SCHED_IDLE besides: a thread serving calls that wakes up preempts a hash at once, where against
    # nice 19 it may wait out the scheduler's wakeup granularity, which is what a call's p99 sees.
    # Lowering its own priority needs no privilege.
    with contextlib.suppress(AttributeError, OSError):
        os.sched_setscheduler(thread, os.SCHED_IDLE, os.sched_param(0))


class Passwords:
    def __init__(self, settings: PasswordHashSettings, *, max_concurrent: int | None = None) -> None:
        self._hasher = PasswordHasher(
            time_cost=settings.time_cost, memory_cost=settings.memory_cost, parallelism=settings.parallelism
        )
        # Each hash holds memory_cost KiB and `parallelism` cores while it runs: by default no more
        # hashes at once than the machine has cores for.
        cores = os.cpu_count() or 2
        slots = max_concurrent or settings.max_concurrent or max(1, cores // settings.parallelism)
        self.max_concurrent = slots
        self.max_queued = settings.max_queued
        self.max_queue_wait = settings.max_queue_wait
        self._slots = asyncio.Semaphore(slots)
        self._admitted = 0  # hashes running or waiting for a slot
        self._threads = ThreadPoolExecutor(slots, thread_name_prefix="argon2", initializer=_lower_priority)
        self._dummy: str | None = None

    def close(self) -> None:
        self._threads.shutdown(wait=False, cancel_futures=True)

    @contextlib.contextmanager
    def _admission(self) -> Iterator[None]:
        """A place among the hashes running or waiting, or HashingBusy at once."""
        if self._admitted >= self.max_concurrent + self.max_queued:
            raise HashingBusy(f"{self._admitted} password checks are running or waiting")
        self._admitted += 1
        try:
            yield
        finally:
            self._admitted -= 1

    async def _run(self, function: object, *args: str, queue_wait: float | None = None) -> object:
        """`function(*args)` on a hashing thread once a slot is free (HashingBusy after `queue_wait` s)."""
        try:
            await asyncio.wait_for(self._slots.acquire(), queue_wait)
        except TimeoutError:
            raise HashingBusy(f"no password check slot within {queue_wait:g} s") from None
        try:
            return await asyncio.get_running_loop().run_in_executor(self._threads, function, *args)  # type: ignore[arg-type]
        finally:
            self._slots.release()

    async def prepare(self) -> None:
        """Make the dummy hash now, so that not even the first unknown user's login takes longer."""
        if self._dummy is None:
            self._dummy = await self.hash(secrets.token_urlsafe(16))

    async def hash(self, password: str) -> str:
        """A new hash (accounts made or rehashed: waits for a slot, never refused)."""
        result = await self._run(self._hasher.hash, password)
        assert isinstance(result, str)
        return result

    async def verify(self, stored: str | None, password: str, *, wait: bool = False) -> bool:
        """Whether `password` matches `stored`; None (an unknown user) costs the same and is False.

        Raises:
            HashingBusy: too many checks are running and waiting already (unless `wait`: the
                accounts the plugin makes itself wait their turn).
        """
        queue_wait = None if wait else self.max_queue_wait
        with contextlib.nullcontext() if wait else self._admission():
            if stored is None:
                await self.prepare()
                assert self._dummy is not None
                await self._check(self._dummy, password, queue_wait)
                return False
            return await self._check(stored, password, queue_wait)

    def needs_rehash(self, stored: str) -> bool:
        """True when `stored` was made with other parameters than the configured ones."""
        try:
            return self._hasher.check_needs_rehash(stored)
        except InvalidHashError:
            return True

    async def _check(self, stored: str, password: str, queue_wait: float | None) -> bool:
        try:
            return bool(await self._run(self._hasher.verify, stored, password, queue_wait=queue_wait))
        except (VerificationError, InvalidHashError):
            return False
