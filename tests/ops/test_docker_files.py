"""docker/: every file passes a maintained validator, and names only what the project has.

No container engine runs here, so the files are checked the way an engine would read them: the
Dockerfile with hadolint, the compose files against the compose-spec JSON schema (check-jsonschema's
vendored copy), the Kubernetes manifests against the Kubernetes 1.37 schemas in strict mode
(kubernetes-validate ships them): none of them downloads anything. Then what the validators cannot
know: the commands are real `upf` commands, the config files and UPF_* variables are real keys of the
settings models, ports and probe paths agree, and the rendered files are what `upf deploy render`
makes of docker/deployment.yaml now.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from cli.deploy_render import load_for_render, plugins_to_run, render_compose, render_kubernetes
from cli.main import build_parser
from gateway.settings import GatewaySettings, load_config
from plugins.auth.settings import AuthSettings
from registry.settings import RegistrySettings
from tests.support.processes import ROOT

DOCKER = ROOT / "docker"
BIN = Path(sys.executable).parent
KUBERNETES = sorted((DOCKER / "kubernetes").glob("*.yaml"))
COMPOSE_FILES = [DOCKER / "compose.yaml", DOCKER / "compose.base.yaml"]
SETTINGS: dict[str, type[BaseModel]] = {"gateway": GatewaySettings, "registry": RegistrySettings, "auth": AuthSettings}


def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(arg) for arg in args], capture_output=True, text=True, timeout=60, check=False)


def hadolint(path: Path) -> subprocess.CompletedProcess[str]:
    # Any finding fails, infos included (hadolint's default threshold).
    return run(BIN / "hadolint", "--no-color", path)


def compose_schema(*paths: Path) -> subprocess.CompletedProcess[str]:
    return run(BIN / "check-jsonschema", "--builtin-schema", "vendor.compose-spec", *paths)


def kubernetes_schema(*paths: Path) -> subprocess.CompletedProcess[str]:
    return run(BIN / "kubernetes-validate", "--strict", "--quiet", *paths)


def documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    return data


def upf_services() -> dict[str, dict[str, Any]]:
    return {name: service for name, service in compose()["services"].items() if "docker/Dockerfile" in str(service)}


# The validators ------------------------------------------------------------------------------------


def test_the_dockerfile_passes_hadolint() -> None:
    result = hadolint(DOCKER / "Dockerfile")
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_does_find_faults(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN cd /app && pip install upf\n")
    result = hadolint(bad)
    assert result.returncode != 0
    assert "DL3006" in result.stdout  # an untagged image


def test_the_compose_files_match_the_compose_spec() -> None:
    result = compose_schema(*COMPOSE_FILES)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_compose_spec_check_does_find_faults(tmp_path: Path) -> None:
    bad = tmp_path / "compose.yaml"
    data = compose()
    data["services"]["gateway-1"]["healthcheck"]["intervall"] = "10s"
    bad.write_text(yaml.safe_dump(data))
    result = compose_schema(bad)
    assert result.returncode != 0
    assert "intervall" in result.stdout


def test_the_kubernetes_manifests_match_the_kubernetes_schemas() -> None:
    result = kubernetes_schema(*KUBERNETES)
    assert result.returncode == 0, result.stdout + result.stderr
    kinds = {doc["kind"] for path in KUBERNETES for doc in documents(path)}
    expected = {"Deployment", "StatefulSet", "Service", "ConfigMap", "PodDisruptionBudget", "HorizontalPodAutoscaler"}
    assert expected | {"Ingress", "NetworkPolicy"} <= kinds
    assert "Secret" not in kinds  # referenced, never written


def test_the_kubernetes_check_does_find_faults(tmp_path: Path) -> None:
    bad = tmp_path / "gateway.yaml"
    deployment = documents(DOCKER / "kubernetes" / "gateway.yaml")[0]
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGett"] = {"path": "/readyz"}
    bad.write_text(yaml.safe_dump(deployment))
    result = kubernetes_schema(bad)
    assert result.returncode != 0
    assert "httpGett" in result.stdout + result.stderr


# What the image and the files name -----------------------------------------------------------------


def test_the_image_runs_the_projects_upf_command_from_its_own_files() -> None:
    dockerfile = (DOCKER / "Dockerfile").read_text()
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["upf"] == "cli.main:main"
    assert 'ENTRYPOINT ["upf"]' in dockerfile
    assert build_parser().parse_args(["gateway"]).command == "gateway"  # CMD ["gateway"]
    # Every file copied from the build context exists (copies from other stages aside).
    sources = [
        source
        for line in dockerfile.splitlines()
        if line.startswith("COPY ") and "--from=" not in line
        for source in line.split()[1:-1]
    ]
    assert sources, "no COPY from the build context"
    for source in sources:
        assert (ROOT / source).exists(), source
    # The build outputs the final stage takes are the ones the gateway and the orders plugin serve.
    assert "/src/shell-web/dist /app/shell-web/dist" in dockerfile
    assert "/src/plugins/orders/ui/dist /app/plugins/orders/ui/dist" in dockerfile
    assert "HEALTHCHECK" in dockerfile
    assert "/readyz" in (DOCKER / "healthcheck.py").read_text()
    assert re.search(r"^USER 10001:10001$", dockerfile, re.MULTILINE)


def _placeholders_filled(environment: dict[str, str]) -> dict[str, str]:
    """A container's UPF_* variables with compose's ${VAR} filled by a stand-in value."""
    filled = {name: re.sub(r"\$\{[^}]*\}", "stand-in-secret-value", str(value)) for name, value in environment.items()}
    return {name: value for name, value in filled.items() if name.startswith("UPF_")}


def _config_file(service: dict[str, Any], base_dir: Path) -> Path | None:
    configs = {config["source"]: config["target"] for config in service.get("configs", [])}
    top = compose()["configs"]
    for source, target in configs.items():
        if target in service["command"]:
            return base_dir / str(top[source]["file"])
    return None


@pytest.mark.parametrize("name", sorted(upf_services()))
def test_each_compose_service_runs_a_real_command_with_real_config(name: str) -> None:
    service = upf_services()[name]
    command = service["command"]
    args = build_parser().parse_args(command)  # an unknown command or flag exits here
    kind = args.command if args.command != "plugin" else args.name
    environment = _placeholders_filled(service.get("environment", {}))
    config = _config_file(service, DOCKER)
    port = getattr(args, "port", None)
    if kind in SETTINGS:
        assert config is not None, f"{name}: no config file mounted where --config points"
        # An unknown key, in the file or as a UPF_* variable, is a ConfigError naming it.
        settings: BaseModel = load_config(SETTINGS[kind], config, environ=environment)
        port = port or getattr(settings, "port", None)
    else:
        # A plugin's own variables: each is read somewhere in the plugins' code.
        source = "\n".join(path.read_text() for path in (ROOT / "plugins").rglob("*.py"))
        for variable in environment:
            assert variable in source, f"{name}: {variable} is read by no plugin"
    # Its health check asks the port it listens on (the gateway's: its /readyz on httpPort).
    test = service["healthcheck"]["test"]
    if "grpc" in test:
        assert test[-1] == f"127.0.0.1:{port}"
    else:
        assert test[-1] == "http"


def test_traefik_the_gateways_and_their_config_agree() -> None:
    services = compose()["services"]
    gateway = load_config(GatewaySettings, DOCKER / "config" / "gateway.yaml", environ={})
    dynamic = yaml.safe_load((DOCKER / "traefik" / "dynamic.yml").read_text())
    balancer = dynamic["http"]["services"]["gateway"]["loadBalancer"]
    gateways = sorted(name for name in services if name.startswith("gateway-"))
    assert [server["url"] for server in balancer["servers"]] == [f"http://{n}:{gateway.http_port}" for n in gateways]
    assert balancer["healthCheck"]["path"] == "/readyz"
    # Traefik's health check notices a stopping gateway before it closes its port.
    interval, timeout = (float(balancer["healthCheck"][key].removesuffix("s")) for key in ("interval", "timeout"))
    assert interval + timeout < gateway.shutdown_delay
    # The gateways believe X-Forwarded-For from Traefik's address, and from nothing else.
    traefik_address = services["traefik"]["networks"]["backend"]["ipv4_address"]
    assert gateway.rate_limiting.trusted_proxies == [f"{traefik_address}/32"]
    assert dynamic["http"]["routers"]["api"]["entryPoints"] == ["websecure"]
    assert "certResolver" not in str(dynamic) or "letsencrypt" in str(dynamic)


def test_the_kubernetes_config_is_real_config_and_the_probes_match_it(tmp_path: Path) -> None:
    config_map = documents(DOCKER / "kubernetes" / "config.yaml")[0]
    loaded: dict[str, BaseModel] = {}
    for name, text in config_map["data"].items():
        (tmp_path / name).write_text(text)
        loaded[name] = load_config(SETTINGS[name.removesuffix(".yaml")], tmp_path / name, environ={})
    gateway = loaded["gateway.yaml"]
    assert isinstance(gateway, GatewaySettings)
    deployment = documents(DOCKER / "kubernetes" / "gateway.yaml")[0]
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports == {"http": gateway.http_port, "grpc": gateway.grpc_port}
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    # The pod leaves the endpoints (one failed probe) before the gateway closes its port.
    readiness = container["readinessProbe"]
    assert readiness["periodSeconds"] * readiness["failureThreshold"] < gateway.shutdown_delay
    assert pod["terminationGracePeriodSeconds"] > gateway.shutdown_delay + gateway.websocket.drain_grace
    # UPF_CONFIG names the file mounted from the ConfigMap, under a key the ConfigMap has.
    for path in KUBERNETES:
        for doc in documents(path):
            if doc["kind"] != "Deployment":
                continue
            for item in doc["spec"]["template"]["spec"]["containers"]:
                build_parser().parse_args(item["args"])
                env = {entry["name"]: entry.get("value") for entry in item.get("env", [])}
                for mount in item.get("volumeMounts", []):
                    if mount["name"] == "config":
                        assert mount["subPath"] in config_map["data"]
                        assert mount["mountPath"] in (env.get("UPF_CONFIG"), *item["args"])


# One source: docker/deployment.yaml ----------------------------------------------------------------


def test_the_rendered_files_are_fresh() -> None:
    deployment = load_for_render(DOCKER / "deployment.yaml")
    assert (DOCKER / "compose.yaml").read_text() == render_compose(deployment), (
        "docker/compose.yaml is stale: upf deploy render --target compose --deployment docker/deployment.yaml"
    )
    assert (DOCKER / "kubernetes" / "plugins.yaml").read_text() == render_kubernetes(deployment, plugins_only=True), (
        "docker/kubernetes/plugins.yaml is stale: upf deploy render --target kubernetes --plugins-only ..."
    )
    ids = {run.plugin_id for run in plugins_to_run(deployment)}
    assert ids == {
        "storage-postgres",
        "cache-redis",
        "message-bus-nats",
        "files-local",
        "auth-plugin",
        "demo-plugin",
        "orders-plugin",
    }


def test_the_hand_written_gateway_runs_as_many_replicas_as_the_deployment_file_says() -> None:
    replicas = load_for_render(DOCKER / "deployment.yaml").gateway_replicas
    assert replicas is not None, "docker/deployment.yaml says how many gateways run"
    documents = list(yaml.safe_load_all((DOCKER / "kubernetes" / "gateway.yaml").read_text()))
    gateway = next(doc for doc in documents if doc["kind"] == "Deployment")
    autoscaler = next(doc for doc in documents if doc["kind"] == "HorizontalPodAutoscaler")
    assert gateway["spec"]["replicas"] == replicas, "docker/kubernetes/gateway.yaml: replicas"
    assert autoscaler["spec"]["minReplicas"] == replicas, "docker/kubernetes/gateway.yaml: HPA"
    services = yaml.safe_load((DOCKER / "compose.yaml").read_text())["services"]
    gateways = sorted(name for name in services if name.startswith("gateway-"))
    assert gateways == [f"gateway-{n}" for n in range(1, replicas + 1)]


def test_redis_nats_and_postgres_keep_their_data_on_volumes_and_answer_where_the_config_looks() -> None:
    stores = {"redis": 6379, "nats": 4222, "postgres": 5432}
    config = (DOCKER / "kubernetes" / "config.yaml").read_text() + (DOCKER / "kubernetes" / "plugins.yaml").read_text()
    for name, port in stores.items():
        docs = {doc["kind"]: doc for doc in documents(DOCKER / "kubernetes" / f"{name}.yaml")}
        assert set(docs) == {"StatefulSet", "Service", "NetworkPolicy"}, name
        spec = docs["StatefulSet"]["spec"]
        assert spec["serviceName"] == docs["Service"]["metadata"]["name"] == name
        claims = {claim["metadata"]["name"] for claim in spec["volumeClaimTemplates"]}
        container = spec["template"]["spec"]["containers"][0]
        assert {mount["name"] for mount in container["volumeMounts"]} >= claims == {"data"}
        assert {"readinessProbe", "livenessProbe"} <= set(container), name
        assert [p["port"] for p in docs["Service"]["spec"]["ports"]] == [port]
        assert f"{name}:{port}" in config, f"nothing in the platform's config reaches {name}:{port}"
        # Only the platform's pods may connect: no password guards Redis and NATS.
        allowed = docs["NetworkPolicy"]["spec"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"]
        assert allowed == {"app.kubernetes.io/part-of": "upf"}
    # PostgreSQL's password: referenced from the Secret the plugins' connection strings use, never written.
    postgres = documents(DOCKER / "kubernetes" / "postgres.yaml")[0]
    env = {item["name"]: item for item in postgres["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["POSTGRES_PASSWORD"] == {
        "name": "POSTGRES_PASSWORD",
        "valueFrom": {"secretKeyRef": {"name": "upf-deployment", "key": "POSTGRES_PASSWORD"}},
    }
