"""`upf plugin cache-*` as real processes: they register with a real `upf registry`, and plugins that
require ICache reach whichever one is deployed with `await plugin.cache()`, each in the namespace of
its verified plugin id: one plugin cannot read another's keys or release its locks."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import grpc
import pytest
import yaml

from cli.main import main
from plugins.cache.plugin import Backend, CacheSettings
from plugins.sdk import DependencyUnavailable, Plugin, Timings
from plugins.sdk.cache import CacheClient, CacheError, CacheUnavailable, LockNotHeld
from plugins.sdk.identity import caller_token_interceptors
from tests.conformance.cache.harness import poll
from tests.support.processes import Process, free_port
from tests.support.redis_server import SHARED_URL, delete_prefix, new_prefix, shared_client
from tests.support.registry_process import RunningRegistry, run_registry

UPF = str(Path(sys.executable).parent / "upf")
FAST = {"leaseTtl": 1.5, "health": {"interval": 0.2, "timeout": 0.5, "successesBeforeHealthy": 1}}


@pytest.fixture(scope="module")
def registry(work_dir: Path) -> Iterator[RunningRegistry]:
    with run_registry(FAST, work_dir) as running_registry:
        yield running_registry


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


def consumer_plugin(registry: RunningRegistry, work_dir: Path, plugin_id: str) -> Plugin:
    """A plugin (in this process, registered for real) that requires ICache."""
    path = work_dir / f"{plugin_id}-{free_port()}.yaml"
    manifest = {
        "id": plugin_id,
        "version": "0.1.0",
        "name": plugin_id,
        "type": "business",
        "requires": [{"interface": "ICache", "version": "^1"}],
    }
    path.write_text(yaml.safe_dump(manifest))
    return Plugin(
        path,
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


async def resolved(plugin: Plugin, process: Process) -> CacheClient:
    async def cache() -> CacheClient | None:
        assert process.alive(), process.output()
        try:
            return await plugin.cache()
        except DependencyUnavailable:
            return None

    client: CacheClient = await poll(cache, timeout=15, what="the cache plugin to be routable")
    return client


@pytest.mark.parametrize("backend", ["memory", "redis", "memcached"])
async def test_plugins_reach_the_deployed_cache_each_in_its_own_verified_namespace(
    backend: Backend, registry: RunningRegistry, work_dir: Path, memcached_address: str
) -> None:
    with cache_plugin(backend, registry, work_dir, memcached_address) as (process, endpoint):
        async with (
            running(consumer_plugin(registry, work_dir, "orders-plugin")) as orders,
            running(consumer_plugin(registry, work_dir, "billing-plugin")) as billing,
        ):
            mine, theirs = await resolved(orders, process), await resolved(billing, process)
            assert (await mine.describe()).backend == backend
            await mine.set("greeting", b"hello", ttl=60)
            assert await mine.get("greeting") == b"hello"
            assert await theirs.get("greeting") is None  # billing's "greeting" is another key
            lock = await mine.acquire("nightly", ttl=60)
            assert lock is not None
            with pytest.raises(LockNotHeld):
                await theirs.release(lock)  # not even with orders' own token
            assert await theirs.acquire("nightly", ttl=60) is not None  # billing's lock of that name
            await mine.release(lock)
            # Streaming calls carry the identity too: the feed and Keys see the caller's own keys only.
            async with mine.watch_invalidations() as feed:
                await theirs.set("billing-only", b"1")  # not in orders' feed: it would come first
                await mine.set("greeting", b"again")
                assert (await anext(aiter(feed))).keys == ("greeting",)
                assert await mine.get("greeting") == b"again"
            if backend != "memcached":  # memcached cannot list keys
                assert await mine.keys("*") == ["greeting"]

            async with grpc.aio.insecure_channel(endpoint) as channel:
                # Without the registry's identity token nobody gets in, whatever name it claims.
                for claimed in (None, "orders-plugin"):
                    with pytest.raises(CacheError, match="caller identity") as caught:
                        await CacheClient(channel, caller=claimed).get("greeting")
                    assert caught.value.code == grpc.StatusCode.UNAUTHENTICATED
        assert process.alive(), process.output()


async def test_the_memcached_plugin_answers_unavailable_while_memcached_is_down(
    registry: RunningRegistry, work_dir: Path
) -> None:
    nowhere = f"127.0.0.1:{free_port()}"  # no memcached listens there
    with cache_plugin("memcached", registry, work_dir, nowhere, timeout=0.3) as (_, endpoint):
        async with running(consumer_plugin(registry, work_dir, "cache-consumer")) as consumer:
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
        (["--memcached", "localhost"], {}, "memcached address 'localhost': write host:port"),
        (["--redis-url", "localhost:6379"], {}, "Redis URL 'localhost:6379': write redis://host:port/db"),
    ],
)
def test_bad_settings_stop_the_plugin_with_a_message(
    args: list[str],
    env: dict[str, str],
    message: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit) as caught:
        main(["plugin", "cache-memcached", *args])
    assert caught.value.code == 2
    error = capsys.readouterr().err
    assert message in error
    assert "Traceback" not in error


def test_settings_from_a_deployment_files_config() -> None:
    redis = CacheSettings.from_config("redis", {"url": "redis://cache:6379/1", "keyPrefix": "upf:"})
    assert (redis.redis_url, redis.key_prefix) == ("redis://cache:6379/1", "upf")
    memcached = CacheSettings.from_config("memcached", {"servers": ["mc:11211"], "timeout": "0.5"})
    assert (memcached.memcached, memcached.timeout) == ("mc:11211", 0.5)
    with pytest.raises(ValueError, match=r"^infrastructure.cache.config.url: not a setting of cache-memcached"):
        CacheSettings.from_config("memcached", {"url": "redis://x"}, "infrastructure.cache.config")
    with pytest.raises(ValueError, match=r"^config.servers: one memcached"):
        CacheSettings.from_config("memcached", {"servers": ["a:1", "b:2"]})
    with pytest.raises(ValueError, match=r"^config: .*timeout"):
        CacheSettings.from_config("redis", {"timeout": -1})
