"""`upf deploy render`: what it writes passes the validators docker/ passes, keeps secrets out, and runs
the plugins that `upf run --deployment` runs from the same file."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from upf.registry.v1 import registry_pb2, registry_pb2_grpc

from cli.deploy_render import DOCKER_DIR, load_for_render, render_compose, render_kubernetes
from cli.deployment import Deployment, parse_deployment
from cli.infrastructure import known_plugins
from cli.main import build_parser, main
from tests.ops.test_docker_files import compose_schema, kubernetes_schema
from tests.support.processes import Process, _died, free_port, wait_until

UPF = str(Path(sys.executable).parent / "upf")

# Another choice for every interface than docker/deployment.yaml's, with a secret in a placeholder.
DEPLOYMENT = """\
infrastructure:
  storage:
    plugin: storage-mysql
    config:
      connectionString: mysql://upf:${MYSQL_PASSWORD}@mariadb:3306/upf
      collections: [orders, notes]
  cache:
    plugin: cache-memcached
    config:
      servers: ["memcached:11211"]
      keyPrefix: 'app:'
      timeout: 1.5
  messageBus:
    plugin: message-bus-rabbitmq
    config:
      url: amqp://upf:${RABBITMQ_PASSWORD:-guest}@rabbitmq:5672/
      prefix: app.bus
"""


def render(tmp_path: Path, target: str, text: str = DEPLOYMENT, *extra: str) -> subprocess.CompletedProcess[str]:
    """`upf deploy render ...` through the CLI's main, in this process: exit status, stdout, stderr."""
    path = tmp_path / "deployment.yaml"
    path.write_text(text)
    argv = ["deploy", "render", "--target", target, "--deployment", str(path), *extra]
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), pytest.raises(SystemExit) as exited:
        main(argv)
    return subprocess.CompletedProcess(argv, int(exited.value.code or 0), out.getvalue(), err.getvalue())


def test_the_compose_render_passes_the_compose_spec(tmp_path: Path) -> None:
    result = render(tmp_path, "compose")
    assert result.returncode == 0, result.stderr
    out = tmp_path / "compose.yaml"
    out.write_text(result.stdout)
    checked = compose_schema(out)
    assert checked.returncode == 0, checked.stdout
    services = yaml.safe_load(result.stdout)["services"]
    cache, storage, bus = services["cache"], services["storage"], services["bus"]
    assert cache["environment"] == {
        "UPF_CACHE_MEMCACHED": "memcached:11211",
        "UPF_CACHE_KEY_PREFIX": "app",
        "UPF_CACHE_TIMEOUT": "1.5",
    }
    assert storage["environment"] == {
        "UPF_STORAGE_DSN": "mysql://upf:${MYSQL_PASSWORD}@mariadb:3306/upf",  # filled by compose from .env
        "UPF_STORAGE_COLLECTIONS": "orders,notes",
    }
    bus_url = "amqp://upf:${RABBITMQ_PASSWORD:-guest}@rabbitmq:5672/"  # as written: compose knows :-default
    assert bus["command"][-4:] == ["--bus-url", bus_url, "--bus-prefix", "app.bus"]
    for service in (cache, storage, bus):
        build_parser().parse_args(service["command"])
    # Files as upf run runs them: files-local, the embedded default, unless the deployment chooses one.
    assert services["files"]["command"][:2] == ["plugin", "files-local"]


def test_the_kubernetes_render_passes_the_kubernetes_schemas_and_references_its_secrets(tmp_path: Path) -> None:
    result = render(tmp_path, "kubernetes")
    assert result.returncode == 0, result.stderr
    out = tmp_path / "all.yaml"
    out.write_text(result.stdout)
    checked = kubernetes_schema(out)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    documents = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    assert "Secret" not in {doc["kind"] for doc in documents}
    storage = next(doc for doc in documents if doc["kind"] == "Deployment" and doc["metadata"]["name"] == "storage")
    env = storage["spec"]["template"]["spec"]["containers"][0]["env"]
    assert env[0] == {
        "name": "MYSQL_PASSWORD",
        "valueFrom": {"secretKeyRef": {"name": "upf-deployment", "key": "MYSQL_PASSWORD"}},
    }
    assert {"name": "UPF_STORAGE_DSN", "value": "mysql://upf:$(MYSQL_PASSWORD)@mariadb:3306/upf"} in env
    assert "${" not in result.stdout  # every placeholder is a reference to the Secret


def test_a_bad_deployment_is_named_not_rendered(tmp_path: Path) -> None:
    result = render(tmp_path, "compose", "infrastructure:\n  cache:\n    plugin: cache-redis\n    config: {uri: x}\n")
    assert result.returncode == 2
    assert result.stdout == ""
    assert "infrastructure.cache.config" in result.stderr
    assert "uri" in result.stderr
    # The plugin's own check of its values (a setting whose value is a placeholder is left out of it).
    text = "infrastructure:\n  storage:\n    plugin: storage-postgres\n"
    text += "    config: {connectionString: '${DB}', maxConnections: x}\n"
    wrong = render(tmp_path, "kubernetes", text)
    assert wrong.returncode == 2
    assert "maxConnections: must be a whole number" in wrong.stderr
    unknown = render(tmp_path, "kubernetes", "infrastructure:\n  storage:\n    plugin: storage-oracle\n")
    assert unknown.returncode == 2
    assert "storage-oracle" in unknown.stderr


REPLICAS = """\
gateway: {replicas: 3}
plugins:
  demo: {replicas: 4}
infrastructure:
  cache:
    plugin: cache-redis
    replicas: 2
    config: {url: "redis://redis:6379/0"}
"""


def test_replica_counts_reach_compose_and_kubernetes(tmp_path: Path) -> None:
    # Three gateways: Traefik must route to each by name, so the render checks its dynamic.yml lists them.
    refused = render(tmp_path, "compose", REPLICAS)
    assert refused.returncode == 2
    assert "gateway.replicas is 3" in refused.stderr
    assert "http://gateway-3:8080" in refused.stderr
    docker = tmp_path / "docker"
    shutil.copytree(DOCKER_DIR, docker)
    dynamic = yaml.safe_load((docker / "traefik" / "dynamic.yml").read_text())
    servers = [{"url": f"http://gateway-{n}:8080"} for n in (1, 2, 3)]
    dynamic["http"]["services"]["gateway"]["loadBalancer"]["servers"] = servers
    (docker / "traefik" / "dynamic.yml").write_text(yaml.safe_dump(dynamic))
    (tmp_path / "deployment.yaml").write_text(REPLICAS)
    deployment = load_for_render(tmp_path / "deployment.yaml")

    compose = yaml.safe_load(render_compose(deployment, docker))["services"]
    assert [name for name in compose if name.startswith("gateway")] == ["gateway-1", "gateway-2", "gateway-3"]
    assert compose["gateway-3"]["command"] == compose["gateway-1"]["command"]
    assert set(compose["traefik"]["depends_on"]) == {"gateway-1", "gateway-2", "gateway-3"}
    assert compose["demo"]["deploy"] == {"replicas": 4}
    assert compose["cache"]["deploy"] == {"replicas": 2}
    assert compose["auth"]["deploy"] == {"replicas": 1}

    documents = [doc for doc in yaml.safe_load_all(render_kubernetes(deployment, docker)) if doc]
    replicas = {doc["metadata"]["name"]: doc["spec"]["replicas"] for doc in documents if doc["kind"] == "Deployment"}
    assert (replicas["gateway"], replicas["demo"], replicas["cache"], replicas["auth"]) == (3, 4, 2, 1)
    autoscaler = next(doc for doc in documents if doc["kind"] == "HorizontalPodAutoscaler")
    assert autoscaler["spec"]["minReplicas"] == 3


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("gateway: {replicas: 0}\n", "gateway.replicas: expected a whole number of at least 1, not 0"),
        ("plugins: {demo: {replicas: two}}\n", "plugins.demo.replicas"),
        ("plugins: {billing: {replicas: 2}}\n", "plugins.billing: unknown plugin"),
        ("infrastructure: {cache: {plugin: cache-memory, replicas: true}}\n", "infrastructure.cache.replicas"),
        ("gateways: {replicas: 2}\n", "unknown key 'gateways'"),
    ],
)
def test_a_bad_replica_count_is_named(tmp_path: Path, text: str, named: str) -> None:
    result = render(tmp_path, "kubernetes", text)
    assert result.returncode == 2
    assert named in result.stderr


def test_upf_run_says_it_runs_one_of_each() -> None:
    deployment = parse_deployment(yaml.safe_load(REPLICAS), "deployment.yaml", known_plugins(), {})
    assert deployment.more_than_one() == ["gateway x3", "demo x4", "cache-redis x2"]
    assert Deployment.embedded().more_than_one() == []


def _registered(target: str) -> set[str]:
    with grpc.insecure_channel(target) as channel:
        try:
            stub = registry_pb2_grpc.RegistryStub(channel)
            reply: Any = stub.ListPlugins(registry_pb2.ListPluginsRequest(), timeout=2)
        except grpc.RpcError:
            return set()
    return {plugin.plugin_id for plugin in reply.plugins}


def test_upf_run_and_the_render_run_the_same_plugins(tmp_path: Path) -> None:
    tag = uuid.uuid4().hex[:8]
    text = f"""\
infrastructure:
  storage:
    plugin: storage-sqlite
    config: {{connectionString: {tmp_path / "storage.sqlite3"}}}
  cache:
    plugin: cache-redis
    config: {{url: "${{REDIS_URL}}", keyPrefix: "upf-test-render-{tag}:"}}
  messageBus:
    plugin: message-bus-nats
    config: {{servers: ["nats://127.0.0.1:4222"], prefix: "upftest.render{tag}"}}
"""
    rendered = render(tmp_path, "compose", text)
    assert rendered.returncode == 0, rendered.stderr
    services = yaml.safe_load(rendered.stdout)["services"]
    plugins = {service["labels"]["dev.upf.plugin"] for service in services.values() if "labels" in service}

    registry = f"127.0.0.1:{free_port()}"
    config_file = tmp_path / "gateway.yaml"
    config_file.write_text(yaml.safe_dump({"registryUrl": registry, "httpPort": free_port(), "grpcPort": 0}))
    env = {key: value for key, value in os.environ.items() if not key.startswith("UPF_")}
    env["REDIS_URL"] = "redis://127.0.0.1:6379/0"
    (scratch := tmp_path / "tmp").mkdir()
    env["TMPDIR"] = str(scratch)  # where files-local, with no root, keeps its files while it runs
    args = [UPF, "run", "--config", str(config_file), "--deployment", str(tmp_path / "deployment.yaml")]
    process = Process(args, env=env, log=tmp_path / "run.log")
    try:
        # Generous: `upf run` starts nine parts, on a machine that other suites may share.
        wait_until(
            lambda: _registered(registry) >= plugins or (not process.alive() and _died(process)),
            timeout=60,
            what="upf run's plugins to register",
        )
        running = _registered(registry)
    finally:
        # Often while the gateway is still starting: that stop is as clean as one while it serves.
        status = process.stop()
    assert running == plugins
    assert status == 0, process.output()[-2000:]
    assert list(scratch.iterdir()) == []
    expected = {
        "storage-sqlite",
        "cache-redis",
        "message-bus-nats",
        "files-local",
        "auth-plugin",
        "demo-plugin",
        "orders-plugin",
    }
    assert plugins == expected
