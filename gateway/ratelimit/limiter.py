"""The limiter the middleware asks: one policy, the bucket store, and what to do when the store fails.

`failureMode`, for when the store (Redis) cannot answer:

    open    let the request through; it carries no quota headers, since nothing is known
    closed  refuse it with UNAVAILABLE (gRPC-Web) / 503 (REST) and `Retry-After: 1`: the limiter
            could not decide, which is the gateway's trouble, not the client's, so neither
            RESOURCE_EXHAUSTED nor 429 (and never a 500)
    local   decide with an in-process bucket of rate / replicas and burst / replicas (rounded up),
            so that the replicas together admit about what the shared bucket would; the RateLimit
            headers then advertise that share

After a store error the store is asked again `recheck_after` seconds later (rateLimiting.
redisRetryInterval), by a probe in the background; the local fallback's spending is then taken from
the shared buckets before they decide again (gateway/ratelimit/recovery.py).

Counters (app.state.ratelimit_counters, for the future /metrics):

    allowed, rejected              decided by the configured store
    local_allowed, local_rejected  decided by the local bucket while the store was failing
    failed_open, failed_closed     let through / refused without a decision
    store_errors                   store calls that failed
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, cast

import redis.asyncio

from common.resp import RespClient, handles_url
from gateway.errors import RateLimiterUnavailable
from gateway.ratelimit.bucket import Clock, Decision, StoreError, TokenBucket, refill_seconds
from gateway.ratelimit.lease import LEASE_SCRIPT, LeasedTokenBucket, LeaseTable
from gateway.ratelimit.memory import MemoryTokenBucket
from gateway.ratelimit.recovery import DEBIT_SCRIPT, StoreHealth, pay_debts
from gateway.ratelimit.redis import RedisTokenBucket, redis_client, script_on
from gateway.ratelimit.resp import RespScript, RespTokenBucket
from gateway.settings import RateLimitSettings

__all__ = [
    "FailureMode",
    "RateLimitPolicy",
    "RateLimiter",
    "StoreClient",
    "Verdict",
    "bucket_on",
    "debit_on",
    "lease_table",
    "ping_store",
    "store_client",
    "take_all",
]

logger = logging.getLogger(__name__)

FailureMode = Literal["open", "closed", "local"]


@dataclass(frozen=True, slots=True)
class RateLimitPolicy:
    """A rate and a burst, and how they are advertised.

    The fields follow draft-ietf-httpapi-ratelimit-headers-11 (May 2026): `RateLimit-Policy` and
    `RateLimit` are Structured Field lists of items named by a String, with Integer parameters;
    the policy gives quota `q` per window `w` seconds, the current state `r` units remaining and `t`
    seconds until more quota is available (that wording for `t` since -10, ratelimit-headers#149).
    A token bucket advertises its long-run rate exactly: q / w is the rate, over the shortest whole
    window at least as long as the bucket takes to fill (so q >= burst >= r) in which the rate makes
    whole units (20/s with a burst of 50: q=60;w=3, not q=50;w=3, which said 16.7/s). The burst
    itself has no parameter in the draft; `r` shows it (up to `burst` remaining).
    """

    name: str  # names the policy in the RateLimit fields and in Redis keys
    rate: float  # tokens per second
    burst: int  # bucket size, tokens

    # The `RateLimit-Policy` field: the same on every response, so made once.
    policy_field: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.rate <= 0 or self.burst < 1:
            raise ValueError("rate must be positive and burst at least 1")
        quota, window = advertised_quota(self.rate, self.burst)
        object.__setattr__(self, "policy_field", f'"{self.name}";q={quota};w={window}')

    @property
    def window(self) -> int:
        """Seconds for an empty bucket to fill."""
        return refill_seconds(self.rate, self.burst)

    def share(self, replicas: int) -> RateLimitPolicy:
        """This policy split evenly over `replicas` gateways (burst rounded up)."""
        return RateLimitPolicy(self.name, self.rate / replicas, math.ceil(self.burst / replicas))

    def quota_field(self, decision: Decision) -> str:
        """The `RateLimit` field: whole units remaining, whole seconds until the next one."""
        if not decision.allowed:
            seconds = decision.retry_after
        elif decision.remaining >= decision.limit:
            seconds = 0.0
        else:
            # reset_after covers every missing token; the next one comes that much sooner.
            seconds = decision.reset_after - (decision.limit - decision.remaining - 1) / self.rate
        # Rounded first: the store's six decimals must not push 1.0000001 s up to 2.
        return f'"{self.name}";r={decision.remaining};t={max(0, math.ceil(round(seconds, 6)))}'

    @staticmethod
    def retry_after(decision: Decision) -> int:
        # RFC 9110 delay-seconds are whole seconds: rounded up, so that a client that waits is served.
        return max(1, math.ceil(round(decision.retry_after, 6)))

    def headers(self, decision: Decision) -> dict[str, str]:
        """`RateLimit-Policy` and `RateLimit` for a decision, and `Retry-After` for a refusal."""
        headers = {"ratelimit-policy": self.policy_field, "ratelimit": self.quota_field(decision)}
        if not decision.allowed:
            headers["retry-after"] = str(self.retry_after(decision))
        return headers


def advertised_quota(rate: float, burst: int) -> tuple[int, int]:
    """(q, w): `rate` as whole units per whole seconds, over at least the bucket's fill time.

    The shortest such window up to ten fill times; a rate that no such window makes whole is
    rounded down over the fill time, so it is never advertised above itself.
    """
    first = refill_seconds(rate, burst)
    for window in range(first, first * 10 + 1):
        quota = rate * window
        if abs(quota - round(quota)) <= 1e-9 * quota:  # float noise only: 3000 * (1 / 3000)
            return max(burst, round(quota)), window
    return max(1, math.floor(rate * first)), first


# The policy that decided (the local share while the store is failing), and its decision.
Verdict = tuple[RateLimitPolicy, Decision]

StoreClient = redis.asyncio.Redis | RespClient


def store_client(settings: RateLimitSettings) -> StoreClient:
    """The Redis client for `redisUrl`: the one place that chooses it by URL.

    redis://  RespClient (common/resp.py): one pipelined connection, about a tenth
              of redis-py's CPU per decision (bench/README.md, "Rate limiter cost");
    rediss://, unix://  redis-py, which does TLS and Unix sockets; RespClient does neither.
    """
    if handles_url(settings.redis_url):
        return RespClient(settings.redis_url, timeout=settings.redis_timeout)
    return redis_client(
        settings.redis_url, timeout=settings.redis_timeout, max_connections=settings.redis_max_connections
    )


def lease_table(client: StoreClient, settings: RateLimitSettings, clock: Clock = time.monotonic) -> LeaseTable | None:
    """This process's token leases on the Redis behind `client`, or None when leaseTokens is 0."""
    if not settings.lease_tokens:
        return None
    run = RespScript(client, LEASE_SCRIPT) if isinstance(client, RespClient) else script_on(client, LEASE_SCRIPT)
    return LeaseTable(run, lease_seconds=settings.lease_seconds, replicas=settings.replicas, clock=clock)


def debit_on(client: StoreClient) -> Callable[..., Awaitable[Any]]:
    """token_debit.lua on the Redis behind `client`: pays what the local fallback let through."""
    return RespScript(client, DEBIT_SCRIPT) if isinstance(client, RespClient) else script_on(client, DEBIT_SCRIPT)


def bucket_on(
    client: StoreClient, settings: RateLimitSettings, policy: RateLimitPolicy, leases: LeaseTable | None = None
) -> TokenBucket:
    """`policy`'s buckets in the Redis behind `client`, under `keyPrefix`; spent through `leases` if given."""
    rate, burst, name, prefix = policy.rate, policy.burst, policy.name, settings.key_prefix
    if leases is not None:
        extra = settings.lease_tokens
        return LeasedTokenBucket(leases, rate=rate, burst=burst, policy=name, prefix=prefix, extra=extra)
    if isinstance(client, RespClient):
        return RespTokenBucket(client, rate=rate, burst=burst, policy=name, prefix=prefix)
    return RedisTokenBucket(client, rate=rate, burst=burst, policy=name, prefix=prefix)


async def take_all(stores: Sequence[TokenBucket], key: str, cost: int = 1) -> list[Decision]:
    """Take `cost` from `key`'s bucket in every store, or from none: one round trip for Redis.

    The stores are all of one kind (memory, or Redis through one client), as bucket_on makes them.
    One decision per store, in order; `allowed` says whether that store's bucket held `cost`.

    Raises:
        StoreError: Redis could not decide.
    """
    first = stores[0]
    if isinstance(first, LeasedTokenBucket):
        return await LeasedTokenBucket.take_all(cast(Sequence[LeasedTokenBucket], stores), key, cost)
    if isinstance(first, RespTokenBucket):
        return await RespTokenBucket.take_all(cast(Sequence[RespTokenBucket], stores), key, cost)
    if isinstance(first, RedisTokenBucket):
        return await RedisTokenBucket.take_all(cast(Sequence[RedisTokenBucket], stores), key, cost)
    if isinstance(first, MemoryTokenBucket):
        return await MemoryTokenBucket.take_all(cast(Sequence[MemoryTokenBucket], stores), key, cost)
    raise TypeError(f"no joint take for {type(first).__name__}")


class RateLimiter:
    """Decides each request against one policy.

    Args:
        policy: the rate and burst.
        store: the buckets the policy is decided on (Redis, or memory for one process).
        failure_mode: what happens when `store` raises StoreError (module docstring).
        replicas: gateways sharing `store`; the `local` failure mode limits to policy / replicas.
        counters: where decisions and store errors are counted.
        clock: monotonic seconds, for the local bucket and the store's recheck interval.
        client: the Redis client behind `store` (redis-py's or RespClient), checked by `open` and
            closed by `close`.
        recheck_after: seconds between tries of a failed store (without `health`).
        health: the store's health, shared by every limiter on one client (CallLimiter's).
        debit: token_debit.lua on the store, to pay what the local fallback let through.
    """

    def __init__(
        self,
        policy: RateLimitPolicy,
        *,
        store: TokenBucket,
        failure_mode: FailureMode = "local",
        replicas: int = 1,
        counters: Counter[str] | None = None,
        clock: Clock = time.monotonic,
        client: StoreClient | None = None,
        recheck_after: float = 1.0,
        health: StoreHealth | None = None,
        debit: Callable[..., Awaitable[Any]] | None = None,
    ) -> None:
        self.policy = policy
        self.store = store
        self.failure_mode = failure_mode
        self.replicas = replicas
        self.local_policy = policy.share(replicas)
        self.local = MemoryTokenBucket(rate=self.local_policy.rate, burst=self.local_policy.burst, clock=clock)
        self.counters: Counter[str] = Counter() if counters is None else counters
        self.clock = clock
        self.client = client
        if health is None:
            probe = client.ping if client is not None else None
            health = StoreHealth(probe=probe, retry_interval=recheck_after, clock=clock)
        self.health = health
        health.owes(self)
        self.debit = debit
        # Tokens the local fallback let through per identity, owed to the shared bucket.
        self.debts: dict[str, int] = {}
        self._mirrors = failure_mode == "local"  # the local buckets follow the shared ones

    @property
    def store_healthy(self) -> bool:
        """False from a store error until the store answers again (see recovery.py)."""
        return self.health.up

    @classmethod
    def from_settings(
        cls, settings: RateLimitSettings, *, counters: Counter[str], clock: Clock = time.monotonic
    ) -> RateLimiter:
        policy = RateLimitPolicy("default", settings.requests_per_second, settings.burst_size)
        if settings.store == "memory":
            store = MemoryTokenBucket(rate=policy.rate, burst=policy.burst, clock=clock)
            return cls(policy, store=store, counters=counters, clock=clock)
        redis_store, client = cls._redis_store(settings, policy)
        return cls(
            policy,
            store=redis_store,
            failure_mode=settings.failure_mode,
            replicas=settings.replicas,
            counters=counters,
            clock=clock,
            client=client,
            recheck_after=settings.redis_retry_interval,
            debit=debit_on(client),
        )

    @staticmethod
    def _redis_store(
        settings: RateLimitSettings, policy: RateLimitPolicy
    ) -> tuple[TokenBucket, redis.asyncio.Redis | RespClient]:
        client = store_client(settings)
        return bucket_on(client, settings, policy, lease_table(client, settings)), client

    async def open(self) -> None:
        await ping_store(self.client, self.failure_mode)

    async def close(self) -> None:
        await self.health.close()
        if self.client is not None:
            await self.client.aclose()

    async def check(self, identity: str, cost: int = 1) -> Verdict | None:
        """The verdict on one request, or None when it goes through undecided (failure mode open).

        Raises:
            RateLimiterUnavailable: the store failed and the failure mode is `closed`.
        """
        if self.health.due():
            try:
                decision = await self.store.take(identity, cost)
            except StoreError as exc:
                self.store_failed(exc)
            else:
                self.health.answered()
                self.mirror(identity, decision)
                self.counters["allowed" if decision.allowed else "rejected"] += 1
                return self.policy, decision
        if self.failure_mode == "local":
            decision = await self.local.take(identity, cost)
            if decision.allowed:
                self.owe(identity, cost)
            self.counters["local_allowed" if decision.allowed else "local_rejected"] += 1
            return self.local_policy, decision
        self.without_store()
        return None

    # The steps of `check`, for CallLimiter, which decides two limiters in one store call.

    def store_due(self) -> bool:
        """Whether the store is to be asked (it is healthy, or this decision is its probe)."""
        return self.health.due()

    def store_failed(self, exc: StoreError) -> None:
        """Count a store error; the store is tried again after the retry interval."""
        self.counters["store_errors"] += 1
        self.health.failed(exc, self.failure_mode)

    def store_answered(self) -> None:
        self.health.answered()

    def mirror(self, identity: str, decision: Decision) -> None:
        """The local bucket of `identity` set to this replica's share of what the shared one holds."""
        if self._mirrors:
            self.local.seed(identity, decision.remaining / self.replicas)

    def owe(self, identity: str, cost: int) -> None:
        """`cost` tokens the local fallback let through, to be taken from the shared bucket later."""
        self.debts[identity] = self.debts.get(identity, 0) + cost

    async def pay_debts(self) -> None:
        """Take what the local fallback let through from the shared buckets (recovery.py)."""
        key_prefix = getattr(self.store, "key_prefix", None)
        if not self.debts or self.debit is None or key_prefix is None:
            self.debts.clear()
            return
        rate, burst = self.policy.rate, self.policy.burst
        await pay_debts(self.debit, key_prefix, (repr(float(rate)), burst, refill_seconds(rate, burst)), self.debts)

    def without_store(self) -> None:
        """Failure mode `open` or `closed`, with the store unavailable: through undecided, or refused.

        Raises:
            RateLimiterUnavailable: the failure mode is `closed`.
        """
        if self.failure_mode == "open":
            self.counters["failed_open"] += 1
            return None
        self.counters["failed_closed"] += 1
        raise RateLimiterUnavailable(
            "the rate limiter cannot decide right now; try again shortly", headers={"retry-after": "1"}
        )


async def ping_store(client: StoreClient | None, failure_mode: str) -> None:
    """Connect to Redis once at start-up, only to say early that it is unreachable."""
    if client is None:
        return
    try:
        await client.ping()
    except (redis.RedisError, OSError, StoreError) as exc:
        logger.warning(
            "rate limiting: Redis does not answer (%s); failureMode %s applies until it does", exc, failure_mode
        )
