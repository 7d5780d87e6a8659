"""Rate limiting of REST requests: a token bucket per client, decided before the router.

gRPC-Web calls pass by: they are limited with every other gRPC call, by the same limiter and keys
(gateway/proxy/admission.py), and show the same headers.

Sits inside CORS (so refusals are readable by the page) and inside auth (so `token` keys see the
verified subject). An allowed request carries the IETF `RateLimit-Policy` and `RateLimit` headers
on its response; a refused one raises RateLimited, which the error middleware renders as 429 with
`retry-after`, `ratelimit` and `ratelimit-policy` and `{"code": "RESOURCE_EXHAUSTED", "message": ...}`.
/healthz, /readyz and /metrics are never limited: an orchestrator probing a busy gateway must not be
told it is dead.
"""

from __future__ import annotations

from collections.abc import Iterable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.errors import RateLimited
from gateway.proxy import is_call_path
from gateway.ratelimit.calls import CallLimiter
from gateway.ratelimit.keys import Identify

__all__ = ["ALWAYS_EXEMPT", "RateLimitMiddleware"]

ALWAYS_EXEMPT = frozenset({"/healthz", "/readyz", "/metrics"})


class RateLimitMiddleware:
    def __init__(
        self, app: ASGIApp, *, limiter: CallLimiter, identify: Identify, exempt_paths: Iterable[str] = ()
    ) -> None:
        self.app = app
        self.limiter = limiter
        self.identify = identify
        self.exempt = ALWAYS_EXEMPT | frozenset(exempt_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # WebSocket limiting (a close with a reason) belongs to the WebSocket bridge, and gRPC-Web
        # calls are limited where every gRPC call is (gateway/proxy/admission.py).
        if scope["type"] != "http" or scope["path"] in self.exempt or is_call_path(scope["path"]):
            await self.app(scope, receive, send)
            return
        verdict = await self.limiter.check(self.identify(scope), scope["path"])
        if verdict is None:
            await self.app(scope, receive, send)  # undecided, let through (failure mode open)
            return
        policy, decision = verdict
        if not decision.allowed:
            wait = policy.retry_after(decision)
            raise RateLimited(f"rate limit exceeded; retry in {wait} s", headers=policy.headers(decision))
        quota_headers = [
            (b"ratelimit-policy", policy.policy_field.encode("latin-1")),
            (b"ratelimit", policy.quota_field(decision).encode("latin-1")),
        ]

        async def send_with_quota(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), *quota_headers]}
            await send(message)

        await self.app(scope, receive, send_with_quota)
