"""`upf run --deployment FILE`: the infrastructure the file chooses serves the platform. An order created
through the gateway is written through IStorage and ICache into the real PostgreSQL and Redis, and
read back; the embedded choice (SQLite in memory, cache-memory) serves the same calls."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import asyncpg
import grpc
import httpx
import pytest
from upf.orders.v1 import orders_pb2 as pb
from upf.registry.v1.registry_pb2 import ListPluginsRequest
from upf.registry.v1.registry_pb2_grpc import RegistryStub

from plugins.messagebus.plugin import make_backend, settings_from_config
from tests.plugins.orders.harness import create_request
from tests.plugins.orders.test_through_upf_run import _call
from tests.support.grpcweb import RESPONSE_TYPE, GrpcWebResponse, frame, parse_response
from tests.support.processes import free_port, run_gateway, wait_until
from tests.support.redis_server import SHARED_URL, delete_prefix, shared_client

NATS_URL = "nats://127.0.0.1:4222"
SEED_FORM = """\
infrastructure:
  storage:
    plugin: storage-postgres
    config:
      connectionString: ${DATABASE_URL}
      maxConnections: 4
  cache:
    plugin: cache-redis
    config:
      url: ${REDIS_URL}
      keyPrefix: '${PREFIX}:'

  messageBus:
    plugin: message-bus-nats
    config:
      servers:
        - ${NATS_URL}
      jetstream:
        enabled: true
      prefix: ${PREFIX}
"""
EMBEDDED = """\
infrastructure:
  storage: {plugin: storage-sqlite}
  cache: {plugin: cache-memory}
"""


@contextmanager
def postgres_database() -> Iterator[str]:

    name = f"upf_deploy_{uuid.uuid4().hex[:10]}"

    async def admin(statement: str) -> None:
        connection = await asyncpg.connect("postgresql://postgres@127.0.0.1:5432/postgres")
        try:
            await connection.execute(statement)
        finally:
            await connection.close()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    try:
        yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    finally:
        asyncio.run(admin(f'DROP DATABASE "{name}" WITH (FORCE)'))


def create_and_read(gateway_url: str) -> pb.Order:
    login = httpx.post(f"{gateway_url}/api/auth/login", json={"username": "demo", "password": "demo-password"})
    assert login.status_code == 200, login.text
    headers = {"authorization": f"Bearer {login.json()['accessToken']}"}
    with httpx.Client(base_url=gateway_url, headers=headers, timeout=10) as client:
        request = create_request(f"cust-{uuid.uuid4().hex[:8]}", str(uuid.uuid4())).SerializeToString()

        def created() -> GrpcWebResponse | None:
            answer = _call(client, "CreateOrder", request)
            return answer if answer.status == 0 else None

        answer = wait_until(created, timeout=30, what="orders-plugin to reach the deployed storage")
        order = pb.CreateOrderResponse.FromString(answer.messages[0]).order
        again = _call(client, "CreateOrder", request)  # a retry: the cache and storage know it
        assert again.status == 0, again.message
        assert pb.CreateOrderResponse.FromString(again.messages[0]).replayed
        read = _call(client, "GetOrder", pb.GetOrderRequest(id=order.id).SerializeToString())
        assert read.status == 0, read.message
        assert pb.GetOrderResponse.FromString(read.messages[0]).order == order
        return order


def test_postgres_and_redis_chosen_by_the_seeds_deployment_file(tmp_path: Path) -> None:
    prefix = f"upf-deploy-{uuid.uuid4().hex[:8]}"
    deployment = tmp_path / "deployment.yaml"
    deployment.write_text(SEED_FORM)
    client = shared_client()
    try:
        with postgres_database() as dsn:
            env = {"DATABASE_URL": dsn, "REDIS_URL": SHARED_URL, "PREFIX": prefix, "NATS_URL": NATS_URL}
            registry = f"127.0.0.1:{free_port()}"
            args = ["--deployment", str(deployment)]
            with run_gateway({"registryUrl": registry}, tmp_path, command="run", args=args, env=env) as gateway:
                order = create_and_read(gateway.url)
                with grpc.insecure_channel(registry) as channel:
                    listed = RegistryStub(channel).ListPlugins(ListPluginsRequest(), timeout=5)
                chosen = {"storage-postgres", "cache-redis", "message-bus-nats"}
                assert chosen <= {plugin.plugin_id for plugin in listed.plugins}

            # The order is in PostgreSQL, in the orders plugin's namespace; its idempotency key in Redis.
            async def stored() -> list[str]:
                connection = await asyncpg.connect(dsn)
                try:
                    rows = await connection.fetch("SELECT ns, id FROM upf_storage_records")
                finally:
                    await connection.close()
                return [f"{row['ns']}/{row['id']}" for row in rows]

            assert f"orders-plugin/{order.id}" in asyncio.run(stored())
            assert any(b"orders-plugin" in key for key in client.scan_iter(match=f"{prefix}*"))
    finally:
        delete_prefix(client, prefix)
        client.close()
        asyncio.run(drop_nats_streams(prefix))


async def drop_nats_streams(prefix: str) -> None:
    bus = make_backend(settings_from_config("nats", {"url": NATS_URL, "prefix": prefix}))
    try:
        await bus.destroy()  # type: ignore[attr-defined]
    finally:
        await bus.close()


@pytest.mark.parametrize("text", [EMBEDDED, None], ids=["sqlite-memory-file", "no-file"])
def test_the_embedded_choice_serves_the_same_calls(tmp_path: Path, text: str | None) -> None:
    args: list[str] = []
    if text is not None:
        deployment = tmp_path / "deployment.yaml"
        deployment.write_text(text)
        args = ["--deployment", str(deployment)]
    with run_gateway({"registryUrl": f"127.0.0.1:{free_port()}"}, tmp_path, command="run", args=args) as gateway:
        create_and_read(gateway.url)
        if text is None:
            return
        # The infrastructure behind it is internal: a signed-in browser or curl cannot reach it.
        login = httpx.post(f"{gateway.url}/api/auth/login", json={"username": "demo", "password": "demo-password"})
        headers = {"authorization": f"Bearer {login.json()['accessToken']}"}
        with httpx.Client(base_url=gateway.url, headers=headers, timeout=10) as client:
            for service, method in (("upf.storage.v1.Storage", "Get"), ("upf.cache.v1.Cache", "Get")):
                reply = client.post(
                    f"/api/{service}/{method}", content=frame(b""), headers={"content-type": RESPONSE_TYPE}
                )
                refused = parse_response(reply.status_code, dict(reply.headers), reply.content)
                assert reply.status_code == 200
                assert (refused.status, refused.message.split(":")[0]) == (7, f"{service} is internal to the platform")


def test_a_bad_deployment_file_stops_start_up_naming_the_key(tmp_path: Path) -> None:
    import subprocess
    import sys

    deployment = tmp_path / "deployment.yaml"
    deployment.write_text("infrastructure:\n  cache: {plugin: cache-redis, config: {urls: x}}\n")
    upf = str(Path(sys.executable).parent / "upf")
    config = tmp_path / "c.yaml"
    config.write_text(f"registryUrl: 127.0.0.1:{free_port()}\nhttpPort: {free_port()}\ngrpcPort: {free_port()}\n")
    result = subprocess.run(
        [upf, "run", "--config", str(config), "--deployment", str(deployment)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "infrastructure.cache.config (cache-redis).urls: not a setting of cache-redis" in result.stderr
    assert "Traceback" not in result.stderr
