"""The HTTP listener behind files-local's signed URLs: GET and PUT of one key, no token needed.

A Starlette app on uvicorn inside the plugin process, on the port its configuration gives. Each
request is checked by UrlSigner (signature, method, expiry, content type) and refused with 403 and a
one-line reason otherwise; a PUT streams the body into the backend's atomic write, so a cut upload
leaves nothing. Mounted under a path prefix (`public_url` may end in /files) so that a proxy can
publish that prefix and the URLs can be handed out on its origin.

Browsers reach the listener itself, as they reach S3 or GCS with those backends' presigned URLs: the
URL is the credential (it names one path, one method and an expiry, and no cookie or token goes with
it), so the gateway adds nothing by relaying the bytes, and a relay would put every upload and
download of any size through the gateway process. For the same reason any origin may use a URL:
CORS allows every origin, without credentials, so a page of the shell on the gateway's origin can PUT
and GET here (the preflight of a PUT with a Content-Type is answered too).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import uvicorn
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from plugins.files.backend import BackendUnavailable, Conflict, NotFound
from plugins.files.local import LocalBackend
from plugins.files.signing import UrlRefused, UrlSigner

__all__ = ["SignedUrlServer", "signed_url_app"]

logger = logging.getLogger(__name__)


def signed_url_app(backend: LocalBackend, signer: UrlSigner) -> Starlette:
    async def serve(request: Request) -> Response:
        key = request.path_params["key"]
        method = "GET" if request.method in ("GET", "HEAD") else request.method
        content_type = request.headers.get("content-type", "")
        try:
            signer.verify(method, key, request.query_params, content_type=content_type)
        except UrlRefused as exc:
            return PlainTextResponse(f"{exc}\n", status_code=403)
        try:
            if method == "PUT":
                info = await backend.write(key, _body(request), content_type=content_type, metadata={})
                return Response(status_code=200, headers={"ETag": f'"{info.etag}"'})
            info, chunks = await backend.read(key, 0, None)
        except NotFound:
            return PlainTextResponse("no such file\n", status_code=404)
        except (BackendUnavailable, Conflict) as exc:
            return PlainTextResponse(f"{exc}\n", status_code=503 if isinstance(exc, BackendUnavailable) else 409)
        except ClientDisconnect:
            return Response(status_code=400)
        headers = {"Content-Length": str(info.size), "ETag": f'"{info.etag}"'}
        if request.method == "HEAD":
            with contextlib.suppress(Exception):
                await chunks.aclose()  # type: ignore[attr-defined]
            return Response(headers=headers, media_type=info.content_type)
        return StreamingResponse(chunks, headers=headers, media_type=info.content_type)

    prefix = urlsplit(signer.base_url).path.rstrip("/")
    cors = Middleware(
        CORSMiddleware,
        allow_origins=["*"],
        allow_methods=["GET", "HEAD", "PUT"],
        allow_headers=["content-type"],
        expose_headers=["etag", "content-length"],
        max_age=600,
    )
    return Starlette(routes=[Route(prefix + "/{key:path}", serve, methods=["GET", "HEAD", "PUT"])], middleware=[cors])


async def _body(request: Request) -> AsyncIterator[bytes]:
    async for chunk in request.stream():
        if chunk:
            yield chunk


class SignedUrlServer:
    """uvicorn serving `signed_url_app` in this event loop, on a socket bound up front (`bind`), so that
    the port is known before the URLs' base is, and a port in use is an OSError at start-up."""

    def __init__(self, sock: socket.socket) -> None:
        self.socket = sock
        self.port: int = sock.getsockname()[1]
        self.app: Starlette | None = None  # set before start(): the app needs the signer, which needs the port
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task[None] | None = None

    @classmethod
    def bind(cls, host: str, port: int) -> SignedUrlServer:
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            sock.close()
            raise OSError(f"cannot listen on {host}:{port} for signed URLs: is the port in use?") from None
        return cls(sock)

    async def start(self) -> None:
        if self.app is None:
            raise RuntimeError("set the app before starting the signed URL listener")
        config = uvicorn.Config(self.app, log_level="warning", lifespan="off", access_log=False)
        self._server = uvicorn.Server(config)
        self._task = asyncio.create_task(self._server.serve(sockets=[self.socket]), name="files-local signed URLs")

    async def stop(self) -> None:
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            await self._task
        self.socket.close()
