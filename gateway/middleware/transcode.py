"""REST calls transcoded from google.api.http annotations: picked out before auth and rate limiting.

A request under /api/ that matches a REST route of a routed plugin (gateway/transcode/routes.py) is
served here as a call of its method (gateway/transcode/endpoint.py), admitted by the one call path,
which authenticates and rate-limits it. Sitting outside the REST auth and rate-limit middlewares is
what makes that happen exactly once: they never see a transcoded call. Everything else passes on:
the gateway's own endpoints win over a plugin's annotation (/api/manifests, /api/auth/login ... are
never a plugin's), and a path no route matches goes through auth and limits to the router's JSON 404,
as before, so an unauthenticated client learns nothing about which routes exist. A path a route takes,
asked for with another method, goes the same way to a JSON 405 with an Allow header.
"""

from __future__ import annotations

from collections.abc import Callable

from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.proxy import is_call_path
from gateway.transcode.endpoint import RestEndpoint
from gateway.transcode.routes import ALLOWED_VERBS, PREFIX, RestRoutes

__all__ = ["TranscodeMiddleware"]


class TranscodeMiddleware:
    def __init__(
        self, app: ASGIApp, *, routes: RestRoutes, endpoint: RestEndpoint, owned: Callable[[Scope], bool]
    ) -> None:
        self.app = app
        self.routes = routes
        self.endpoint = endpoint
        self.owned = owned  # whether the gateway serves this request itself

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope.get("path", "")
        if scope["type"] != "http" or not path.startswith(PREFIX + "/") or is_call_path(path) or self.owned(scope):
            await self.app(scope, receive, send)
            return
        # The path as sent, still percent-encoded: a variable's value may hold an encoded "/".
        raw: bytes | None = scope.get("raw_path")
        request_path = raw.decode("latin-1") if raw else path
        match = await self.routes.match(scope["method"], request_path)
        if match is None:
            # A route's path with another method: answered 405 by the router's fallback, after auth and
            # limits like a 404, so that an unauthenticated client learns no more than from a 404.
            verbs = await self.routes.verbs_at(request_path)
            if verbs:
                scope = {**scope, ALLOWED_VERBS: verbs}
            await self.app(scope, receive, send)
            return
        await self.endpoint(scope, receive, send, match)
