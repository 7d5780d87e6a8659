"""The whole auth flow on real processes: a registry, `upf plugin auth` (custom provider, SQLite,
logouts through Redis), the demo plugin, and two `upf gateway` replicas sharing the real Redis.

login -> call -> refresh -> logout -> call refused, where every step may land on either replica.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from upf.demo.v1 import demo_pb2

from common.auth.revocations import MemoryRevocations
from plugins.auth.custom import CustomProvider
from plugins.auth.settings import AuthSettings
from tests.plugins.auth.harness import FAST_HASH
from tests.plugins.auth.test_plugin_process import UPF, clean_env
from tests.support.grpcweb import BINARY, frame, parse_response
from tests.support.processes import Gateway, Process, _died, free_port, run_gateway, wait_until
from tests.support.redis_server import delete_prefix, new_prefix, shared_client
from tests.support.registry_process import run_registry

ISSUER = "http://gateway.flow.test"
FAST_REGISTRY = {"leaseTtl": 3, "health": {"interval": 0.2, "timeout": 0.5, "successesBeforeHealthy": 1}}
OK, UNAUTHENTICATED, PERMISSION_DENIED = 0, 16, 7


def say(gateway: Gateway, token: str | None, text: str = "hi") -> tuple[int, str]:
    headers = {"content-type": BINARY}
    if token is not None:
        headers["authorization"] = f"Bearer {token}"
    body = frame(demo_pb2.SayRequest(text=text).SerializeToString())
    r = httpx.post(f"{gateway.url}/api/upf.demo.v1.Echo/Say", content=body, headers=headers, timeout=10)
    response = parse_response(r.status_code, dict(r.headers), r.content)
    if response.status != OK:
        return response.status, response.message
    return OK, demo_pb2.SayResponse.FromString(response.messages[0]).text


def post(gateway: Gateway, path: str, body: dict[str, Any], token: str | None = None) -> httpx.Response:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    return httpx.post(f"{gateway.url}{path}", json=body, headers=headers, timeout=10)


def _auth_routed(gateway: Gateway) -> bool:
    return post(gateway, "/api/auth/login", {"username": "erin", "password": "x"}).status_code == 401


@pytest.fixture(scope="module")
def platform(work_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, Gateway]]:
    tmp_path = tmp_path_factory.mktemp("auth-flow")
    prefix = new_prefix()
    revocation = {"store": "redis", "redisUrl": "redis://127.0.0.1:6379/0", "keyPrefix": prefix}
    plugin_config: dict[str, Any] = {
        "jwt": {"issuer": ISSUER, "audience": "upf-api"},
        "custom": {"store": "sqlite", "sqlitePath": str(tmp_path / "auth.db"), "passwordHash": FAST_HASH},
        "revocation": revocation,
        "roles": {"user": ["demo:read"]},
    }

    async def seed() -> None:
        seeder = CustomProvider(AuthSettings.model_validate(plugin_config), MemoryRevocations())
        await seeder.start(maintenance=False)
        await seeder.ensure_user("erin", "erin-secret", "erin@example.org", ["user"])
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
            log=work_dir / f"flow-auth-{free_port()}.log",
        )
        stack.callback(auth.stop)
        demo = Process(
            [UPF, "plugin", "demo", "--registry", registry.target, "--drain-grace", "1"],
            env={**clean_env(), "UPF_REGISTRATION_CREDENTIAL": registry.credential("demo-plugin")},
            log=work_dir / f"flow-demo-{free_port()}.log",
        )
        stack.callback(demo.stop)
        gateway_config = {
            "registryUrl": registry.target,
            "routeRefreshInterval": 1,
            "accessLog": True,  # every request logged: the log check below must see them
            "logLevel": "debug",
            "auth": {"enabled": True, "issuers": [{"issuer": ISSUER}], "revocation": revocation},
        }
        first = stack.enter_context(run_gateway(gateway_config, work_dir))
        second = stack.enter_context(run_gateway(gateway_config, work_dir))
        for gateway in (first, second):
            wait_until(
                lambda gateway=gateway: _auth_routed(gateway) or (not auth.alive() and _died(auth)),
                what="the auth plugin to be routed",
            )
        stack.callback(lambda: delete_prefix(shared_client(), prefix))
        yield first, second


def test_login_call_refresh_logout_then_refused_on_both_replicas(platform: tuple[Gateway, Gateway]) -> None:
    first, second = platform
    login = post(first, "/api/auth/login", {"username": "erin", "password": "erin-secret"})
    assert login.status_code == 200, login.text
    tokens = login.json()
    assert tokens["tokenType"] == "Bearer"
    assert tokens["expiresIn"] == 3600
    assert login.headers["cache-control"] == "no-store"

    # The demo plugin's first health check may still be under way: routed within a few seconds.
    wait_until(lambda: say(second, tokens["accessToken"])[0] == OK, what="the demo plugin to be routed")
    assert say(first, tokens["accessToken"], "one") == (OK, "echo: one")
    assert say(second, tokens["accessToken"], "two") == (OK, "echo: two")
    me = httpx.get(f"{second.url}/api/auth/me", headers={"authorization": f"Bearer {tokens['accessToken']}"})
    assert me.json()["email"] == "erin@example.org"
    assert me.json()["permissions"] == ["demo:read"]

    refreshed = post(second, "/api/auth/refresh", {"refreshToken": tokens["refreshToken"]})
    assert refreshed.status_code == 200, refreshed.text
    fresh = refreshed.json()
    assert fresh["refreshToken"] != tokens["refreshToken"]
    assert say(first, fresh["accessToken"]) == (OK, "echo: hi")

    logout = post(first, "/api/auth/logout", {}, token=fresh["accessToken"])
    assert logout.status_code == 204
    started = time.monotonic()
    # Both replicas refuse the session's tokens within a second: the one that logged out at once,
    # the other once the revocation arrives through Redis.
    wait_until(
        lambda: (
            say(second, fresh["accessToken"])[0] == UNAUTHENTICATED
            and say(second, tokens["accessToken"])[0] == UNAUTHENTICATED
        ),
        timeout=5,
        what="the other replica to refuse the logged-out session",
    )
    assert time.monotonic() - started < 1.0
    assert say(first, fresh["accessToken"]) == (UNAUTHENTICATED, "invalid token: the token has been revoked")
    again = post(second, "/api/auth/refresh", {"refreshToken": fresh["refreshToken"]})
    assert again.status_code == 401
    assert again.headers["www-authenticate"] == 'Bearer realm="upf"'
    for gateway in (first, second):  # tokens and passwords never reach a log
        log = gateway.process.output()
        for secret in (tokens["accessToken"], fresh["accessToken"], tokens["refreshToken"], "erin-secret"):
            assert secret not in log


def test_a_reused_refresh_token_ends_the_session_everywhere(platform: tuple[Gateway, Gateway]) -> None:
    first, second = platform
    tokens = post(first, "/api/auth/login", {"username": "erin", "password": "erin-secret"}).json()
    wait_until(lambda: say(first, tokens["accessToken"])[0] == OK, what="the demo plugin to be routed")
    rotated = post(first, "/api/auth/refresh", {"refreshToken": tokens["refreshToken"]}).json()
    stolen = post(second, "/api/auth/refresh", {"refreshToken": tokens["refreshToken"]})
    assert stolen.status_code == 401
    assert "already used" in stolen.json()["message"]
    for gateway in (first, second):
        wait_until(
            lambda gateway=gateway: say(gateway, rotated["accessToken"])[0] == UNAUTHENTICATED,
            timeout=5,
            what="the reused session to be refused",
        )


def test_bad_logins_and_bodies_get_clear_answers(platform: tuple[Gateway, Gateway]) -> None:
    first, _ = platform
    wrong = post(first, "/api/auth/login", {"username": "erin", "password": "nope"})
    unknown = post(first, "/api/auth/login", {"username": "nobody", "password": "nope"})
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.json() == unknown.json() == {"code": "UNAUTHENTICATED", "message": "invalid username or password"}
    missing = post(first, "/api/auth/login", {"username": "erin"})
    assert missing.status_code == 400
    assert missing.json()["message"] == "password is required (a non-empty string)"
    not_json = httpx.post(f"{first.url}/api/auth/login", content=b"username=erin", timeout=10)
    assert not_json.status_code == 400
    assert httpx.get(f"{first.url}/api/auth/login", timeout=10).status_code == 405
