"""CORS for browsers on other origins: preflights answered here, actual responses annotated.

Only origins on the allowlist get `Access-Control-Allow-Origin`; a disallowed origin still gets its
answer, which the browser then hides from the page. Responses expose the gRPC status headers and
every custom header they carry (trailers-only answers put trailers in headers), listed by name:
`Access-Control-Expose-Headers: *` is ignored for credentialed requests (grpc/grpc-web#415).
"""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.settings import CorsSettings

__all__ = ["RESPONSE_HEADERS_KEY", "CorsMiddleware"]

# Where this middleware leaves its headers for responses rendered outside it (the error middleware).
RESPONSE_HEADERS_KEY = "upf.cors_headers"

_ALWAYS_EXPOSED = (b"grpc-status", b"grpc-message", b"grpc-status-details-bin")
# CORS-safelisted response headers (Fetch standard) and our own: no need to expose them.
_NOT_EXPOSED = frozenset(
    {
        b"cache-control", b"content-language", b"content-length", b"content-type", b"expires", b"last-modified",
        b"pragma", b"vary", b"date", b"server", b"connection", b"transfer-encoding",
        *_ALWAYS_EXPOSED,
    }
)  # fmt: skip
_ALLOWED_METHODS = b"GET, POST, OPTIONS"


class CorsMiddleware:
    def __init__(self, app: ASGIApp, settings: CorsSettings) -> None:
        self.app = app
        self.any_origin = "*" in settings.allow_origins
        self.origins = frozenset(origin.encode("latin-1") for origin in settings.allow_origins if origin != "*")
        self.credentials = settings.allow_credentials and not self.any_origin
        self.max_age = str(settings.max_age).encode()

    def _allow_origin(self, origin: bytes) -> bytes | None:
        if origin in self.origins:
            return origin
        return b"*" if self.any_origin else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        origin = None
        for key, value in scope["headers"]:
            if key == b"origin":
                origin = value
                break
        if origin is None:
            await self.app(scope, receive, send)
            return
        allowed = self._allow_origin(origin)
        if scope["method"] == "OPTIONS" and any(k == b"access-control-request-method" for k, _ in scope["headers"]):
            await self._preflight(scope, send, allowed)
            return
        if allowed is None:
            await self.app(scope, receive, send)
            return
        cors_headers = self._common_headers(allowed)
        scope[RESPONSE_HEADERS_KEY] = cors_headers

        async def send_with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", ()))
                names = [key.lower() for key, _ in headers]
                exposed = list(_ALWAYS_EXPOSED)
                exposed += [name for name in dict.fromkeys(names) if name not in _NOT_EXPOSED]
                headers += cors_headers
                headers.append((b"access-control-expose-headers", b", ".join(exposed)))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_cors)

    def _common_headers(self, allowed: bytes) -> list[tuple[bytes, bytes]]:
        headers = [(b"access-control-allow-origin", allowed)]
        if allowed != b"*":
            headers.append((b"vary", b"Origin"))
        if self.credentials:
            headers.append((b"access-control-allow-credentials", b"true"))
        return headers

    async def _preflight(self, scope: Scope, send: Send, allowed: bytes | None) -> None:
        if allowed is None:
            body = b"origin not allowed\n"
            headers = [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", b"19")]
            await send({"type": "http.response.start", "status": 403, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        request_headers = Headers(scope=scope).get("access-control-request-headers", "")
        headers = self._common_headers(allowed)
        headers += [
            (b"access-control-allow-methods", _ALLOWED_METHODS),
            (b"access-control-max-age", self.max_age),
            (b"content-length", b"0"),
        ]
        if request_headers:
            # Any header a client asks for is fine: the gateway filters what it forwards itself.
            headers.append((b"access-control-allow-headers", request_headers.encode("latin-1")))
            headers.append((b"vary", b"Access-Control-Request-Headers"))
        await send({"type": "http.response.start", "status": 204, "headers": headers})
        await send({"type": "http.response.body", "body": b""})
