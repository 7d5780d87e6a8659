"""The limits one call is held to: the per-client limit and its method's own, from the manifests.

    rateLimiting.enabled        one bucket per client (the `default` policy), for every request
    rateLimiting.methodLimits   one bucket per method and client, for methods whose manifest policy
                                has a rateLimit (`policies: {Say: {rateLimit: {requestsPerSecond: 5}}}`,
                                or "*" for every method of the interface)

Both must allow a call, and they are decided together, all or nothing: a call held to both is one
decision over both buckets (take_all: token_buckets.lua in one EVALSHA, one Redis round trip; in
memory, one step with no await between check and take), which takes a token from each only if each
holds one. So a call the method's limit refuses spends no per-client token, and the other way round.
A call held to one limit only takes from its bucket alone (token_bucket.lua, as before).
Both live in the same store (memory or the same Redis connection) and follow the same failure mode;
a joint decision the store cannot make is a store error of each limiter, then `open` lets the call
through, `closed` refuses it, `local` decides both local shares together, all or nothing as well.
A method's policy is named `<package.Service>/<Method>` in its Redis keys, in the RateLimit fields
and in /metrics. A refusal reports (and counts) the refusing limit, the per-client one when both
refuse; a limit whose bucket would have allowed a refused call counts nothing, since it took nothing.
When both allow, the RateLimit fields describe the more restrictive one (fewer requests remaining),
as a client needs to know which runs out first.

A method limiter is made on its first call and remade when its manifest changes its rate or burst;
its counters live on (they are keyed by policy name), so /metrics stays monotonic.
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from collections.abc import Iterator

from gateway.ratelimit.bucket import Clock, Decision, StoreError
from gateway.ratelimit.lease import LeaseTable
from gateway.ratelimit.limiter import (
    RateLimiter,
    RateLimitPolicy,
    StoreClient,
    Verdict,
    bucket_on,
    debit_on,
    lease_table,
    ping_store,
    store_client,
    take_all,
)
from gateway.ratelimit.memory import MemoryTokenBucket
from gateway.ratelimit.recovery import StoreHealth
from gateway.settings import RateLimitSettings
from gateway.upstream.policies import MethodPolicies, split_call
from manifests.model import RateLimit

__all__ = ["CallLimiter"]

logger = logging.getLogger(__name__)


class CallLimiter:
    """Asked once per call by every entry point (the HTTP middleware, native gRPC, grpc-websockets).

    Args:
        settings: rateLimiting.
        policies: the manifests' per-method policies (kept current by RegistryRoutes).
        per_client: the per-client limiter, None when rateLimiting.enabled is off.
        client: the Redis client shared by every bucket (None: the memory store).
        leases: this process's token leases on that Redis (None: a round trip per decision).
        clock: for the memory buckets and the failure-mode recheck.
    """

    def __init__(
        self,
        settings: RateLimitSettings,
        *,
        policies: MethodPolicies,
        per_client: RateLimiter | None,
        client: StoreClient | None = None,
        leases: LeaseTable | None = None,
        clock: Clock = time.monotonic,
    ) -> None:
        self.settings = settings
        self.policies = policies
        self.per_client = per_client
        self.client = client
        self.leases = leases
        self.clock = clock
        self.method_limits = settings.method_limits
        self._methods: dict[tuple[str, str], tuple[RateLimit, RateLimiter]] = {}
        # One store, so one health and one probe for every limiter on it (recovery.py).
        probe = client.ping if client is not None else None
        self.health = StoreHealth(probe=probe, retry_interval=settings.redis_retry_interval, clock=clock)
        self.debit = debit_on(client) if client is not None else None
        if per_client is not None and client is not None:
            per_client.health = self.health
            per_client.debit = self.debit
            self.health.owes(per_client)
        # Counters per policy name, kept when a method's limiter is remade.
        self._counters: dict[str, Counter[str]] = {}

    @classmethod
    def from_settings(
        cls,
        settings: RateLimitSettings,
        *,
        policies: MethodPolicies,
        counters: Counter[str],
        clock: Clock = time.monotonic,
    ) -> CallLimiter:
        client = store_client(settings) if settings.store == "redis" else None
        leases = lease_table(client, settings, clock) if client is not None else None
        per_client = None
        if settings.enabled:
            policy = RateLimitPolicy("default", settings.requests_per_second, settings.burst_size)
            if client is None:
                store = MemoryTokenBucket(rate=policy.rate, burst=policy.burst, clock=clock)
                per_client = RateLimiter(policy, store=store, counters=counters, clock=clock)
            else:
                per_client = RateLimiter(
                    policy,
                    store=bucket_on(client, settings, policy, leases),
                    failure_mode=settings.failure_mode,
                    replicas=settings.replicas,
                    counters=counters,
                    clock=clock,
                    client=client,
                )
        limiter = cls(settings, policies=policies, per_client=per_client, client=client, leases=leases, clock=clock)
        limiter._counters["default"] = counters
        return limiter

    # --- lifecycle (gateway/lifecycle.py) ---------------------------------------------------

    async def start(self) -> None:
        await ping_store(self.client, self.settings.failure_mode)

    async def close(self) -> None:
        await self.health.close()
        if self.client is not None:
            await self.client.aclose()

    def status(self) -> dict[str, object] | None:
        """The limiter's shared store for /readyz (None in memory): information only, whatever the failure mode.

        A Redis that does not answer is not made not-ready, even in `closed` mode: every replica
        shares it, so all would leave the load balancer at once and clients would get its error
        instead of the gateway's UNAVAILABLE with Retry-After; the failure mode decides meanwhile.
        """
        if self.client is None:
            return None
        return {"store": "redis", "reachable": self.health.up, "failureMode": self.settings.failure_mode}

    async def check(self, identity: str, path: str | None = None) -> Verdict | None:
        """The verdict on one call to `path` (None: no limit applies, or failure mode open).

        Raises:
            RateLimiterUnavailable: a store failed and the failure mode is `closed`.
        """
        per_client = self.per_client
        limiter = None
        if path is not None and self.method_limits and len(self.policies):
            limiter = self._method_limiter(path)
        if limiter is None:
            return await per_client.check(identity) if per_client is not None else None
        if per_client is None:
            return await limiter.check(identity)
        return await self._check_both(identity, per_client, limiter)

    async def _check_both(self, identity: str, per_client: RateLimiter, method: RateLimiter) -> Verdict | None:
        # One store, so one health: the store is asked only when neither limiter is leaving it alone.
        if per_client.store_due() and method.store_due():
            try:
                own, mine = await take_all((per_client.store, method.store), identity)
            except StoreError as exc:
                per_client.store_failed(exc)
                method.store_failed(exc)
            else:
                per_client.store_answered()
                method.store_answered()
                per_client.mirror(identity, own)
                method.mirror(identity, mine)
                return self._verdict(per_client.policy, own, method.policy, mine, per_client, method, "")
        if per_client.failure_mode == "local":
            own, mine = await take_all((per_client.local, method.local), identity)
            if own.allowed and mine.allowed:
                per_client.owe(identity, 1)
                method.owe(identity, 1)
            return self._verdict(per_client.local_policy, own, method.local_policy, mine, per_client, method, "local_")
        per_client.without_store()  # raises for `closed`, the method's not asked about
        method.without_store()  # `open`: both let the call through undecided
        return None

    @staticmethod
    def _verdict(
        policy: RateLimitPolicy,
        own: Decision,
        method_policy: RateLimitPolicy,
        mine: Decision,
        per_client: RateLimiter,
        method: RateLimiter,
        source: str,
    ) -> Verdict:
        """The verdict of a joint decision, counted as two separate ones would be, minus the tokens."""
        if not own.allowed:
            # The per-client refusal is reported (and counted) first, the method's not asked about.
            per_client.counters[source + "rejected"] += 1
            return policy, own
        if not mine.allowed:
            method.counters[source + "rejected"] += 1
            return method_policy, mine
        per_client.counters[source + "allowed"] += 1
        method.counters[source + "allowed"] += 1
        return (method_policy, mine) if mine.remaining < own.remaining else (policy, own)

    def _method_limiter(self, path: str) -> RateLimiter | None:
        target = split_call(path)
        if target is None:
            return None
        policy = self.policies.get(*target)
        limit = policy.rate_limit if policy is not None else None
        if limit is None:
            return None
        known = self._methods.get(target)
        if known is not None and known[0] == limit:
            return known[1]
        limiter = self._make(f"{target[0]}/{target[1]}", limit)
        self._methods[target] = (limit, limiter)
        return limiter

    def _make(self, name: str, limit: RateLimit) -> RateLimiter:
        burst = limit.burst_size or math.ceil(limit.requests_per_second)
        policy = RateLimitPolicy(name, limit.requests_per_second, burst)
        counters = self._counters.setdefault(name, Counter())
        if self.client is None:
            store = MemoryTokenBucket(rate=policy.rate, burst=policy.burst, clock=self.clock)
            return RateLimiter(policy, store=store, counters=counters, clock=self.clock)
        return RateLimiter(
            policy,
            store=bucket_on(self.client, self.settings, policy, self.leases),
            failure_mode=self.settings.failure_mode,
            replicas=self.settings.replicas,
            counters=counters,
            clock=self.clock,
            health=self.health,
            debit=self.debit,
        )

    def counters(self) -> Iterator[tuple[str, Counter[str]]]:
        """(policy name, its counters) for every policy that has decided something: for /metrics."""
        yield from self._counters.items()

    def state(self) -> dict[str, object]:
        """The limiter's mode, for /api/admin/traffic."""
        limiters = [self.per_client] if self.per_client is not None else []
        limiters += [limiter for _, limiter in self._methods.values()]
        healthy = all(limiter.store_healthy for limiter in limiters) if self.client is not None else None
        return {
            "perClient": self.per_client is not None,
            "methodLimits": self.method_limits,
            "store": self.settings.store,
            "failureMode": self.settings.failure_mode if self.client is not None else None,
            # Tokens one round trip may lease beyond the waiting calls' (0: a round trip per decision).
            "leaseTokens": self.settings.lease_tokens if self.client is not None else None,
            "redisHealthy": healthy,
            "policies": {
                limiter.policy.name: {"requestsPerSecond": limiter.policy.rate, "burstSize": limiter.policy.burst}
                for limiter in limiters
            },
        }
