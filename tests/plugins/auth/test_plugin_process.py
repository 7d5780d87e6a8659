"""`upf plugin auth` as a real process: registered with a real registry, logouts published through Redis."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import grpc
import yaml
from upf.auth.v1 import auth_pb2 as pb, auth_pb2_grpc
from upf.registry.v1 import registry_pb2 as registry_pb

from common.auth.revocations import MemoryRevocations, RedisRevocations
from plugins.auth.custom import CustomProvider
from plugins.auth.settings import AuthSettings
from tests.plugins.auth.harness import FAST_HASH, ROLES
from tests.support.processes import Process, _died, eventually, free_port, wait_until
from tests.support.redis_server import SHARED_URL, delete_prefix, new_prefix, shared_client
from tests.support.registry_process import RunningRegistry, run_registry

UPF = str(Path(sys.executable).parent / "upf")
FAST_REGISTRY = {"leaseTtl": 1.5, "health": {"interval": 0.2, "timeout": 0.5, "successesBeforeHealthy": 1}}


def routed(registry: RunningRegistry) -> list[str]:
    try:
        reply = registry.stub.ResolveEndpoint(registry_pb.ResolveEndpointRequest(target="upf.auth.v1.Auth"), timeout=2)
    except grpc.RpcError:
        return []
    return [e.endpoint for e in reply.endpoints]


def clean_env() -> dict[str, str]:
    return {key: value for key, value in os.environ.items() if not key.startswith("UPF_")}


async def test_the_plugin_process_serves_iauth_and_publishes_logouts_to_redis(work_dir: Path, tmp_path: Path) -> None:
    prefix = new_prefix()
    port = free_port()
    config: dict[str, Any] = {
        "port": port,
        "jwt": {"issuer": "http://auth.process.test", "audience": "upf-test"},
        "custom": {"store": "sqlite", "sqlitePath": str(tmp_path / "auth.db"), "passwordHash": FAST_HASH},
        "revocation": {"store": "redis", "redisUrl": SHARED_URL, "keyPrefix": prefix},
        "roles": ROLES,
    }
    # Seed a user in the same SQLite file before the plugin starts (as `upf run` does through ensure_user).
    seeder = CustomProvider(AuthSettings.model_validate(config), MemoryRevocations())
    await seeder.start(maintenance=False)
    await seeder.ensure_user("dora", "dora-secret", "dora@example.org", ["user"])
    await seeder.close()
    config_file = tmp_path / "auth.yaml"

    watcher = RedisRevocations(SHARED_URL, prefix)  # a gateway replica's view
    await watcher.start()
    try:
        with run_registry(FAST_REGISTRY, work_dir) as registry:
            config["registryUrl"] = registry.target
            config_file.write_text(yaml.safe_dump(config))
            args = [UPF, "plugin", "auth", "--config", str(config_file), "--drain-grace", "1"]
            env = {**clean_env(), "UPF_REGISTRATION_CREDENTIAL": registry.credential("auth-plugin")}
            process = Process(args, env=env, log=work_dir / f"auth-plugin-{port}.log")
            try:
                endpoint = f"127.0.0.1:{port}"
                await asyncio.to_thread(
                    wait_until,
                    lambda: routed(registry) == [endpoint] or (not process.alive() and _died(process)),
                    what="the auth plugin to be routed",
                )
                async with grpc.aio.insecure_channel(endpoint) as channel:
                    auth = auth_pb2_grpc.AuthStub(channel)
                    tokens = await auth.Login(pb.LoginRequest(username="dora", password="dora-secret"), timeout=10)
                    assert (await auth.ValidateToken(pb.ValidateTokenRequest(token=tokens.access_token))).valid
                    jwks = await auth.GetJwks(pb.GetJwksRequest())
                    assert '"use":"sig"' in jwks.jwks_json

                    started = time.monotonic()
                    await auth.Logout(pb.LogoutRequest(token=tokens.access_token), timeout=10)
                    after = await auth.ValidateToken(pb.ValidateTokenRequest(token=tokens.access_token))
                    assert after.reason == "token revoked"
                    await eventually(lambda: watcher.status.entries == 1, timeout=1.0, what="the logout in Redis")
                    assert time.monotonic() - started < 1.0
                process.popen.send_signal(signal.SIGTERM)
                assert process.popen.wait(timeout=15) == 0, process.output()
                assert "dora-secret" not in process.output()
                assert tokens.access_token not in process.output()
            finally:
                process.stop()
    finally:
        await watcher.close()
        client = shared_client()
        delete_prefix(client, prefix)
        client.close()


def test_a_bad_configuration_stops_it_with_the_key_named(tmp_path: Path) -> None:
    config_file = tmp_path / "auth.yaml"
    config_file.write_text("jwt: {algorithm: HS256}\n")
    result = subprocess.run(
        [UPF, "plugin", "auth", "--config", str(config_file)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env=clean_env(),
    )
    assert result.returncode == 2
    assert "jwt.algorithm" in result.stderr
    assert "Traceback" not in result.stderr


def test_an_unreachable_store_stops_it_with_a_message(tmp_path: Path) -> None:
    config_file = tmp_path / "auth.yaml"
    config_file.write_text(
        yaml.safe_dump(
            {"custom": {"store": "postgres", "postgresUrl": f"postgresql://postgres@127.0.0.1:{free_port()}/x"}}
        )
    )
    result = subprocess.run(
        [UPF, "plugin", "auth", "--config", str(config_file), "--registry", f"127.0.0.1:{free_port()}"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env=clean_env(),
    )
    assert result.returncode == 1, result.stderr
    assert "cannot connect to PostgreSQL" in result.stderr
    assert "Traceback" not in result.stderr


def test_help_explains_the_auth_configuration() -> None:
    result = subprocess.run([UPF, "plugin", "--help"], capture_output=True, text=True, timeout=30, check=True)
    for text in (
        "{demo,auth,",
        "--config",
        "accessTokenTTL",
        "revocation.store",
        "keyRotationInterval",
        "keyPublishAhead",
    ):
        assert text in result.stdout
