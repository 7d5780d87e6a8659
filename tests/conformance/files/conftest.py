"""Fixtures of the IFiles conformance suite: one implementation at a time, each with its real backend.

`implementation` is parametrised over files-local, files-s3 and files-gcs and scoped to the module, so
each backend server, registry and plugin starts once and every test body runs against all three. Two
client plugins (files-test-a, files-test-b) register with the same registry and reach the files plugin
through the SDK, so every call carries a real identity token and lands in its caller's namespace.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import pytest_asyncio
from aiobotocore.session import get_session

from plugins.files.gcs import GcsSettings
from plugins.files.kinds import LocalSettings, make_gcs, make_local, make_s3
from plugins.files.plugin import MANIFESTS, FilesPlugin, PluginOptions
from plugins.files.s3 import S3Settings
from plugins.sdk import Plugin, Timings
from plugins.sdk.files import FilesClient
from tests.conformance.files.backends import BUCKET, GcsEmulator, HttpServer, MotoS3, service_account_file
from tests.support.processes import eventually
from tests.support.registry_process import RunningRegistry, run_registry

IMPLEMENTATIONS = ("files-local", "files-s3", "files-gcs")
FAST = Timings(drain_grace=1.0, stop_notice=0.0, resolve_cache_ttl=0.5, backoff_initial=0.05, backoff_max=0.5)

CLIENT_MANIFEST = """\
id: {id}
version: 0.1.0
name: Files conformance client
description: Calls IFiles the way any plugin does, through the SDK.
type: business
provides: []
requires:
  - interface: IFiles
    version: ^1.0.0
"""


class Clock:
    """Wall time plus an offset the tests move forward (files-local's signed URL expiry)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


@dataclass
class Implementation:
    name: str
    registry: RunningRegistry
    work_dir: Path
    make: Callable[[PluginOptions], Awaitable[FilesPlugin]]
    # The backend as a process (or, for files-local, its directory) that the failure tests take away.
    take_down: Callable[[], object]
    bring_back: Callable[[], object]
    cli_args: list[str]  # `upf plugin NAME ...` for the test that measures the plugin process
    cli_env: dict[str, str] = field(default_factory=dict)  # and its environment
    clock: Clock | None = None  # files-local's injected clock
    # Whether the backend itself refuses a tampered or expired signed URL. moto and the GCS emulator
    # accept any signature; AWS and Google check them, but cannot be reached from here.
    checks_signatures: bool = False
    # Parts of unfinished uploads the backend still keeps (S3 multipart uploads); None: not observable.
    pending_uploads: Callable[[], Awaitable[int]] | None = None
    paginates: bool = True  # whether the backend honours a page size (the GCS emulator does not)
    expected_capabilities: frozenset[str] = field(
        default_factory=lambda: frozenset({"range", "signed-urls", "user-metadata", "server-side-copy"})
    )

    def options(self, **overrides: object) -> PluginOptions:
        values: dict[str, object] = {
            "manifest": MANIFESTS / f"{self.name}.yaml",
            "registry": self.registry.target,
            "credential": self.registry.credential,
            "timings": FAST,
            "handle_signals": False,
        }
        values.update(overrides)
        return PluginOptions(**values)  # type: ignore[arg-type]


@pytest.fixture(scope="module", params=IMPLEMENTATIONS)
def implementation(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Implementation]:
    name: str = request.param
    work_dir = tmp_path_factory.mktemp(name)
    with run_registry({}, work_dir) as registry:
        if name == "files-local":
            yield _local(registry, work_dir)
            return
        server: HttpServer = MotoS3(work_dir) if name == "files-s3" else GcsEmulator(work_dir)
        server.start()
        try:
            yield _remote(name, registry, work_dir, server)
        finally:
            server.stop()


def _local(registry: RunningRegistry, work_dir: Path) -> Implementation:
    root = work_dir / "files-root"
    aside = work_dir / "files-root-aside"
    clock = Clock()

    async def make(options: PluginOptions) -> FilesPlugin:
        return await make_local(LocalSettings(root=root, http_port=0), options, clock=clock)

    return Implementation(
        name="files-local",
        registry=registry,
        work_dir=work_dir,
        make=make,
        # An unmounted volume, as the plugin sees it: the directory is gone, then back as it was.
        take_down=lambda: shutil.move(root, aside),
        bring_back=lambda: shutil.move(aside, root),
        cli_args=["--root", str(work_dir / "files-root-process"), "--http-port", "0"],
        clock=clock,
        checks_signatures=True,
    )


def _remote(name: str, registry: RunningRegistry, work_dir: Path, server: HttpServer) -> Implementation:
    pending: Callable[[], Awaitable[int]] | None
    if name == "files-s3":
        s3 = S3Settings(
            bucket=BUCKET,
            endpoint_url=server.url,
            access_key_id="test",
            secret_access_key="test",
            connect_timeout=1.0,
            read_timeout=10.0,
        )

        async def make(options: PluginOptions) -> FilesPlugin:
            return await make_s3(s3, options)

        cli = ["--bucket", BUCKET, "--endpoint", server.url]
        env = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test"}

        async def pending_s3() -> int:
            session = get_session().create_client(
                "s3", endpoint_url=server.url, region_name="us-east-1", aws_access_key_id="test",
                aws_secret_access_key="test",
            )  # fmt: skip
            async with session as s3:
                return len((await s3.list_multipart_uploads(Bucket=BUCKET)).get("Uploads", []))

        pending = pending_s3
    else:
        key_file = service_account_file(work_dir)
        gcs = GcsSettings(
            bucket=BUCKET, api_root=server.url, service_file=key_file, connect_timeout=1.0, read_timeout=10.0
        )

        async def make(options: PluginOptions) -> FilesPlugin:
            return await make_gcs(gcs, options)

        cli = ["--bucket", BUCKET, "--api-root", server.url, "--service-file", str(key_file)]
        env = {}
        pending = None  # GCS resumable sessions cannot be listed
    return Implementation(
        name=name,
        registry=registry,
        work_dir=work_dir,
        make=make,
        take_down=server.stop,
        bring_back=server.start,
        cli_args=cli,
        cli_env=env,
        pending_uploads=pending,
        paginates=name != "files-gcs",
    )


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def files_plugin(implementation: Implementation) -> AsyncIterator[FilesPlugin]:
    files = await implementation.make(implementation.options())
    task = asyncio.create_task(files.run())
    await eventually(lambda: files.ready.is_set() or task.done(), timeout=15, what="the files plugin to serve")
    if task.done():
        task.result()
    await eventually(lambda: files.plugin.keeper is not None and files.plugin.keeper.lease_id, timeout=15,
                     what="the files plugin to register")  # fmt: skip
    yield files
    await files.stop()
    await task


@dataclass
class Client:
    plugin: Plugin
    files: FilesClient


async def _client(plugin_id: str, implementation: Implementation) -> AsyncIterator[Client]:
    manifest = implementation.work_dir / f"{plugin_id}.yaml"
    manifest.write_text(CLIENT_MANIFEST.format(id=plugin_id))
    plugin = Plugin(
        manifest,
        [],
        registry=implementation.registry.target,
        credential=implementation.registry.credential,
        timings=FAST,
        handle_signals=False,
    )
    task = asyncio.create_task(plugin.run())
    await eventually(lambda: bool(plugin.identity_token()) or task.done(), timeout=15, what=f"{plugin_id} to register")
    if task.done():
        task.result()
    yield Client(plugin, await plugin.files())
    await plugin.stop()
    await task


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def client(implementation: Implementation, files_plugin: FilesPlugin) -> AsyncIterator[Client]:
    async for made in _client("files-test-a", implementation):
        yield made


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def other_client(implementation: Implementation, files_plugin: FilesPlugin) -> AsyncIterator[Client]:
    async for made in _client("files-test-b", implementation):
        yield made


@pytest.fixture
def files(client: Client) -> FilesClient:
    return client.files


@pytest.fixture
def run_id() -> str:
    """A fresh folder per test, so that tests (and reruns against a kept backend) never see each other's files."""
    return f"run-{os.getpid()}-{time.monotonic_ns()}"
