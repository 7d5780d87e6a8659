"""Files in the platform: `upf run`'s embedded IFiles is files-local (gateway/infrastructure.py), and a
plugin's signed URLs work for a client with no token at all: a write URL takes the upload, a read URL
gives it back, and a tampered one is refused with 403. The URLs point at files-local's own listener
(plugins/files/url_server.py says why), which answers a browser's CORS preflight."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import grpc
import httpx
import pytest
import yaml

from cli.deployment import Choice, Deployment, load_deployment
from cli.infrastructure import check_deployment, known_plugins, run_infrastructure
from plugins.files.embedded import EmbeddedFiles
from plugins.sdk import DependencyUnavailable, Plugin, Timings
from plugins.sdk.files import FilesClient, FilesError
from tests.conformance.cache.harness import poll
from tests.support.processes import free_port
from tests.support.registry_process import RunningRegistry, run_registry

FAST = {"leaseTtl": 1.5, "health": {"interval": 0.2, "timeout": 0.5, "successesBeforeHealthy": 1}}


@pytest.fixture(scope="module")
def registry(work_dir: Path) -> Iterator[RunningRegistry]:
    with run_registry(FAST, work_dir) as running_registry:
        yield running_registry


def consumer(
    registry: RunningRegistry, work_dir: Path, plugin_id: str = "reports-plugin", grants: dict[str, Any] | None = None
) -> Plugin:
    path = work_dir / f"{plugin_id}-{free_port()}.yaml"
    manifest: dict[str, Any] = {
        "id": plugin_id,
        "version": "0.1.0",
        "name": plugin_id,
        "type": "business",
        "requires": [{"interface": "IFiles", "version": "^1"}],
    }
    if grants is not None:
        manifest["grants"] = grants
    path.write_text(yaml.safe_dump(manifest))
    timings = Timings(stop_notice=0, drain_grace=0.1, resolve_cache_ttl=0.1)
    return Plugin(
        path, [], registry=registry.target, handle_signals=False, timings=timings, credential=registry.credential
    )


async def test_signed_urls_of_the_embedded_files_plugin_work_without_a_token(
    registry: RunningRegistry, work_dir: Path
) -> None:
    deployment = Deployment({"files": Choice("files-local")})  # what `upf run` starts for IFiles
    async with run_infrastructure(deployment, registry.target, registry.credential) as started:
        embedded = started["files"]
        assert isinstance(embedded, EmbeddedFiles)
        root = embedded.settings.root  # type: ignore[union-attr]
        plugin = consumer(registry, work_dir)
        task = asyncio.create_task(plugin.run())
        try:
            await plugin.started.wait()

            async def files_client() -> FilesClient | None:
                try:
                    return await plugin.files()
                except DependencyUnavailable:
                    return None

            files: FilesClient = await poll(files_client, timeout=15, what="files-local to be routable")
            write = await files.signed_url("reports/q4 ü.csv", "write", expires_in=300, content_type="text/csv")
            read = await files.signed_url("reports/q4 ü.csv", "read", expires_in=300)
            async with httpx.AsyncClient(timeout=10) as http:
                put = await http.put(write.url, content=b"month,total\n10,42\n", headers=write.headers)
                assert put.status_code == 200, put.text
                got = await http.get(read.url)
                assert got.status_code == 200
                assert got.content == b"month,total\n10,42\n"

                parts = urlsplit(read.url)
                tampered = parts.query[:-1] + ("0" if parts.query[-1] != "0" else "1")
                refused = await http.get(urlunsplit(parts._replace(query=tampered)))
                assert refused.status_code == 403
                assert (await http.put(read.url, content=b"evil")).status_code == 403  # a read URL
                assert (await http.get(read.url.replace("q4", "q3"))).status_code == 403  # another path

                # A page of the shell (another origin) may PUT there: the preflight is answered.
                preflight = await http.options(
                    write.url,
                    headers={
                        "Origin": "http://127.0.0.1:8080",
                        "Access-Control-Request-Method": "PUT",
                        "Access-Control-Request-Headers": "content-type",
                    },
                )
                assert preflight.status_code == 200
                assert preflight.headers["access-control-allow-origin"] == "*"
                assert "PUT" in preflight.headers["access-control-allow-methods"]
            assert await files.download_bytes("reports/q4 ü.csv") == b"month,total\n10,42\n"
            assert root.is_dir()
        finally:
            await plugin.stop()
            await task
    assert not root.exists()  # the embedded default keeps nothing once `upf run` ends


def test_a_deployment_file_chooses_a_files_plugin_and_its_config_is_checked(tmp_path: Path) -> None:
    path = tmp_path / "deployment.yaml"
    path.write_text(
        "infrastructure:\n  files:\n    plugin: files-s3\n    config:\n"
        "      endpoint: http://127.0.0.1:9000\n      bucket: upf-files\n      accessKey: ak\n      secretKey: sk\n"
    )
    deployment = load_deployment(path, known_plugins(), {})
    check_deployment(deployment)
    assert deployment.infrastructure["files"].plugin == "files-s3"
    bad: list[tuple[dict[str, object], str]] = [
        ({"bucket": "b", "region": 3}, "infrastructure.files.config (files-s3).region: must be a non-empty string"),
        ({"endpoint": "http://x"}, "infrastructure.files.config (files-s3).bucket: files-s3 needs the bucket"),
        ({"bucket": "b", "accessKeyId": "ak"}, "accessKeyId: not a setting of files-s3"),
    ]
    for config, message in bad:
        with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
            check_deployment(Deployment({"files": Choice("files-s3", config)}))
    with pytest.raises(ValueError, match=r"httpPort: must be a whole number from -1 to 65535"):
        check_deployment(Deployment({"files": Choice("files-local", {"httpPort": "8081"})}))


@asynccontextmanager
async def running(plugin: Plugin) -> AsyncIterator[Plugin]:
    task = asyncio.create_task(plugin.run())
    try:
        await plugin.started.wait()

        async def reachable() -> bool:
            try:
                await plugin.files()
            except DependencyUnavailable:
                return False
            return bool(plugin.identity_token())

        await poll(reachable, timeout=15, what=f"{plugin.manifest.id} to reach files-local")
        yield plugin
    finally:
        await plugin.stop()
        await task


async def test_a_plugin_reads_another_plugins_files_only_where_its_manifest_grants(
    registry: RunningRegistry, work_dir: Path
) -> None:
    grants = {"files": [{"pathPrefix": "exports/", "plugins": ["billing-plugin"], "access": "read"}]}
    async with (
        run_infrastructure(Deployment({"files": Choice("files-local")}), registry.target, registry.credential),
        running(consumer(registry, work_dir, "reports-plugin", grants)) as reports,
        running(consumer(registry, work_dir, "billing-plugin")) as billing,
    ):
        own = await reports.files()
        await own.upload("exports/q4.csv", b"q4")
        await own.upload("private/salaries.csv", b"secret")

        shared = await billing.files(owner="reports-plugin")
        assert await shared.download_bytes("exports/q4.csv") == b"q4"
        assert [f.path for f in (await shared.list_page("exports/")).files] == ["exports/q4.csv"]
        read = await shared.signed_url("exports/q4.csv", "read", expires_in=60)
        async with httpx.AsyncClient(timeout=10) as http:
            assert (await http.get(read.url)).content == b"q4"
        for refused in (
            shared.upload("exports/q5.csv", b"q5"),  # a read grant
            shared.signed_url("exports/q4.csv", "write", expires_in=60),
            shared.delete("exports/q4.csv"),
            shared.download_bytes("private/salaries.csv"),  # outside the granted prefix
            shared.list_page(""),
        ):
            with pytest.raises(FilesError) as caught:
                await refused
            assert caught.value.code == grpc.StatusCode.PERMISSION_DENIED, caught.value
        assert await own.download_bytes("exports/q4.csv") == b"q4"
        assert not await (await billing.files()).exists("exports/q4.csv")  # billing's own files are its own
