"""The three files plugins, each a backend plus its settings: files-local, files-s3, files-gcs.

`make_*` are coroutines because the S3 and GCS clients must be opened inside the event loop that
uses them.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from plugins.files.local import LocalBackend
from plugins.files.plugin import FilesPlugin, PluginOptions, build
from plugins.files.signing import UrlSigner
from plugins.files.url_server import SignedUrlServer, signed_url_app

# The S3 and GCS modules load their cloud clients (botocore takes seconds to import): only when used,
# so that `upf run` with files-local does not wait for them.
if TYPE_CHECKING:
    from plugins.files.gcs import GcsSettings
    from plugins.files.s3 import S3Settings

__all__ = [
    "KINDS",
    "LocalSettings",
    "make",
    "make_gcs",
    "make_local",
    "make_s3",
    "settings_from_config",
]

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
    from plugins.files.s3 import S3Backend

    backend = S3Backend(settings)
    await backend.open()
    return build(backend, options)


async def make_gcs(settings: GcsSettings, options: PluginOptions) -> FilesPlugin:
    from plugins.files.gcs import GcsBackend

    backend = GcsBackend(settings)
    await backend.open()
    return build(backend, options)


if TYPE_CHECKING:
    Settings = LocalSettings | S3Settings | GcsSettings

# The deployment file's `config:` keys of each files plugin -> (settings field, parse).
_MIB = 1024 * 1024


def _text(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError("must be a non-empty string")
    return value


def _flag(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError("must be true or false")
    return value


def _whole(low: int, high: int) -> Callable[[Any], int]:
    def parse(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ValueError(f"must be a whole number from {low} to {high}")
        return value

    return parse


_CONFIG: dict[str, dict[str, tuple[str, Callable[[Any], Any]]]] = {
    "files-local": {
        "root": ("root", lambda v: Path(_text(v))),
        "httpHost": ("http_host", _text),
        # -1: no listener (and no signed URLs)
        "httpPort": ("http_port", lambda v: None if _whole(-1, 65535)(v) == -1 else v),
        "publicUrl": ("public_url", _text),
        "signingSecret": ("signing_secret", _text),
    },
    "files-s3": {
        "bucket": ("bucket", _text),
        "endpoint": ("endpoint_url", _text),
        "region": ("region", _text),
        "createBucket": ("create_bucket", _flag),
        "partSizeMib": ("part_size", lambda v: _whole(5, 512)(v) * _MIB),
        # Usually from the AWS sources (environment, ~/.aws, roles); the seed's MinIO example names them.
        "accessKey": ("access_key_id", _text),
        "secretKey": ("secret_access_key", _text),
    },
    "files-gcs": {
        "bucket": ("bucket", _text),
        "apiRoot": ("api_root", _text),
        "serviceFile": ("service_file", lambda v: Path(_text(v))),
        "createBucket": ("create_bucket", _flag),
        "project": ("project", _text),
        "partSizeMib": ("part_size", lambda v: _whole(1, 512)(v) * _MIB),
    },
}


def settings_from_config(kind: str, config: Mapping[str, Any], where: str = "config", *, root: Path) -> Settings:
    """The settings of files plugin `kind` from a deployment file's `config:` (the keys of _CONFIG);
    ValueError naming the key for anything else. `root`: files-local's directory when config has none."""
    keys = _CONFIG[kind]
    fields: dict[str, Any] = {}
    for key, value in config.items():
        if key not in keys:
            raise ValueError(f"{where}.{key}: not a setting of {kind} (one of {', '.join(keys)})")
        name, parse = keys[key]
        try:
            fields[name] = parse(value)
        except ValueError as exc:
            raise ValueError(f"{where}.{key}: {exc}") from None
    if kind == "files-local":
        return LocalSettings(**{"root": root, **fields})
    if "bucket" not in fields:
        raise ValueError(f"{where}.bucket: {kind} needs the bucket's name")
    if kind == "files-s3":
        from plugins.files.s3 import S3Settings

        return S3Settings(**fields)
    from plugins.files.gcs import GcsSettings

    return GcsSettings(**fields)


async def make(settings: Settings, options: PluginOptions) -> FilesPlugin:
    """The files plugin for `settings` (its kind is the settings' type)."""
    if isinstance(settings, LocalSettings):
        return await make_local(settings, options)
    from plugins.files.s3 import S3Settings

    if isinstance(settings, S3Settings):
        return await make_s3(settings, options)
    return await make_gcs(settings, options)
