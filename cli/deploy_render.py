"""`upf deploy render`: Docker Compose or Kubernetes manifests from the seed's deployment.yaml.

One source for every way the platform runs: the deployment file chooses the infrastructure plugins and
their config (gateway/deployment.py), `upf run --deployment FILE` starts them in one process, and this
module writes each as its own container (`upf plugin NAME`, config turned into that command's flags and
variables), beside the platform's own plugins (auth, demo, orders). The rest (Traefik, the gateways, the
registry, Redis, NATS, PostgreSQL; Kubernetes' namespace, ConfigMaps, gateway, registry and ingress) is
written by hand in docker/: docker/compose.base.yaml, docker/kubernetes/*.yaml, and is taken from there.

`${VAR}` placeholders are kept, not filled: compose fills them from its .env file; for Kubernetes they
become `$(VAR)`, with VAR read from the Secret `upf-deployment` (a secret is referenced, never written).
"""

from __future__ import annotations

import copy
import dataclasses
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from cli.deployment import Choice, Deployment, DeploymentError, parse_deployment
from cli.infrastructure import CATALOGUE, check_deployment, known_plugins

__all__ = [
    "DOCKER_DIR",
    "PLATFORM_PLUGINS",
    "PluginRun",
    "load_for_render",
    "plugins_to_run",
    "render",
    "render_command",
    "render_compose",
    "render_kubernetes",
]

#: docker/ of this checkout: the hand-written part of the manifests.
DOCKER_DIR = Path(__file__).resolve().parents[1] / "docker"
NAMESPACE = "upf"
IMAGE = "upf:latest"
REGISTRY = "registry:50052"
DEPLOYMENT_SECRET = "upf-deployment"  # Kubernetes: the deployment file's ${VAR} values
REGISTRATION_SECRET = "upf-registration"  # Kubernetes: the registry's secret (key registration.secret)
SECRET_FILE = "/app/.upf/registration.secret"  # where plugins derive their registration credential from
HEADLESS_SERVICE = "plugins"  # Kubernetes: gives each plugin pod a DNS name, which it registers
PLUGIN_LABEL = "dev.upf.plugin"

_PLACEHOLDER = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-[^}]*)?\}")
_DEFAULTED = re.compile(r"\$\{[A-Za-z_][A-Za-z0-9_]*:-([^}]*)\}")
# Each interface's plugins listen on a port of their own (a fixed one: compose and probes name it).
_PORTS = {"storage": 50061, "cache": 50062, "messageBus": 50063, "files": 50064}
_SERVICE_NAMES = {"storage": "storage", "cache": "cache", "messageBus": "bus", "files": "files"}


@dataclass(frozen=True, slots=True)
class PluginRun:
    """One plugin as its own process: `upf <args>`, listening on `port`, known as `service`."""

    service: str  # compose service / Kubernetes Deployment name, and the host name it registers
    plugin_id: str  # its manifest id (what the registry lists)
    args: list[str]
    port: int
    env: dict[str, str] = field(default_factory=dict)
    config: str | None = None  # a file of docker/config mounted at /etc/upf/<config>
    replicas: int = 1


def _flags(port: int) -> list[str]:
    return ["--registry", REGISTRY, "--host", "0.0.0.0", "--port", str(port)]


#: The platform's own plugins, which `upf run` always starts too.
PLATFORM_PLUGINS = (
    PluginRun(
        "auth",
        "auth-plugin",
        ["plugin", "auth", "--config", "/etc/upf/auth.yaml"],
        50060,
        {
            "UPF_CUSTOM__KEY_PASSPHRASE": "${AUTH_KEY_PASSPHRASE}",
            "UPF_CUSTOM__POSTGRES_URL": "postgresql://upf:${POSTGRES_PASSWORD}@postgres:5432/upf",
        },
        config="auth.yaml",
    ),
    PluginRun("demo", "demo-plugin", ["plugin", "demo", *_flags(50071)], 50071),
    PluginRun("orders", "orders-plugin", ["plugin", "orders", *_flags(50072), "--ui-port", "8090"], 50072),
)


_SENTINEL = "\x00{"  # stands for "${" while the file is parsed, so that no placeholder is filled


def _swap(value: Any, old: str, new: str) -> Any:
    if isinstance(value, str):
        return value.replace(old, new)
    if isinstance(value, dict):
        return {key: _swap(item, old, new) for key, item in value.items()}
    if isinstance(value, list):
        return [_swap(item, old, new) for item in value]
    return value


def load_for_render(path: str | Path) -> Deployment:
    """The deployment file with its `${VAR}` and `${VAR:-default}` placeholders kept as written
    (DeploymentError naming the key)."""
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise DeploymentError(f"{path}: cannot read the deployment file: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise DeploymentError(f"{path}: not valid YAML: {exc}") from None
    parsed = parse_deployment(_swap(data, "${", _SENTINEL), str(path), known_plugins(), {})
    kept = {
        key: Choice(c.plugin, _swap(dict(c.config), _SENTINEL, "${"), c.replicas)
        for key, c in parsed.infrastructure.items()
    }
    # Each plugin's own check of its config, as `upf run` does, of what is known before deployment: a
    # placeholder with a default stands for the default; a setting with any other placeholder is left out.
    checkable = {key: Choice(c.plugin, _known_now(c.config)) for key, c in kept.items()}
    try:
        check_deployment(Deployment(checkable))
    except ValueError as exc:
        raise DeploymentError(f"{path}: {exc}") from None
    return Deployment(kept, parsed.gateway_replicas, parsed.plugin_replicas)


def _known_now(config: Mapping[str, Any]) -> dict[str, Any]:
    def filled(value: Any) -> Any:
        if isinstance(value, str):
            value = _DEFAULTED.sub(lambda match: match.group(1), value)
            return None if _PLACEHOLDER.search(value) else value
        if isinstance(value, list):
            items = [filled(item) for item in value]
            return None if any(item is None for item in items) else items
        if isinstance(value, Mapping):
            return _known_now(value)
        return value

    return {key: known for key, value in config.items() if (known := filled(value)) is not None}


def _infrastructure_run(key: str, choice: Choice) -> PluginRun:
    """`upf plugin NAME` with the deployment config as that command's flags and UPF_* variables."""
    config, name, port = dict(choice.config), choice.plugin, _PORTS[key]
    args, env = ["plugin", name, *_flags(port)], {}
    where = f"infrastructure.{key}.config"
    if key == "storage":
        if "connectionString" in config:
            env["UPF_STORAGE_DSN"] = str(config.pop("connectionString"))
        if "collections" in config:
            env["UPF_STORAGE_COLLECTIONS"] = ",".join(config.pop("collections"))
        if config.pop("maxConnections", None) is not None:
            print(f"upf: {where}.maxConnections: `upf plugin {name}` uses its own pool size", file=sys.stderr)
    elif key == "cache":
        names = {
            "url": "REDIS_URL",
            "keyPrefix": "KEY_PREFIX",
            "timeout": "TIMEOUT",
            "maxValueBytes": "MAX_VALUE_BYTES",
        }
        if "servers" in config or "address" in config:
            servers = config.pop("servers", None) or [config.pop("address")]
            env["UPF_CACHE_MEMCACHED"] = str(servers[0])
        for option, variable in names.items():
            if option in config:
                value = str(config.pop(option))
                env[f"UPF_CACHE_{variable}"] = value.rstrip(":") if option == "keyPrefix" else value
    elif key == "messageBus":
        url = config.pop("url", None) or (config.pop("servers", None) or [None])[0]
        config.pop("jetstream", None)  # always on (checked by the plugin's own config check)
        if url:
            args += ["--bus-url", str(url)]
        if "prefix" in config:
            args += ["--bus-prefix", str(config.pop("prefix"))]
    if config:
        raise ValueError(f"{where}.{sorted(config)[0]}: not a setting `upf plugin {name}` takes")
    return PluginRun(_SERVICE_NAMES[key], name, args, port, env, replicas=choice.replicas)


def plugins_to_run(deployment: Deployment) -> list[PluginRun]:
    """Every plugin process of the deployment: the infrastructure plugins `upf run --deployment` starts
    (gateway/infrastructure.py's catalogue; files-* run beside it, as there), then the platform's own."""
    chosen = [
        _infrastructure_run(key, choice)
        for key, choice in deployment.infrastructure.items()
        if choice.plugin in CATALOGUE
    ]
    platform = [
        dataclasses.replace(run, replicas=deployment.plugin_replicas.get(run.service, 1)) for run in PLATFORM_PLUGINS
    ]
    return [*chosen, *platform]


# Docker Compose ------------------------------------------------------------------------------------


def _backing_services(run: PluginRun, base: Mapping[str, Any]) -> list[str]:
    """The hand-written services (redis, postgres, ...) a plugin's URLs name as their host."""
    text = " ".join([*run.args, *run.env.values()])
    return [name for name in base if re.search(rf"[/@]{re.escape(name)}:", text)]


def _compose_service(run: PluginRun, base: Mapping[str, Any]) -> dict[str, Any]:
    service: dict[str, Any] = copy.deepcopy(dict(base.get("x-upf", {})))
    # What it registers as its address: its name on the network. Replicas share it (Docker's DNS
    # answers the name with every replica's address, so the gateway's connections spread over them).
    service["hostname"] = run.service
    service["deploy"] = {"replicas": run.replicas}
    service["command"] = list(run.args)
    if run.env:
        service["environment"] = dict(run.env)
    if run.config:
        service["configs"] = [{"source": run.config.removesuffix(".yaml"), "target": f"/etc/upf/{run.config}"}]
    service["secrets"] = [{"source": "registration_secret", "target": SECRET_FILE}]
    service["labels"] = {PLUGIN_LABEL: run.plugin_id}
    health = copy.deepcopy(dict(base.get("x-plugin-health", {})))
    health["test"] = ["CMD", "python", "/app/docker/healthcheck.py", "grpc", f"127.0.0.1:{run.port}"]
    service["healthcheck"] = health
    needs = ["registry", *_backing_services(run, base["services"])]
    service["depends_on"] = {name: {"condition": "service_healthy"} for name in needs}
    return service


COMPOSE_HEADER = """\
# Rendered by `upf deploy render --target compose --deployment docker/deployment.yaml` from
# docker/compose.base.yaml (Traefik, gateways, registry, Redis, NATS, PostgreSQL: read it for the
# why of each setting) and docker/deployment.yaml (which plugins run). Edit those, not this file.
#
#   docker compose -f docker/compose.yaml up -d --build
"""


_GATEWAY_SERVICE = re.compile(r"gateway-\d+")


def _gateways(base: Mapping[str, Any], replicas: int | None, docker_dir: Path) -> dict[str, Any]:
    """gateway-1 .. gateway-N, each a copy of the base's gateway-1: Traefik health-checks each gateway
    by its own URL (docker/traefik/dynamic.yml), which a single service with N replicas would hide.
    None: the base's own gateway services."""
    if replicas is None:
        return {name: service for name, service in base["services"].items() if _GATEWAY_SERVICE.fullmatch(name)}
    names = [f"gateway-{n}" for n in range(1, replicas + 1)]
    dynamic = yaml.safe_load((docker_dir / "traefik" / "dynamic.yml").read_text(encoding="utf-8"))
    listed = [server["url"] for server in dynamic["http"]["services"]["gateway"]["loadBalancer"]["servers"]]
    wanted = [f"http://{name}:8080" for name in names]
    if listed != wanted:
        raise DeploymentError(
            f"gateway.replicas is {replicas} but docker/traefik/dynamic.yml routes to {', '.join(listed)}; "
            f"list {', '.join(wanted)} there"
        )
    return {name: copy.deepcopy(base["services"]["gateway-1"]) for name in names}


def render_compose(deployment: Deployment, docker_dir: Path = DOCKER_DIR) -> str:
    base = yaml.safe_load((docker_dir / "compose.base.yaml").read_text(encoding="utf-8"))
    services: dict[str, Any] = {}
    for name, service in base["services"].items():
        if name == "gateway-1":
            services |= _gateways(base, deployment.gateway_replicas, docker_dir)
        elif not _GATEWAY_SERVICE.fullmatch(name):
            services[name] = service
    gateways = [name for name in services if _GATEWAY_SERVICE.fullmatch(name)]
    services["traefik"]["depends_on"] = {name: {"condition": "service_started"} for name in gateways}
    for run in plugins_to_run(deployment):
        services[run.service] = _compose_service(run, base)
    document = {key: value for key, value in base.items() if not key.startswith("x-")}
    document["services"] = services
    return COMPOSE_HEADER + _dump([document])


# Kubernetes ----------------------------------------------------------------------------------------


def _k8s_value(value: str) -> tuple[str, list[str]]:
    """`${VAR}` -> `$(VAR)` (Kubernetes expands it from an earlier env entry), and the variables used."""
    names = [match.group(1) for match in _PLACEHOLDER.finditer(value)]
    return _PLACEHOLDER.sub(lambda match: f"$({match.group(1)})", value), names


def _k8s_deployment(run: PluginRun) -> dict[str, Any]:
    labels = {
        "app.kubernetes.io/name": run.service,
        "app.kubernetes.io/part-of": "upf",
        "app.kubernetes.io/component": "plugin",
        PLUGIN_LABEL: run.plugin_id,
    }
    secrets: list[str] = []
    env: list[dict[str, Any]] = []
    for name, raw in run.env.items():
        value, used = _k8s_value(raw)
        secrets += [variable for variable in used if variable not in secrets]
        env.append({"name": name, "value": value})
    args = []
    for raw in run.args:
        value, used = _k8s_value(raw)
        secrets += [variable for variable in used if variable not in secrets]
        args.append(value)
    # Referenced from the Secret, never written here; defined before the entries that use them.
    env = [
        {"name": variable, "valueFrom": {"secretKeyRef": {"name": DEPLOYMENT_SECRET, "key": variable}}}
        for variable in secrets
    ] + env
    mounts: list[dict[str, Any]] = [
        {"name": "registration", "mountPath": "/app/.upf", "readOnly": True},
        {"name": "tmp", "mountPath": "/tmp"},
    ]
    volumes: list[dict[str, Any]] = [
        {"name": "registration", "secret": {"secretName": REGISTRATION_SECRET, "defaultMode": 0o440}},
        {"name": "tmp", "emptyDir": {}},
    ]
    if run.config:
        mounts.append({"name": "config", "mountPath": f"/etc/upf/{run.config}", "subPath": run.config})
        volumes.append({"name": "config", "configMap": {"name": "upf-config"}})
    container: dict[str, Any] = {
        "name": run.service,
        "image": IMAGE,
        "args": args,
        "ports": [{"name": "grpc", "containerPort": run.port}],
        **({"env": env} if env else {}),
        "readinessProbe": {"grpc": {"port": run.port}, "periodSeconds": 5, "failureThreshold": 2},
        "livenessProbe": {"grpc": {"port": run.port}, "periodSeconds": 10, "failureThreshold": 3},
        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "512Mi"}},
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": mounts,
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": run.service, "namespace": NAMESPACE, "labels": labels},
        "spec": {
            "replicas": run.replicas,
            "selector": {"matchLabels": {"app.kubernetes.io/name": run.service}},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    # <pod>.plugins.upf.svc.cluster.local: the name the plugin registers (its host name).
                    "subdomain": HEADLESS_SERVICE,
                    "setHostnameAsFQDN": True,
                    "terminationGracePeriodSeconds": 30,
                    "securityContext": {
                        "runAsNonRoot": True,
                        "runAsUser": 10001,
                        "runAsGroup": 10001,
                        "fsGroup": 10001,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "containers": [container],
                    "volumes": volumes,
                },
            },
        },
    }


def _headless_service() -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": HEADLESS_SERVICE, "namespace": NAMESPACE},
        "spec": {
            "clusterIP": "None",
            # A plugin registers as soon as it serves: its name must resolve before it is ready.
            "publishNotReadyAddresses": True,
            "selector": {"app.kubernetes.io/part-of": "upf", "app.kubernetes.io/component": "plugin"},
        },
    }


KUBERNETES_HEADER = """\
# Rendered by `upf deploy render --target kubernetes --deployment docker/deployment.yaml --plugins-only`:
# one Deployment per plugin process, and the headless Service that names their pods. Edit
# docker/deployment.yaml (or cli/deploy_render.py), not this file.
"""


def render_kubernetes(deployment: Deployment, docker_dir: Path = DOCKER_DIR, *, plugins_only: bool = False) -> str:
    documents: list[Any] = []
    if not plugins_only:
        for path in sorted((docker_dir / "kubernetes").glob("*.yaml")):
            if path.name != "plugins.yaml":
                documents += [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]
        if deployment.gateway_replicas is not None:
            for doc in documents:
                _gateway_replicas(doc, deployment.gateway_replicas)
    documents.append(_headless_service())
    documents += [_k8s_deployment(run) for run in plugins_to_run(deployment)]
    return KUBERNETES_HEADER + _dump(documents)


def _gateway_replicas(document: dict[str, Any], replicas: int) -> None:
    """The hand-written gateway Deployment and its autoscaler, at the deployment file's count (the
    autoscaler's floor: it would otherwise scale a smaller count straight back up)."""
    if document.get("metadata", {}).get("name") != "gateway":
        return
    spec = document["spec"]
    if document["kind"] == "Deployment":
        spec["replicas"] = replicas
    elif document["kind"] == "HorizontalPodAutoscaler":
        spec["minReplicas"] = replicas
        spec["maxReplicas"] = max(spec["maxReplicas"], replicas)


def render(target: Literal["compose", "kubernetes"], deployment: Deployment, *, plugins_only: bool = False) -> str:
    if target == "compose":
        return render_compose(deployment)
    return render_kubernetes(deployment, plugins_only=plugins_only)


def render_command(target: Literal["compose", "kubernetes"], path: str, *, plugins_only: bool = False) -> int:
    """`upf deploy render`: the manifests on stdout; 2 and a message naming the key for a bad file."""
    try:
        sys.stdout.write(render(target, load_for_render(path), plugins_only=plugins_only))
    except ValueError as exc:  # DeploymentError, or a setting `upf plugin` does not take
        print(f"upf: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # docker/ is not next to this package (an installed wheel, not a checkout)
        print(f"upf: cannot read the hand-written manifests in {DOCKER_DIR}: {exc.strerror}", file=sys.stderr)
        return 2
    return 0


class _Dumper(yaml.SafeDumper):
    """Every value written out in full: no &anchors / *aliases for the parts that repeat."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _dump(documents: list[Any]) -> str:
    return yaml.dump_all(documents, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=120)
