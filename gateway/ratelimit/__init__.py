"""Rate limiting: token buckets in Redis or in memory, client identities, and the limiter on top.

    bucket.py         Decision, the TokenBucket and Clock protocols
    memory.py         MemoryTokenBucket: in-process, the embedded default and the local fallback
    redis.py          RedisTokenBucket: token_bucket.lua, atomic on Redis server time, through redis-py;
                      token_buckets.lua takes from several buckets at once, all or nothing
    resp.py           RespTokenBucket: the same script over a small pipelined RESP2 client (redis://)
    keys.py           identities for keyExtractor ip | token | apiKey, X-Forwarded-For trust
    limiter.py        RateLimiter: the policy, failure modes, counters, RateLimit headers; take_all
    calls.py          CallLimiter: the per-client and the method limit of one call, in one decision

The middleware that asks the limiter is gateway/middleware/ratelimit.py.
"""

from __future__ import annotations

from common.resp import RespClient
from gateway.ratelimit.bucket import Clock, Decision, StoreError, TokenBucket
from gateway.ratelimit.keys import Identify, TrustedProxies, identify_by, identify_from_settings
from gateway.ratelimit.limiter import FailureMode, RateLimiter, RateLimitPolicy, Verdict
from gateway.ratelimit.memory import MemoryTokenBucket
from gateway.ratelimit.redis import RedisTokenBucket
from gateway.ratelimit.resp import RespTokenBucket

__all__ = [
    "Clock",
    "Decision",
    "FailureMode",
    "Identify",
    "MemoryTokenBucket",
    "RateLimitPolicy",
    "RateLimiter",
    "RedisTokenBucket",
    "RespClient",
    "RespTokenBucket",
    "StoreError",
    "TokenBucket",
    "TrustedProxies",
    "Verdict",
    "identify_by",
    "identify_from_settings",
]
