"""MiB/s up and down through each files plugin, against the backend's own client used directly.

    python -m bench.files [--mib 64] [--rounds 3] [--only files-local,files-s3,files-gcs]

Per implementation, one run starts (by PID, on free ports on 127.0.0.1) the backend's server (moto's
S3 server, gcp-storage-emulator; files-local has a directory), a registry and the plugin as its own
process (`upf plugin NAME`), then alternates, round after round: an upload of `--mib` MiB and its
download through the plugin (the SDK's FilesClient, 1 MiB chunks, a registered client's identity
token), and the same bytes through the backend's own client directly (aiobotocore put_object /
get_object; gcloud-aio-storage upload / download; open().write / read for the directory). The ratio
is plugin / direct, from the median of the rounds; the issue's target is >= 0.7.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml
from aiobotocore.session import get_session
from gcloud.aio.storage import Storage

from bench.harness import HOST, Server, free_port, log
from common.rpc.channel import Channel
from plugins.sdk import Plugin, Timings
from plugins.sdk.files import FilesClient
from plugins.sdk.identity import caller_token_hook
from registry.credentials import RegistrationCredentials

MiB = 1024 * 1024
BUCKET = "bench-files"
SECRET = "bench-files-registration-secret"
KINDS = ("files-local", "files-s3", "files-gcs")
BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parent.parent
CLIENT_MANIFEST = """\
id: bench-files-client
version: 0.1.0
name: Files benchmark client
description: Calls IFiles through the SDK.
type: business
provides: []
requires:
  - interface: IFiles
    version: ^1.0.0
"""


@dataclass
class Rates:
    up: list[float]
    down: list[float]


async def chunks(size: int) -> AsyncIterator[bytes]:
    block = os.urandom(MiB)
    for _ in range(size // MiB):
        yield block


async def timed(action: Callable[[], Awaitable[Any]], size: int) -> float:
    start = time.perf_counter()
    await action()
    return size / MiB / (time.perf_counter() - start)


async def through_plugin(files: FilesClient, size: int, rounds: Rates) -> None:
    rounds.up.append(await timed(lambda: files.upload("bench/blob.bin", chunks(size)), size))

    async def download() -> None:
        async for _ in files.download("bench/blob.bin"):
            pass

    rounds.down.append(await timed(download, size))


class Direct:
    """The backend's own client, as an application without UPF would use it."""

    async def open(self) -> None:
        return None

    async def upload(self, data: bytes) -> None: ...

    async def download(self) -> None: ...

    async def close(self) -> None:
        return None


class DirectLocal(Direct):
    def __init__(self, root: Path) -> None:
        self.path = root / "direct.bin"

    async def upload(self, data: bytes) -> None:
        def write() -> None:
            with open(self.path, "wb") as handle:
                for start in range(0, len(data), MiB):
                    handle.write(data[start : start + MiB])
                handle.flush()
                os.fsync(handle.fileno())  # as files-local does before a file becomes visible

        await asyncio.to_thread(write)

    async def download(self) -> None:
        def read() -> None:
            with open(self.path, "rb") as handle:
                while handle.read(MiB):
                    pass

        await asyncio.to_thread(read)


class DirectS3(Direct):
    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self._context: Any = None
        self.client: Any = None

    async def open(self) -> None:
        self._context = get_session().create_client(
            "s3", endpoint_url=self.endpoint, region_name="us-east-1", aws_access_key_id="bench",
            aws_secret_access_key="bench",
        )  # fmt: skip
        self.client = await self._context.__aenter__()

    async def upload(self, data: bytes) -> None:
        await self.client.put_object(Bucket=BUCKET, Key="direct.bin", Body=data)

    async def download(self) -> None:
        reply = await self.client.get_object(Bucket=BUCKET, Key="direct.bin")
        async with reply["Body"] as body:
            async for _ in body.iter_chunks(MiB):
                pass

    async def close(self) -> None:
        await self._context.__aexit__(None, None, None)


class DirectGcs(Direct):
    def __init__(self, api_root: str) -> None:
        self.api_root = api_root
        self.storage: Storage | None = None

    async def open(self) -> None:
        self.storage = Storage(api_root=self.api_root)

    async def upload(self, data: bytes) -> None:
        assert self.storage is not None
        await self.storage.upload(BUCKET, "direct.bin", data, timeout=600)

    async def download(self) -> None:
        assert self.storage is not None
        stream = await self.storage.download_stream(BUCKET, "direct.bin", timeout=600)
        while await stream.read(MiB):
            pass

    async def close(self) -> None:
        if self.storage is not None:
            await self.storage.close()


async def measure(kind: str, run_dir: Path, size: int, rounds: int) -> tuple[Rates, Rates]:
    servers: list[Server] = []
    try:
        plugin_args, env, direct = start_backend(kind, run_dir, servers)
        registry_port = free_port()
        config = run_dir / f"registry-{kind}.yaml"
        config.write_text(yaml.safe_dump({"port": registry_port, "registration": {"secret": SECRET}}))
        registry = Server("registry", [str(BIN / "upf"), "registry", "--config", str(config)], [registry_port],
                          run_dir / f"registry-{kind}.log")  # fmt: skip
        servers.append(registry)
        registry.start(ROOT)
        registry.wait_ready()
        credentials = RegistrationCredentials(SECRET.encode())
        port = free_port()
        argv = [str(BIN / "upf"), "plugin", kind, "--registry", f"{HOST}:{registry_port}", "--port", str(port),
                "--log-level", "warning", *plugin_args]  # fmt: skip
        plugin = Server(kind, argv, [port], run_dir / f"{kind}.log")
        servers.append(plugin)
        plugin.start(ROOT, env={**env, "UPF_REGISTRATION_CREDENTIAL": credentials.for_plugin(kind)})
        plugin.wait_ready()
        manifest = run_dir / "client.yaml"
        manifest.write_text(CLIENT_MANIFEST)
        client = Plugin(manifest, [], registry=f"{HOST}:{registry_port}", handle_signals=False,
                        credential=credentials.for_plugin, timings=Timings(stop_notice=0, drain_grace=1))  # fmt: skip
        client_task = asyncio.create_task(client.run())
        await client.started.wait()
        while not client.identity_token():  # noqa: ASYNC110  # the token arrives with the lease, no event for it
            await asyncio.sleep(0.05)
        channel = Channel(f"{HOST}:{port}", metadata_hooks=[caller_token_hook(client.identity_token)])  # as the SDK's
        files = FilesClient(channel, chunk_size=MiB)
        await direct.open()
        data = b"".join([chunk async for chunk in chunks(size)])
        via, own = Rates([], []), Rates([], [])
        await through_plugin(files, 4 * MiB, Rates([], []))  # warm-up
        for index in range(rounds):
            await through_plugin(files, size, via)
            own.up.append(await timed(lambda: direct.upload(data), size))
            own.down.append(await timed(direct.download, size))
            log(f"{kind} round {index + 1}: plugin {via.up[-1]:.0f}/{via.down[-1]:.0f} MiB/s up/down, "
                f"direct {own.up[-1]:.0f}/{own.down[-1]:.0f}")  # fmt: skip
        await direct.close()
        await channel.close(None)
        await client.stop()
        await client_task
        return via, own
    finally:
        for server in reversed(servers):
            server.stop()


def start_backend(kind: str, run_dir: Path, servers: list[Server]) -> tuple[list[str], dict[str, str], Direct]:
    if kind == "files-local":
        root = run_dir / "files-root"
        root.mkdir()
        return ["--root", str(root)], {}, DirectLocal(root)
    port = free_port()
    url = f"http://{HOST}:{port}"
    if kind == "files-s3":
        server = Server("moto", [str(BIN / "moto_server"), "-H", HOST, "-p", str(port)], [port], run_dir / "moto.log")
        servers.append(server)
        server.start(ROOT)
        server.wait_ready()
        httpx.put(f"{url}/{BUCKET}").raise_for_status()
        env = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench"}
        return ["--bucket", BUCKET, "--endpoint", url], env, DirectS3(url)
    argv = [str(BIN / "gcp-storage-emulator"), "start", "--host", HOST, "--port", str(port), "--in-memory",
            "--default-bucket", BUCKET, "--quiet"]  # fmt: skip
    server = Server("gcs-emulator", argv, [port], run_dir / "gcs.log", ready_url=url + "/")
    servers.append(server)
    server.start(ROOT)
    server.wait_ready()
    return ["--bucket", BUCKET, "--api-root", url], {}, DirectGcs(url)


async def run(kinds: list[str], size: int, rounds: int) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-files-") as tmp:
        rows = []
        for kind in kinds:
            run_dir = Path(tmp) / kind
            run_dir.mkdir()
            via, own = await measure(kind, run_dir, size, rounds)
            rows.append((kind, via, own))
    print(f"\n{size // MiB} MiB per transfer, median of {rounds} rounds (MiB/s)\n")
    print("| plugin | up via plugin | up direct | ratio | down via plugin | down direct | ratio |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for kind, via, own in rows:
        up, up_direct = statistics.median(via.up), statistics.median(own.up)
        down, down_direct = statistics.median(via.down), statistics.median(own.down)
        print(f"| {kind} | {up:.0f} | {up_direct:.0f} | {up / up_direct:.2f} | {down:.0f} | {down_direct:.0f} | "
              f"{down / down_direct:.2f} |")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mib", type=int, default=64, help="MiB per transfer (default 64)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per implementation (default 3)")
    parser.add_argument("--only", default=",".join(KINDS), help="comma-separated implementations")
    args = parser.parse_args()
    kinds = [kind for kind in args.only.split(",") if kind]
    unknown = set(kinds) - set(KINDS)
    if unknown:
        parser.error(f"unknown implementation(s): {', '.join(sorted(unknown))}")
    asyncio.run(run(kinds, args.mib * MiB, args.rounds))


if __name__ == "__main__":
    main()
