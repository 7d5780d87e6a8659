"""The platform the shell's tests run against: a registry, the auth plugin with the demo user, and a
gateway serving the shell, all real processes on loopback."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
import yaml

from common.auth.revocations import MemoryRevocations
from plugins.auth.custom import CustomProvider
from plugins.auth.settings import AuthSettings
from tests.plugins.auth.harness import FAST_HASH
from tests.plugins.auth.test_plugin_process import UPF, clean_env
from tests.shell.harness import ACCESS_TOKEN_TTL, FAST_REGISTRY, ISSUER, PASSWORD, USER, login_answers
from tests.support.processes import Gateway, Process, _died, free_port, run_gateway, wait_until
from tests.support.redis_server import delete_prefix, new_prefix, shared_client
from tests.support.registry_process import run_registry


@pytest.fixture(scope="package")
def platform(work_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, str]]:
    """A registry, the auth plugin with the demo user, the demo plugin, and a gateway serving the shell."""
    tmp_path = tmp_path_factory.mktemp("shell")
    prefix = new_prefix()
    revocation = {"store": "redis", "redisUrl": "redis://127.0.0.1:6379/0", "keyPrefix": prefix}
    plugin_config: dict[str, Any] = {
        "jwt": {"issuer": ISSUER, "audience": "upf-api"},
        "custom": {"store": "sqlite", "sqlitePath": str(tmp_path / "auth.db"), "passwordHash": FAST_HASH},
        "revocation": revocation,
        # As `upf run` gives the demo user: the orders plugin's page needs orders:read, its form orders:write.
        "roles": {"user": ["demo:read", "orders:read", "orders:write"]},
        # Short-lived access tokens: the shell must refresh them while the test runs.
        "session": {"accessTokenTTL": ACCESS_TOKEN_TTL},
    }

    async def seed() -> None:
        seeder = CustomProvider(AuthSettings.model_validate(plugin_config), MemoryRevocations())
        await seeder.start(maintenance=False)
        await seeder.ensure_user(USER, PASSWORD, "demo@upf.local", ["user"], name="Demo User")
        await seeder.close()

    asyncio.run(seed())
    with ExitStack() as stack:
        registry = stack.enter_context(run_registry(FAST_REGISTRY, work_dir))
        plugin_config["registryUrl"] = registry.target
        config_file = tmp_path / "auth.yaml"
        config_file.write_text(yaml.safe_dump(plugin_config))
        auth = Process(
            [UPF, "plugin", "auth", "--config", str(config_file), "--drain-grace", "1"],
            env={**clean_env(), "UPF_REGISTRATION_CREDENTIAL": registry.credential("auth-plugin")},
            log=work_dir / f"shell-auth-{free_port()}.log",
        )
        stack.callback(auth.stop)
        # upf.demo.v1.Echo, for a plugin page's gRPC-Web call through the SDK's transport.
        demo = Process(
            [UPF, "plugin", "demo", "--registry", registry.target, "--drain-grace", "1"],
            env={**clean_env(), "UPF_REGISTRATION_CREDENTIAL": registry.credential("demo-plugin")},
            log=work_dir / f"shell-demo-{free_port()}.log",
        )
        stack.callback(demo.stop)
        gateway_config = {
            "registryUrl": registry.target,
            "routeRefreshInterval": 1,
            "auth": {"enabled": True, "issuers": [{"issuer": ISSUER}], "revocation": revocation},
        }
        gateway = stack.enter_context(run_gateway(gateway_config, work_dir))
        wait_until(
            lambda: login_answers(gateway) or (not auth.alive() and _died(auth)),
            what="the auth plugin to be routed",
        )
        stack.callback(lambda: delete_prefix(shared_client(), prefix))
        yield gateway, registry.target
