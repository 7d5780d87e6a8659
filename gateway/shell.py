"""The web shell and the plugins' UI files, served by the gateway to browsers without a token.

    GET /                         the shell's index.html (Cache-Control: no-cache)
    GET /static/...               the shell's content-hashed build files (immutable for a year)
    GET /<client route>           index.html again: the shell routes in the browser (SPA fallback)
    GET /plugins/<id>/ui/<path>   a file of a plugin's UI, fetched from the plugin's `ui.baseUrl`

Everything else (/api/..., gRPC-Web paths, /healthz, /readyz, /metrics, /.well-known/...) passes on
to the pipeline unchanged; an unknown /api/ path answers a JSON 404 there. ShellMiddleware sits before
auth and rate limits: these are public files (a <script> tag cannot carry a bearer token), and the
data they show comes through the API, which stays behind both.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

import httpx
from starlette.responses import FileResponse, HTMLResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.errors import GatewayError, MethodNotAllowed, NotFound, UpstreamUnavailable
from gateway.middleware.errors import json_error_response
from gateway.transcode.routes import ALLOWED_VERBS
from gateway.upstream.policies import split_call

__all__ = ["DEFAULT_SHELL_DIR", "PluginUi", "ShellFiles", "ShellMiddleware", "api_not_found", "plugin_ui_path"]

logger = logging.getLogger(__name__)

DEFAULT_SHELL_DIR = Path(__file__).resolve().parents[1] / "shell-web" / "dist"
PLUGIN_PREFIX = "/plugins/"
IMMUTABLE = "public, max-age=31536000, immutable"
_RESERVED_EXACT = frozenset({"/api", "/healthz", "/readyz", "/metrics"})
_RESERVED_PREFIXES = ("/api/", "/.well-known/")
# Headers of a plugin's answer that reach the browser; the rest (its cookies, its server) do not.
_RELAYED = ("content-type", "content-length", "etag", "last-modified", "cache-control", "content-encoding")
_FETCH_TIMEOUT = 10.0  # seconds for a plugin to answer for one UI file
_NOSNIFF = {"x-content-type-options": "nosniff"}
# The page holds the user's tokens: no framing by other sites, no full URLs in Referer headers.
_PAGE_HEADERS = {**_NOSNIFF, "x-frame-options": "DENY", "referrer-policy": "same-origin"}

_NOT_BUILT = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>UPF: the web shell is not built</title>
<style>body{{font:16px/1.5 system-ui,sans-serif;max-width:40rem;margin:4rem auto;padding:0 1rem}}
code,pre{{background:#eef0f4;padding:2px 6px;border-radius:4px}}pre{{padding:12px}}</style></head>
<body><main><h1>The web shell is not built</h1>
<p>The gateway is running, but it found no shell build in <code>{where}</code>.</p>
<p>Build it (Node 20.19 or later), then reload this page:</p>
<pre>make shell        # or: cd shell-web &amp;&amp; npm ci &amp;&amp; npm run build</pre>
<p>The API works meanwhile: <a href="/readyz">/readyz</a>, <a href="/api/manifests">/api/manifests</a>.</p>
</main></body></html>
"""


def plugin_ui_path(plugin_id: str) -> str:
    """Where the gateway serves a plugin's UI files (the browser's base for its remote entry)."""
    return f"{PLUGIN_PREFIX}{quote(plugin_id)}/ui/"


def _safe_parts(path: str) -> list[str] | None:
    """The path's segments, or None when one could step outside its folder ('..', '\\', NUL) or
    names a hidden file (".env", the build's ".built" stamp).

    scope["path"] is already percent-decoded, so "%2e%2e" arrives here as "..".
    """
    parts = path.split("/")
    for part in parts:
        if not part or part.startswith(".") or "\\" in part or "\x00" in part:
            return None
    return parts


class ShellFiles:
    """The shell's build folder as an ASGI app: files, cache headers, and the SPA fallback."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory.resolve()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = self.response(scope["path"])
        await response(scope, receive, send)

    def response(self, path: str) -> Response:
        index = self.directory / "index.html"
        if not index.is_file():
            # Not a 500: a fresh checkout that has not run the build yet, and the page says what to do.
            return HTMLResponse(
                _NOT_BUILT.format(where=self.directory), status_code=503, headers={"cache-control": "no-store"}
            )
        relative = path.strip("/")
        if relative and relative != "index.html":
            parts = _safe_parts(relative)
            if parts is None:
                raise NotFound(f"no file at {path}")
            file = self.directory.joinpath(*parts)
            if file.is_file():
                # Rsbuild puts content-hashed names under static/: a new build has new names.
                cache = IMMUTABLE if parts[0] == "static" else "no-cache"
                return FileResponse(file, headers={"cache-control": cache, **_NOSNIFF})
            if parts[0] == "static" or "." in parts[-1]:
                raise NotFound(f"no file at {path}")  # a missing asset, not a client route
        return FileResponse(index, headers={"cache-control": "no-cache", **_PAGE_HEADERS})


class PluginUi:
    """GET /plugins/<id>/ui/<path>: the file at the plugin's `ui.baseUrl` + path, streamed through."""

    def __init__(self, base_url: Callable[[str], str | None], *, timeout: float = _FETCH_TIMEOUT) -> None:
        self.base_url = base_url
        self._client = httpx.AsyncClient(timeout=timeout, follow_redirects=False, trust_env=False)

    async def start(self) -> None:
        """Nothing to open: the HTTP client connects on the first fetch."""

    async def close(self) -> None:
        await self._client.aclose()

    def status(self) -> None:
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        rest = scope["path"][len(PLUGIN_PREFIX) :]
        plugin_id, _, tail = rest.partition("/")
        marker, _, file_path = tail.partition("/")
        parts = _safe_parts(file_path) if marker == "ui" else None
        if not plugin_id or parts is None:
            raise NotFound(f"no file at {scope['path']}")
        base = self.base_url(plugin_id)
        if base is None:
            raise NotFound(f'plugin "{plugin_id}" is not registered with a UI served by the gateway (ui.baseUrl)')
        url = base.rstrip("/") + "/" + "/".join(quote(part) for part in parts)
        headers = {
            name: value
            for name, value in ((k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"])
            if name in ("if-none-match", "if-modified-since", "accept-encoding")
        }
        try:
            request = self._client.build_request(scope["method"], url, headers=headers)
            upstream = await self._client.send(request, stream=True)
        except httpx.HTTPError as exc:
            logger.warning("plugin %s: UI file %s: %s", plugin_id, url, exc)
            raise UpstreamUnavailable(f'plugin "{plugin_id}" does not answer for its UI files') from exc
        try:
            if upstream.status_code == 404:
                raise NotFound(f'plugin "{plugin_id}" has no UI file {"/".join(parts)}')
            if upstream.status_code not in (200, 304):
                raise UpstreamUnavailable(f'plugin "{plugin_id}" answered {upstream.status_code} for {"/".join(parts)}')
            relayed = [
                (name.encode("latin-1"), value.encode("latin-1"))
                for name, value in upstream.headers.items()
                if name in _RELAYED
            ]
            if "cache-control" not in upstream.headers:
                # A plugin's remote entry keeps its name across deployments: check before reuse.
                relayed.append((b"cache-control", b"no-cache"))
            relayed.append((b"x-content-type-options", b"nosniff"))
            if upstream.headers.get("content-type", "").startswith("text/html"):
                # A plugin's HTML (a directory listing, say) runs on the shell's origin, where the
                # tokens are: sandboxed, it gets an origin of its own and no script.
                relayed.append((b"content-security-policy", b"sandbox"))
            await send({"type": "http.response.start", "status": upstream.status_code, "headers": relayed})
            if scope["method"] != "HEAD":
                async for chunk in upstream.aiter_raw():
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        finally:
            await upstream.aclose()


class ShellMiddleware:
    """Serves the shell and plugin UIs for GET/HEAD on their paths; anything else goes on to `app`."""

    def __init__(self, app: ASGIApp, *, files: ShellFiles, plugin_ui: PluginUi | None) -> None:
        self.app = app
        self.files = files
        self.plugin_ui = plugin_ui

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] in ("GET", "HEAD"):
            path: str = scope["path"]
            if path.startswith(PLUGIN_PREFIX):
                if self.plugin_ui is None:
                    raise NotFound("plugin UIs come from the registry, and this gateway has none (registryUrl)")
                await self.plugin_ui(scope, receive, send)
                return
            if not _is_reserved(path):
                if "/." in path:
                    # "..", or a hidden file: refused here, before it could look like a gRPC path.
                    raise NotFound(f"no file at {path}")
                if split_call(path) is None:
                    await self.files(scope, receive, send)
                    return
        await self.app(scope, receive, send)


def _is_reserved(path: str) -> bool:
    return path in _RESERVED_EXACT or path.startswith(_RESERVED_PREFIXES)


def api_not_found(default: ASGIApp) -> ASGIApp:
    """The router's answer when no route matches: a JSON 404 under /api/ (405 with Allow when a REST route
    takes the path with another method), `default` elsewhere."""

    async def not_found(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and (scope["path"] == "/api" or scope["path"].startswith("/api/")):
            # Sent, not raised: the middleware between here and the error renderer (rate-limit
            # headers, CORS) sees this answer like any other.
            verbs: list[str] | None = scope.get(ALLOWED_VERBS)
            error: GatewayError = NotFound(f"no endpoint at {scope['path']}")
            if verbs:
                error = MethodNotAllowed(
                    f"{scope['method']} is not allowed at {scope['path']}; it takes {', '.join(verbs)}",
                    headers={"allow": ", ".join(verbs)},
                )
            start, body = json_error_response(error)
            await send(start)
            await send(body)
            return
        await default(scope, receive, send)

    return not_found
