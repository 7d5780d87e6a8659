"""`upf plugin cache-*` as real processes: they register with a real `upf registry`, and a plugin that
requires ICache reaches whichever one is deployed with `await plugin.cache()`, in its own namespace."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import grpc
import pytest
import yaml

from plugins.cache.plugin import Backend
from plugins.sdk import DependencyUnavailable, Plugin, Timings
from plugins.sdk.cache import CacheClient, CacheError, CacheUnavailable
from plugins.sdk.identity import caller_token_interceptors
from tests.conformance.cache.harness import poll
from tests.support.processes import Process, free_port
from tests.support.redis_server import SHARED_URL, delete_prefix, new_prefix, shared_client
from tests.support.registry_process import RunningRegistry, run_registry

UPF = str(Path(sys.executable).parent / "upf")
FAST = {"leaseTtl": 1.5, "health": {"interval": 0.2, "timeout": 0.5, "successesBeforeHealthy": 1}}


@contextmanager
def cache_plugin(
    backend: Backend, registry: RunningRegistry, work_dir: Path, memcached: str, *, timeout: float = 2.0
) -> Iterator[tuple[Process, str]]:
    port, prefix = free_port(), new_prefix()
    args = [UPF, "plugin", f"cache-{backend}", "--registry", registry.target, "--port", str(port), "--drain-grace", "1"]
    args += ["--key-prefix", prefix, "--redis-url", SHARED_URL, "--memcached", memcached]
    env = {key: value for key, value in os.environ.items() if not key.startswith("UPF_")}
    env["UPF_CACHE_TIMEOUT"] = str(timeout)
    env["UPF_REGISTRATION_CREDENTIAL"] = registry.credential(f"cache-{backend}")
    process = Process(args, env=env, log=work_dir / f"cache-{backend}-{port}.log")
    try:
        yield process, f"127.0.0.1:{port}"
    finally:
        process.stop()
        if backend == "redis":
            client = shared_client()
            delete_prefix(client, prefix)
            client.close()


def consumer_manifest(work_dir: Path, plugin_id: str) -> Path:
    path = work_dir / f"{plugin_id}-{free_port()}.yaml"
    manifest = {
        "id": plugin_id,
        "version": "0.1.0",
        "name": "Cache consumer",
        "type": "business",
        "requires": [{"interface": "ICache", "version": "^1"}],
    }
    path.write_text(yaml.safe_dump(manifest))
    return path


def consumer_plugin(registry: RunningRegistry, work_dir: Path, plugin_id: str = "cache-consumer") -> Plugin:
    return Plugin(
        consumer_manifest(work_dir, plugin_id),
        [],
        registry=registry.target,
        handle_signals=False,
        timings=Timings(stop_notice=0, drain_grace=0.1, resolve_cache_ttl=0.1),
        credential=registry.credential,
    )


@asynccontextmanager
async def running(plugin: Plugin) -> AsyncIterator[Plugin]:
    task = asyncio.create_task(plugin.run())
    try:
        await plugin.started.wait()
        await poll(lambda: _registered(plugin), timeout=15, what=f"{plugin.manifest.id} to hold its identity token")
        yield plugin
    finally:
        await plugin.stop()
        await task


async def _registered(plugin: Plugin) -> bool:
    return bool(plugin.identity_token())


@pytest.mark.parametrize("backend", ["memory", "redis", "memcached"])
async def test_a_plugin_reaches_the_deployed_cache_through_the_registry(
    backend: Backend, work_dir: Path, memcached_address: str
) -> None:
    with (
        run_registry(FAST, work_dir) as registry,
        cache_plugin(backend, registry, work_dir, memcached_address) as (process, endpoint),
    ):
        async with (
            running(consumer_plugin(registry, work_dir)) as consumer,
            running(consumer_plugin(registry, work_dir, "other-consumer")) as other,
        ):

            async def resolved() -> CacheClient | None:
                assert process.alive(), process.output()
                try:
                    return await consumer.cache()
                except DependencyUnavailable:
                    return None

            cache = await poll(resolved, timeout=15, what=f"cache-{backend} to be routable")
            assert (await cache.describe()).backend == backend
            await cache.set("greeting", b"hello", ttl=60)
            assert await cache.get("greeting") == b"hello"
            # The consumer's keys are in its namespace, named by the token the registry signed for it.
            assert await (await other.cache()).get("greeting") is None
            async with grpc.aio.insecure_channel(endpoint) as channel:
                with pytest.raises(CacheError) as refused:  # a name merely claimed is not enough
                    await CacheClient(channel, caller="cache-consumer").get("greeting")
                assert refused.value.code == grpc.StatusCode.UNAUTHENTICATED
        assert process.alive(), process.output()


async def test_the_memcached_plugin_answers_unavailable_while_memcached_is_down(work_dir: Path) -> None:
    nowhere = f"127.0.0.1:{free_port()}"  # no memcached listens there
    with (
        run_registry(FAST, work_dir) as registry,
        cache_plugin("memcached", registry, work_dir, nowhere, timeout=0.3) as (_, endpoint),
    ):
        async with running(consumer_plugin(registry, work_dir)) as consumer:
            interceptors = caller_token_interceptors(consumer.identity_token)
            async with grpc.aio.insecure_channel(endpoint, interceptors=interceptors) as channel:
                client = CacheClient(channel, timeout=10)

                async def refused() -> bool:
                    try:
                        await client.get("k")
                    except CacheUnavailable as exc:
                        return "memcached" in str(exc) and "Traceback" not in str(exc)
                    return False

                assert await poll(refused, timeout=10, what="the plugin to answer")


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--key-prefix", "a b"], {}, "key prefix 'a b': 1-100 printable ASCII characters"),
        ([], {"UPF_CACHE_TIMEOUT": "soon"}, "UPF_CACHE_TIMEOUT='soon' is not a number"),
        ([], {"UPF_CACHE_MAX_VALUE_BYTES": "99999999"}, "max value bytes 99999999: between 1 and"),
    ],
)
def test_bad_settings_stop_the_plugin_with_a_message(args: list[str], env: dict[str, str], message: str) -> None:
    clean = {key: value for key, value in os.environ.items() if not key.startswith("UPF_")}
    result = subprocess.run(
        [UPF, "plugin", "cache-memcached", *args], env={**clean, **env}, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
