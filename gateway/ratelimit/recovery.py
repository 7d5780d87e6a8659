"""When the shared store (Redis) fails and comes back: how soon it is asked again, and what is owed.

After a store error the limiter decides by its failure mode (limiter.py). The store is asked again
`redisRetryInterval` seconds later, by a PING in the background that the next decision starts (a
Redis that hangs costs no request a timeout); one probe at a time. Once it answers, the tokens the
`local` fallback let through meanwhile are taken from the shared buckets (token_debit.lua), and only
then does the store decide again, so the local decisions and the shared bucket together never let
through more than the one bucket would have. Without a client to ping (a test's store), the first
decision after the interval is the probe, as it was before.

The local buckets start where the shared ones were: every decision the store makes also sets the
local bucket of that key to the remaining tokens (divided among the replicas), so a client that
had emptied its bucket does not get a fresh local one when Redis goes away.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Awaitable, Callable, Sequence
from importlib.resources import files
from typing import Any, Protocol

from redis.exceptions import RedisError

from gateway.ratelimit.bucket import Clock, StoreError

__all__ = ["DEBIT_SCRIPT", "Debtor", "StoreHealth", "pay_debts"]

logger = logging.getLogger(__name__)

DEBIT_SCRIPT = files("gateway.ratelimit").joinpath("token_debit.lua").read_text(encoding="utf-8")
_BATCH = 200  # keys per debit call: one script run should stay short for Redis


class Debtor(Protocol):
    """A limiter that may owe the store tokens spent while it could not be asked."""

    async def pay_debts(self) -> None: ...


class StoreHealth:
    """Whether the store answers, shared by every limiter on one Redis client.

    Args:
        probe: asks the store whether it answers (a PING), raising if not; None: decisions probe.
        retry_interval: seconds between tries while the store is failing.
        clock: monotonic seconds.
    """

    def __init__(self, *, probe: Callable[[], Awaitable[Any]] | None, retry_interval: float, clock: Clock) -> None:
        self.probe = probe
        self.retry_interval = retry_interval
        self.clock = clock
        self.up = True
        self._next_try = 0.0
        self._probing: asyncio.Task[None] | None = None
        self._debtors: weakref.WeakSet[Any] = weakref.WeakSet()

    def owes(self, debtor: Debtor) -> None:
        """`debtor` pays its debts before the store is trusted again."""
        self._debtors.add(debtor)

    def due(self) -> bool:
        """Whether this decision asks the store; while it fails, may start the probe."""
        if self.up:
            return True
        now = self.clock()
        if now < self._next_try or self._probing is not None:
            return False
        self._next_try = now + self.retry_interval
        if self.probe is None:
            return True  # this decision is the probe
        self._probing = asyncio.ensure_future(self._run_probe())
        return False

    def failed(self, exc: Exception, failure_mode: str) -> None:
        if self.up:
            logger.warning("rate limiting: the store failed (%s); failureMode %s", exc, failure_mode)
            self.up = False
        self._next_try = self.clock() + self.retry_interval

    def answered(self) -> None:
        """A decision the store made. With a probe, only the probe (debts paid) brings it back."""
        if not self.up and self.probe is None:
            self._recovered()

    async def _run_probe(self) -> None:
        assert self.probe is not None
        try:
            await self.probe()
            for debtor in list(self._debtors):
                await debtor.pay_debts()
        except (StoreError, RedisError, OSError, TimeoutError) as exc:
            self._next_try = self.clock() + self.retry_interval
            logger.debug("rate limiting: the store does not answer yet (%s)", exc)
        else:
            self._recovered()
        finally:
            self._probing = None

    def _recovered(self) -> None:
        logger.warning("rate limiting: the store answers again")
        self.up = True

    async def close(self) -> None:
        if self._probing is not None:
            self._probing.cancel()
            await asyncio.gather(self._probing, return_exceptions=True)
            self._probing = None


async def pay_debts(
    run: Callable[..., Awaitable[Any]], key_prefix: str, params: Sequence[object], debts: dict[str, int]
) -> None:
    """Take `debts` (identity -> tokens) from the buckets under `key_prefix`; forgotten once paid.

    `params` are the bucket's rate, burst and key TTL, as token_debit.lua reads them.
    """
    while debts:
        batch = list(debts.items())[:_BATCH]
        keys = [key_prefix + identity for identity, _ in batch]
        args: list[Any] = []
        for _, debt in batch:
            args += [*params, debt]
        await run(keys=keys, args=args)
        for identity, debt in batch:
            if debts.get(identity) == debt:
                del debts[identity]
            else:  # spent more while this ran (cannot happen while the store is down, kept exact anyway)
                debts[identity] -= debt
