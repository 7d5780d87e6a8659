"""`upf plugin files-local|files-s3|files-gcs [options]`: a files plugin as its own process.

Each option also reads an environment variable (shown in --help), so a Procfile or a container needs
no flags; the flag wins when both are given.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path

from common.logs import configure_logging
from plugins.files.allocator import reuse_large_buffers
from plugins.files.gcs import GcsSettings
from plugins.files.kinds import KINDS, LocalSettings, make_gcs, make_local, make_s3
from plugins.files.plugin import MANIFESTS, FilesPlugin, PluginOptions, run_files_plugin
from plugins.files.s3 import S3Settings
from plugins.sdk import Timings

__all__ = ["main"]

_DESCRIPTIONS = {
    "files-local": "IFiles over a local directory (the embedded default): atomic writes (temp file + rename), "
    "signed URLs served by the plugin's own HTTP listener (HMAC-SHA256 over method, path, expiry, content type).",
    "files-s3": "IFiles over an S3 bucket: AWS S3, or MinIO or any S3 API with --endpoint (the seed's files-minio). "
    "Large uploads go up as multipart uploads, so memory stays constant; signed URLs are S3's presigned URLs. "
    "Credentials come from the usual AWS sources (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, ~/.aws, roles).",
    "files-gcs": "IFiles over a Google Cloud Storage bucket (or an emulator with --api-root). Large uploads are "
    "resumable uploads sent in parts; signed URLs are V4 signed URLs and need a service account key file.",
}


def _env(name: str, default: str = "") -> str:
    return os.environ.get(name, default)


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not -1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a port (0 to 65535; 0: any free port)")
    return port


def build_parser(kind: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"upf plugin {kind}", description=_DESCRIPTIONS[kind])
    common = parser.add_argument_group("plugin")
    common.add_argument(
        "--registry",
        default=_env("UPF_REGISTRY_URL", "127.0.0.1:50052"),
        metavar="ADDR",
        help="the registry's host:port ($UPF_REGISTRY_URL; default 127.0.0.1:50052)",
    )
    common.add_argument("--host", default=_env("UPF_HOST", "127.0.0.1"), help="gRPC address ($UPF_HOST; 127.0.0.1)")
    common.add_argument(
        "--port", type=_port, default=_env("UPF_PORT", "0"), help="gRPC port ($UPF_PORT; 0: any free port)"
    )
    common.add_argument("--instance-id", metavar="ID", help="this instance's id (default: <plugin id>-<random>)")
    common.add_argument("--manifest", type=Path, metavar="FILE", help="use this manifest instead of the plugin's own")
    common.add_argument("--drain-grace", type=float, default=10.0, metavar="SECONDS", help="time calls get on SIGTERM")
    common.add_argument(
        "--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"], help="log level"
    )
    own = parser.add_argument_group(kind)
    if kind == "files-local":
        own.add_argument(
            "--root", type=Path, default=Path(_env("UPF_FILES_ROOT", "data/files")), help="the directory "
            "($UPF_FILES_ROOT; default data/files); made if missing at start",
        )  # fmt: skip
        own.add_argument("--http-host", default=_env("UPF_FILES_HTTP_HOST", "127.0.0.1"), help="signed URLs' listener")
        own.add_argument(
            "--http-port", type=_port, default=_env("UPF_FILES_HTTP_PORT", "0"),
            help="its port ($UPF_FILES_HTTP_PORT; 0: any free port; -1: no listener and no signed URLs)",
        )  # fmt: skip
        own.add_argument(
            "--public-url", default=_env("UPF_FILES_PUBLIC_URL"), metavar="URL",
            help="what signed URLs start with ($UPF_FILES_PUBLIC_URL; default http://HTTP_HOST:PORT/files); set it "
            "when a proxy forwards a public path prefix to the listener",
        )  # fmt: skip
        own.add_argument(
            "--signing-secret", default=_env("UPF_FILES_SIGNING_SECRET"), metavar="TEXT",
            help="HMAC key of the URLs ($UPF_FILES_SIGNING_SECRET; default: random per start, so URLs die with "
            "the process; replicas behind one URL need the same)",
        )  # fmt: skip
    elif kind == "files-s3":
        own.add_argument("--bucket", default=_env("UPF_FILES_S3_BUCKET"), help="the bucket ($UPF_FILES_S3_BUCKET)")
        own.add_argument(
            "--endpoint", default=_env("UPF_FILES_S3_ENDPOINT"), metavar="URL",
            help="S3 API endpoint ($UPF_FILES_S3_ENDPOINT; default AWS); e.g. http://127.0.0.1:9000 for MinIO",
        )  # fmt: skip
        own.add_argument("--region", default=_env("UPF_FILES_S3_REGION", _env("AWS_REGION", "us-east-1")))
        own.add_argument(
            "--create-bucket", action="store_true", default=_env("UPF_FILES_S3_CREATE_BUCKET") == "1",
            help="create the bucket at start if it is missing ($UPF_FILES_S3_CREATE_BUCKET=1)",
        )  # fmt: skip
        own.add_argument(
            "--part-size-mib", type=int, default=int(_env("UPF_FILES_S3_PART_SIZE_MIB", "8")),
            help="multipart part size in MiB (5 to 512; default 8): one upload holds two parts",
        )  # fmt: skip
    else:
        own.add_argument("--bucket", default=_env("UPF_FILES_GCS_BUCKET"), help="the bucket ($UPF_FILES_GCS_BUCKET)")
        own.add_argument(
            "--api-root", default=_env("UPF_FILES_GCS_API_ROOT"), metavar="URL",
            help="an emulator's URL ($UPF_FILES_GCS_API_ROOT; default: Google's API)",
        )  # fmt: skip
        own.add_argument(
            "--service-file", type=Path, default=_env("GOOGLE_APPLICATION_CREDENTIALS") or None, metavar="FILE",
            help="service account key ($GOOGLE_APPLICATION_CREDENTIALS); signed URLs need one",
        )  # fmt: skip
        own.add_argument(
            "--create-bucket", action="store_true", default=_env("UPF_FILES_GCS_CREATE_BUCKET") == "1",
            help="create the bucket at start if it is missing ($UPF_FILES_GCS_CREATE_BUCKET=1)",
        )  # fmt: skip
        own.add_argument("--project", default=_env("UPF_FILES_GCS_PROJECT", "upf"), help="project for --create-bucket")
        own.add_argument(
            "--part-size-mib", type=int, default=int(_env("UPF_FILES_GCS_PART_SIZE_MIB", "8")),
            help="resumable upload part size in MiB (default 8): one upload holds two parts",
        )  # fmt: skip
    return parser


def main(kind: str, argv: Sequence[str]) -> int:
    if kind not in KINDS:
        raise ValueError(f"not a files plugin: {kind}")
    parser = build_parser(kind)
    args = parser.parse_args(argv)
    configure_logging(args.log_level)
    reuse_large_buffers()  # this process is the plugin's own (embedded files-local leaves the gateway's alone)
    options = PluginOptions(
        manifest=args.manifest or MANIFESTS / f"{kind}.yaml",
        registry=args.registry,
        host=args.host,
        port=args.port,
        instance_id=args.instance_id,
        timings=Timings(drain_grace=args.drain_grace),
    )
    if kind in ("files-s3", "files-gcs") and not args.bucket:
        parser.error(f"--bucket (or $UPF_FILES_{kind[6:].upper()}_BUCKET) is required")

    async def make() -> FilesPlugin:
        if kind == "files-local":
            local = LocalSettings(
                root=args.root,
                http_host=args.http_host,
                http_port=None if args.http_port < 0 else args.http_port,
                public_url=args.public_url,
                signing_secret=args.signing_secret,
            )
            return await make_local(local, options)
        if kind == "files-s3":
            s3 = S3Settings(
                bucket=args.bucket,
                endpoint_url=args.endpoint or None,
                region=args.region,
                create_bucket=args.create_bucket,
                part_size=args.part_size_mib * 1024 * 1024,
            )
            return await make_s3(s3, options)
        gcs = GcsSettings(
            bucket=args.bucket,
            api_root=args.api_root or None,
            service_file=args.service_file,
            create_bucket=args.create_bucket,
            project=args.project,
            part_size=args.part_size_mib * 1024 * 1024,
        )
        return await make_gcs(gcs, options)

    return run_files_plugin(make)
