"""The three files plugins, each a backend plus its settings: files-local, files-s3, files-gcs.

`make_*` are coroutines because the S3 and GCS clients must be opened inside the event loop that
uses them.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from plugins.files.gcs import GcsBackend, GcsSettings
from plugins.files.local import LocalBackend
from plugins.files.plugin import FilesPlugin, PluginOptions, build
from plugins.files.s3 import S3Backend, S3Settings
from plugins.files.signing import UrlSigner
from plugins.files.url_server import SignedUrlServer, signed_url_app

__all__ = ["KINDS", "GcsSettings", "LocalSettings", "S3Settings", "make_gcs", "make_local", "make_s3"]

KINDS = ("files-local", "files-s3", "files-gcs")


@dataclass(frozen=True, slots=True)
class LocalSettings:
    root: Path
    http_host: str = "127.0.0.1"
    http_port: int | None = 0  # None: no listener, no signed URLs (Features leaves "signed-urls" out)
    # What the URLs start with; "" : http://<http_host>:<port>/files. Set it when a proxy (the gateway,
    # later) forwards a public path prefix to the listener.
    public_url: str = ""
    # The URLs' HMAC key; "" : a random one per start (URLs then die with the process, and replicas
    # behind one public URL must share a key).
    signing_secret: str = ""


async def make_local(
    settings: LocalSettings, options: PluginOptions, *, clock: Callable[[], float] = time.time
) -> FilesPlugin:
    server: SignedUrlServer | None = None
    signer: UrlSigner | None = None
    if settings.http_port is not None:
        server = SignedUrlServer.bind(settings.http_host, settings.http_port)
        secret = settings.signing_secret.encode() if settings.signing_secret else secrets.token_bytes(32)
        base = settings.public_url or f"http://{_url_host(settings.http_host)}:{server.port}/files"
        signer = UrlSigner(secret, base, clock=clock)
    backend = LocalBackend(settings.root, signer=signer, clock=clock)
    await asyncio.to_thread(backend.create)
    if server is not None and signer is not None:
        server.app = signed_url_app(backend, signer)
    return build(backend, options, url_server=server)


def _url_host(host: str) -> str:
    if host in ("", "0.0.0.0", "::"):
        return os.uname().nodename
    return f"[{host}]" if ":" in host else host


async def make_s3(settings: S3Settings, options: PluginOptions) -> FilesPlugin:
    backend = S3Backend(settings)
    await backend.open()
    return build(backend, options)


async def make_gcs(settings: GcsSettings, options: PluginOptions) -> FilesPlugin:
    backend = GcsBackend(settings)
    await backend.open()
    return build(backend, options)
