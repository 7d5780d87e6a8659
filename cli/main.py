"""The `upf` command: its options, and which component each subcommand starts."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from common.config_docs import help_text
from common.logs import configure_logging
from gateway.settings import ConfigError, GatewaySettings, load_settings

_Settings = TypeVar("_Settings")

__all__ = ["main"]

FILES_PLUGINS = ("files-local", "files-s3", "files-gcs")

DESCRIPTION = """\
UPF: a platform of gRPC plugins behind one gateway.

The gateway answers gRPC-Web (binary and text), REST and native gRPC, and proxies calls to the
plugins' gRPC services. Configuration comes from one YAML file (--config or $UPF_CONFIG) and
UPF_* environment variables (UPF_HTTP_PORT=9000, UPF_RATE_LIMITING__BURST_SIZE=50); the options
below override both.
"""


# The configuration keys in each command's --help come from the settings models' field descriptions
# (common/config_docs.py), as the README's tables do.
def _keys_heading(variable: str, key: str) -> str:
    return (
        "configuration file keys (all optional; UPF_* variables override them, e.g.\n"
        f"{variable} for {key}; ${{VAR}} in a value is the environment variable VAR,\n"
        "${VAR:-default} when VAR may be unset):"
    )


def _gateway_keys() -> str:
    return help_text(GatewaySettings, _keys_heading("UPF_RATE_LIMITING__BURST_SIZE=50", "rateLimiting.burstSize"))


MANIFEST_VALIDATE = """\
Check plugin manifests (YAML, or JSON when the name ends in .json) against the manifest's schema
(manifests/schema.json) and for consistency: unique interface, method and module names, fully
qualified gRPC services, npm-style semver ranges in requires (^1.2, ~1.2.3, >=1.0.0 <2, 1.x, ||),
policies that name declared methods, navigation paths that start with /. A provided interface
without grpcServices gets the services its protoFile declares (looked for from the manifest's folder
upwards); an enabled UI without remoteEntry gets /static/remoteEntry.js.
"""

MANIFEST_EPILOG = """\
output:
  FILE: ok                                   on stdout, for each valid file
  FILE:LINE:COLUMN: FIELD: what is wrong      on stderr, one line per problem, e.g.
  plugins/demo/manifest.yaml:12:5: requires[0].version: "^1.x.y" is not a semver range

exit status: 0 all valid, 1 a manifest is invalid, 2 a file cannot be read
"""


REGISTRY_DESCRIPTION = """\
Start the plugin registry: plugins register their manifest and endpoint and renew a lease; the
registry checks each instance with grpc.health.v1, resolves required interfaces by semver range,
and streams health changes (WatchHealth) to the gateway. The contract is
proto/upf/registry/v1/registry.proto. The server also serves grpc.health.v1 and reflection.
Configuration: --config FILE (or $UPF_CONFIG) and UPF_* variables (UPF_HEALTH__INTERVAL=1).
"""


def _registry_keys() -> str:
    from registry.settings import RegistrySettings

    return help_text(RegistrySettings, _keys_heading("UPF_HEALTH__INTERVAL=1", "health.interval"))


def _auth_plugin_keys() -> str:
    from plugins.auth.settings import AuthSettings

    heading = (
        "auth configuration file keys (all optional; at the top of the file, or inside a top-level auth:\n"
        "section as the seed writes them; UPF_* variables override them, e.g. UPF_PROVIDER=custom,\n"
        "UPF_CUSTOM__STORE=postgres, UPF_REVOCATION__STORE=redis):"
    )
    return help_text(AuthSettings, heading)


MESSAGE_BUS_EPILOG = """
message-bus-memory | -nats | -rabbitmq | -redis (IMessageBus): --bus-url picks the broker, --bus-prefix
the names it makes there; callers' durables and queue groups are kept apart by their plugin id.
  upf plugin message-bus-nats --bus-url nats://127.0.0.1:4222
"""

# IMessageBus plugins (plugins/messagebus): one servicer over four backends.
MESSAGE_BUS_PLUGINS = ("message-bus-memory", "message-bus-nats", "message-bus-rabbitmq", "message-bus-redis")

STORAGE_PLUGIN_EPILOG = """\
storage plugins: --dsn URL (or $UPF_STORAGE_DSN) names the database, which must exist (the plugin
creates its table, upf_storage_records, in it):
  storage-sqlite    a file path or :memory: (default: upf-storage.sqlite3 in the current directory)
  storage-postgres  postgresql://user:password@host:port/database (default: postgresql://postgres@127.0.0.1:5432/upf)
  storage-mysql     mysql://user:password@host:port/database, MariaDB 10.5+ or MySQL 8+
                    (default: mysql://root@127.0.0.1:3306/upf)
  $UPF_STORAGE_COLLECTIONS=a,b: only these collections exist (INVALID_ARGUMENT for others; default: any).
  A database that is down does not stop the plugin: calls answer UNAVAILABLE until it is back.
  A caller's data lives in the namespace of its plugin id, from the identity token the registry signed for
  it (the SDK sends it on every call); a call without a valid token is refused (UNAUTHENTICATED).
"""


CACHE_PLUGIN_EPILOG = """\
cache plugins (ICache, upf.cache.v1.Cache; each calling plugin's keys in the namespace of its id, from the
identity token the registry signed for it):
  cache-memory      in this process's memory (the embedded default; nothing to install)
  cache-redis       Redis: --redis-url (or UPF_CACHE_REDIS_URL, default redis://127.0.0.1:6379/0)
  cache-memcached   memcached: --memcached HOST:PORT (or UPF_CACHE_MEMCACHED, default 127.0.0.1:11211);
                    start memcached with -I above the largest value (default 4 MiB - 64 KiB), e.g. -I 8m;
                    no Keys or Invalidate (memcached cannot list keys)
  --key-prefix (UPF_CACHE_KEY_PREFIX, default upf:cache) starts every Redis or memcached key;
  UPF_CACHE_TIMEOUT (seconds, default 2) bounds each backend call before it answers UNAVAILABLE.
"""

CACHE_PLUGINS = ("cache-memory", "cache-redis", "cache-memcached")

DEPLOYMENT_EPILOG = """\
deployment file (--deployment FILE; the seed's deployment.yaml; ${VAR} and ${VAR:-default} are filled
from the environment; what it leaves out is the embedded default):
  infrastructure:
    storage:  {plugin: storage-postgres, config: {connectionString: ${DATABASE_URL}, maxConnections: 20}}
    cache:    {plugin: cache-redis, config: {url: ${REDIS_URL}, keyPrefix: 'upf:'}}
  storage: storage-sqlite (default, in memory; connectionString: a file), storage-postgres, storage-mysql
  cache:   cache-memory (default), cache-redis (url, keyPrefix), cache-memcached (servers: [host:port])
  messageBus: message-bus-memory (default), message-bus-nats, message-bus-rabbitmq, message-bus-redis (url, prefix)
  files:   not started by upf run yet: run upf plugin files-local|files-s3|files-gcs beside it
replica counts (gateway: {replicas: N}, plugins: {auth: {replicas: N}}, `replicas: N` in an
infrastructure entry) are for `upf deploy render`: upf run runs one of each on its one machine.
"""


def _add_gateway_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE", help="YAML configuration file (default: $UPF_CONFIG)")
    parser.add_argument("--host", help="address to listen on (config key host, default 127.0.0.1)")
    parser.add_argument("--http-port", type=int, metavar="PORT", help="HTTP port (httpPort, default 8080)")
    parser.add_argument("--grpc-port", type=int, metavar="PORT", help="native gRPC port (grpcPort, default 50051)")
    parser.add_argument("--workers", type=int, metavar="N", help="gateway processes (workers, default 1)")
    parser.add_argument(
        "--log-level", choices=["critical", "error", "warning", "info", "debug"], help="log level (logLevel)"
    )


class _Parser(argparse.ArgumentParser):
    """A parser whose epilog is rendered only when its help is shown: the configuration keys of every
    settings model are not needed to start anything."""

    def __init__(self, *args: Any, epilog_from: Callable[[], str] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._epilog_from = epilog_from

    def format_help(self) -> str:
        if self._epilog_from is not None:
            self.epilog = self._epilog_from()
        return super().format_help()


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="upf", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    run = commands.add_parser(
        "run",
        help="start the whole platform in one process: registry, auth and demo plugins, gateway",
        description="Start the whole platform in one process on http://127.0.0.1:8080: the registry, the "
        "auth plugin (custom provider, users in memory, a demo user 'demo' / 'demo-password' for local use "
        "only), the demo plugin (upf.demo.v1.Echo), the infrastructure plugins (storage-sqlite in memory and "
        "cache-memory, or those a deployment file chooses), the orders plugin (upf.orders.v1.Orders) and the "
        "gateway, verifying tokens. Nothing else needs to be installed or running.",
        epilog_from=lambda: _gateway_keys() + "\n" + DEPLOYMENT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_gateway_options(run)
    run.add_argument(
        "--deployment",
        metavar="FILE",
        help="a deployment file (the seed's deployment.yaml) choosing the infrastructure plugins "
        "(default: the embedded ones)",
    )
    gateway = commands.add_parser(
        "gateway",
        help="start the gateway alone (routes from the configuration's upstreams)",
        description="Start the gateway: gRPC-Web and REST on httpPort, native gRPC on grpcPort, "
        "proxying to the upstreams in the configuration.",
        epilog_from=_gateway_keys,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_gateway_options(gateway)
    registry = commands.add_parser(
        "registry",
        help="start the plugin registry (upf.registry.v1.Registry, default 127.0.0.1:50052)",
        description=REGISTRY_DESCRIPTION,
        epilog_from=_registry_keys,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    registry.add_argument("--config", metavar="FILE", help="YAML configuration file (default: $UPF_CONFIG)")
    registry.add_argument("--host", help="address to listen on (config key host, default 127.0.0.1)")
    registry.add_argument("--port", type=int, metavar="PORT", help="gRPC port (port, default 50052; 0: any free)")
    registry.add_argument("--store", choices=["memory", "redis"], help="where registrations live (store)")
    registry.add_argument(
        "--log-level", choices=["critical", "error", "warning", "info", "debug"], help="log level (logLevel)"
    )
    registry.add_argument(
        "--credential-for",
        metavar="PLUGIN_ID",
        help="print the registration credential of a plugin id (from this configuration's secret) and exit; "
        "give it to that plugin as $UPF_REGISTRATION_CREDENTIAL",
    )
    manifest = commands.add_parser(
        "manifest",
        help="work with plugin manifests (manifest.yaml)",
        description="Work with plugin manifests: the declaration of a plugin's id, version, the "
        "interfaces it provides and requires, and its UI.",
    )
    manifest_commands = manifest.add_subparsers(dest="manifest_command", metavar="COMMAND", required=True)
    validate = manifest_commands.add_parser(
        "validate",
        help="check manifests and report each problem with its file, line and field",
        description=MANIFEST_VALIDATE,
        epilog=MANIFEST_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    validate.add_argument("files", nargs="+", metavar="FILE", help="manifest file to check")
    auth = commands.add_parser(
        "auth",
        help="manage the auth plugin's users (custom provider)",
        description="Manage the users of the auth plugin's custom provider, in the store its configuration names.",
    )
    auth_commands = auth.add_subparsers(dest="auth_command", metavar="COMMAND", required=True)
    add_user = auth_commands.add_parser(
        "add-user",
        help="create a user, or update one's password, e-mail and roles",
        description="Create a user of the custom provider, or update an existing one's password, e-mail and "
        "roles. The password is read from standard input (one line), or asked for twice on a terminal.",
        epilog="example: printf '%s\\n' \"$PASSWORD\" | upf auth add-user alice --email alice@example.org "
        "--role user --config auth.yaml",
    )
    add_user.add_argument("username", help="the login name")
    add_user.add_argument("--email", default="", help="the user's e-mail address")
    add_user.add_argument("--name", default="", help="the user's display name")
    add_user.add_argument(
        "--role", action="append", default=[], dest="roles", metavar="ROLE", help="a role (repeat for several)"
    )
    add_user.add_argument(
        "--config", metavar="FILE", help="the auth plugin's YAML configuration (default: $UPF_CONFIG)"
    )
    deploy = commands.add_parser(
        "deploy",
        help="write Docker Compose or Kubernetes manifests from a deployment file",
        description="Work with deployments of the platform on several machines.",
    )
    deploy_commands = deploy.add_subparsers(dest="deploy_command", metavar="COMMAND", required=True)
    render = deploy_commands.add_parser(
        "render",
        help="print the compose file or the Kubernetes manifests a deployment file (deployment.yaml) makes",
        description="Print docker/compose.base.yaml or docker/kubernetes/ with one service (compose) or "
        "Deployment (Kubernetes) per plugin process: the infrastructure plugins the deployment file "
        "chooses, as `upf run --deployment FILE` runs them, and the auth, demo and orders plugins. "
        "${VAR} placeholders stay placeholders: compose fills them from its .env file, Kubernetes from "
        "the Secret upf-deployment.",
    )
    render.add_argument("--target", required=True, choices=["compose", "kubernetes"], help="what to write")
    render.add_argument("--deployment", required=True, metavar="FILE", help="the deployment file")
    render.add_argument(
        "--plugins-only", action="store_true", help="kubernetes: only the plugins (docker/kubernetes/plugins.yaml)"
    )
    plugin = commands.add_parser(
        "plugin",
        help="run a built-in plugin as its own process, registered with the registry",
        description="Run a built-in plugin (demo: upf.demo.v1.Echo; auth: upf.auth.v1.Auth; orders: "
        "upf.orders.v1.Orders, needs an IStorage plugin; storage-sqlite, "
        "storage-postgres, storage-mysql: upf.storage.v1.Storage; cache-*: upf.cache.v1.Cache) on the plugin SDK: "
        "it serves gRPC with grpc.health.v1 and reflection, registers with the registry and renews its lease, "
        "and on SIGTERM stops taking calls, drains the running ones and unregisters.",
        epilog_from=lambda: (
            _auth_plugin_keys() + "\n" + STORAGE_PLUGIN_EPILOG + "\n" + CACHE_PLUGIN_EPILOG + MESSAGE_BUS_EPILOG
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    plugin.add_argument(
        "name",
        choices=[
            "demo",
            "auth",
            "orders",
            "storage-sqlite",
            "storage-postgres",
            "storage-mysql",
            *CACHE_PLUGINS,
            *FILES_PLUGINS,
            *MESSAGE_BUS_PLUGINS,
        ],
        help="which plugin (files-*: IFiles, with options of their own: upf plugin files-local --help)",
    )
    plugin.add_argument("--dsn", metavar="URL", help="storage-*: the database (default: $UPF_STORAGE_DSN; see below)")
    plugin.add_argument(
        "--config", metavar="FILE", help="auth: YAML configuration file (default: $UPF_CONFIG; see below)"
    )
    plugin.add_argument(
        "--registry",
        metavar="ADDR",
        help="the registry's host:port (default: $UPF_REGISTRY_URL, auth's registryUrl, or 127.0.0.1:50052)",
    )
    plugin.add_argument("--host", help="address to listen on (default 127.0.0.1; auth: host)")
    plugin.add_argument("--port", type=int, metavar="PORT", help="gRPC port (default 0: any free port; auth: port)")
    plugin.add_argument("--instance-id", metavar="ID", help="this instance's id (default: <plugin id>-<random>)")
    plugin.add_argument("--manifest", metavar="FILE", help="use this manifest instead of the plugin's own")
    plugin.add_argument(
        "--bus-url",
        metavar="URL",
        help="message-bus-nats|rabbitmq|redis: the broker (default: $UPF_NATS_URL or nats://127.0.0.1:4222, "
        "$UPF_RABBITMQ_URL or amqp://guest:guest@127.0.0.1:5672/, $UPF_REDIS_URL or redis://127.0.0.1:6379/0)",
    )
    plugin.add_argument(
        "--bus-prefix",
        metavar="PREFIX",
        help="message-bus-*: prefix of the subjects, streams, exchanges or keys it makes in the broker "
        "(default: $UPF_BUS_PREFIX, or upf.bus; upf:bus for Redis)",
    )
    plugin.add_argument(
        "--ui-port",
        type=int,
        metavar="PORT",
        help="orders: HTTP port of its UI files (default: $UPF_ORDERS_UI_PORT, or 0: any free port)",
    )
    plugin.add_argument(
        "--drain-grace", type=float, default=10.0, metavar="SECONDS", help="time in-flight calls get on SIGTERM"
    )
    plugin.add_argument(
        "--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"], help="log level"
    )
    plugin.add_argument("--redis-url", metavar="URL", help="cache-redis: the Redis to use ($UPF_CACHE_REDIS_URL)")
    plugin.add_argument(
        "--memcached", metavar="HOST:PORT", help="cache-memcached: the memcached ($UPF_CACHE_MEMCACHED)"
    )
    plugin.add_argument("--key-prefix", metavar="PREFIX", help="cache-redis, cache-memcached: key prefix")
    return parser


def _settings(args: argparse.Namespace) -> GatewaySettings:
    overrides = {
        "UPF_HOST": args.host,
        "UPF_HTTP_PORT": args.http_port,
        "UPF_GRPC_PORT": args.grpc_port,
        "UPF_WORKERS": args.workers,
        "UPF_LOG_LEVEL": args.log_level,
    }
    for name, value in overrides.items():
        if value is not None:
            # Through the environment, so that worker processes see the same values.
            os.environ[name] = str(value)
    return load_settings(args.config)


def _load_or_exit(load: Callable[[str | None], _Settings], path: str | None) -> _Settings:
    """Settings from `path` and UPF_* variables; a bad configuration ends the command with status 2."""
    try:
        return load(path)
    except ConfigError as exc:
        print(f"upf: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def _run_registry(args: argparse.Namespace) -> None:
    # Imported here so that the gateway's commands do not load the registry.
    from registry.server import run_registry
    from registry.settings import load_registry_settings

    for name, value in {
        "UPF_HOST": args.host,
        "UPF_PORT": args.port,
        "UPF_STORE": args.store,
        "UPF_LOG_LEVEL": args.log_level,
    }.items():
        if value is not None:
            os.environ[name] = str(value)
    settings = _load_or_exit(load_registry_settings, args.config)
    configure_logging(settings.log_level)
    if args.credential_for is not None:
        from registry.server import registration_credentials

        credentials = registration_credentials(settings.registration)
        if credentials is None:
            print("upf: registration.open is true: this registry asks for no credential", file=sys.stderr)
            raise SystemExit(1)
        print(credentials.for_plugin(args.credential_for))
        return
    run_registry(settings)


def _run_plugin(args: argparse.Namespace) -> None:
    configure_logging(args.log_level)
    if args.name == "auth":
        _run_auth_plugin(args)
        return
    if args.name.startswith("storage-"):
        _run_storage_plugin(args)
        return
    if args.name in CACHE_PLUGINS:
        _run_cache_plugin(args)
        return
    if args.name in MESSAGE_BUS_PLUGINS:
        _run_message_bus_plugin(args)
        return
    if args.config is not None:
        print(f"upf: --config is for the auth plugin; {args.name} has no configuration file", file=sys.stderr)
        raise SystemExit(2)
    # Imported here so that the gateway's commands do not load the plugin SDK.
    if args.name == "orders":
        from plugins.orders.plugin import MANIFEST as ORDERS_MANIFEST, main as run_orders

        raise SystemExit(
            run_orders(
                **_plugin_options(args),
                manifest=args.manifest or ORDERS_MANIFEST,
                ui_port=args.ui_port,
            )
        )
    from plugins.demo.plugin import MANIFEST, main as run_demo

    raise SystemExit(
        run_demo(
            **_plugin_options(args),
            manifest=args.manifest or MANIFEST,
        )
    )


def _plugin_options(args: argparse.Namespace) -> dict[str, Any]:
    """What every built-in plugin takes from `upf plugin`'s common flags."""
    return {
        "registry": args.registry or os.environ.get("UPF_REGISTRY_URL", "127.0.0.1:50052"),
        "host": args.host or "127.0.0.1",
        "port": args.port or 0,
        "instance_id": args.instance_id,
        "drain_grace": args.drain_grace,
    }


def _run_message_bus_plugin(args: argparse.Namespace) -> None:
    from plugins.messagebus.plugin import main as run_bus, settings_from_env

    settings = settings_from_env(args.name.removeprefix("message-bus-"), args.bus_url, args.bus_prefix)
    raise SystemExit(
        run_bus(
            settings,
            **_plugin_options(args),
            manifest=args.manifest,
        )
    )


def _run_cache_plugin(args: argparse.Namespace) -> None:
    from plugins.cache.plugin import CacheSettings, main as run_cache

    if args.config is not None:
        print(
            f"upf: --config is for the auth plugin; {args.name} takes flags and UPF_CACHE_* variables", file=sys.stderr
        )
        raise SystemExit(2)
    flags = {"redis_url": args.redis_url, "memcached": args.memcached, "key_prefix": args.key_prefix}
    try:
        settings = CacheSettings.from_env(args.name.removeprefix("cache-"))
        settings = dataclasses.replace(settings, **{name: value for name, value in flags.items() if value is not None})
    except ValueError as exc:
        print(f"upf: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    raise SystemExit(
        run_cache(
            settings,
            **_plugin_options(args),
            manifest=args.manifest,
        )
    )


def _run_auth_plugin(args: argparse.Namespace) -> None:
    from plugins.auth.plugin import MANIFEST, main as run_auth
    from plugins.auth.settings import load_auth_settings

    for name, value in {"UPF_HOST": args.host, "UPF_PORT": args.port, "UPF_REGISTRY_URL": args.registry}.items():
        if value is not None:
            os.environ[name] = str(value)
    settings = _load_or_exit(load_auth_settings, args.config)
    raise SystemExit(
        run_auth(
            settings,
            instance_id=args.instance_id,
            manifest=args.manifest or MANIFEST,
            drain_grace=args.drain_grace,
        )
    )


def _run_storage_plugin(args: argparse.Namespace) -> None:
    from plugins.storage.plugin import main as run_storage

    raise SystemExit(
        run_storage(
            args.name,
            args.dsn,
            **_plugin_options(args),
            manifest=args.manifest,
        )
    )


def _run_auth_admin(args: argparse.Namespace) -> None:
    from plugins.auth.admin import add_user
    from plugins.auth.settings import load_auth_settings

    settings = _load_or_exit(load_auth_settings, args.config)
    try:
        user_id = add_user(settings, args.username, args.email, args.roles, args.name)
    except (ValueError, OSError) as exc:
        print(f"upf: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    print(f"user {args.username} ({user_id}) saved")


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) >= 2 and argv[0] == "plugin" and argv[1] in FILES_PLUGINS:
        # The files plugins parse their own options (a backend's settings each; their --help lists them).
        from plugins.files.cli import main as run_files

        raise SystemExit(run_files(argv[1], argv[2:]))
    args = build_parser().parse_args(argv)
    if args.command == "manifest":
        # Needs no gateway settings; imported here so that other commands do not load it.
        from manifests.cli import validate_files

        raise SystemExit(validate_files(args.files))
    if args.command == "registry":
        _run_registry(args)
        return
    if args.command == "plugin":
        _run_plugin(args)
        return
    if args.command == "auth":
        _run_auth_admin(args)
        return
    if args.command == "deploy":
        from cli.deploy_render import render_command

        raise SystemExit(render_command(args.target, args.deployment, plugins_only=args.plugins_only))
    try:
        settings = _settings(args)
    except ConfigError as exc:
        print(f"upf: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    configure_logging(settings.log_level)
    if args.command == "gateway":
        from gateway.serve import run_gateway

        run_gateway(settings, args.config)
    elif args.command == "run":
        from cli.allinone import run_all
        from cli.deployment import DeploymentError, load_deployment
        from cli.infrastructure import check_deployment, known_plugins

        deployment = None
        if args.deployment:
            try:
                deployment = load_deployment(args.deployment, known_plugins())
                check_deployment(deployment)
            except DeploymentError as exc:
                print(f"upf: {exc}", file=sys.stderr)
                raise SystemExit(2) from None
            except ValueError as exc:  # a plugin's own check of its config
                print(f"upf: {args.deployment}: {exc}", file=sys.stderr)
                raise SystemExit(2) from None
            if more := deployment.more_than_one():
                print(
                    f"upf: {args.deployment} asks for {', '.join(more)}; upf run runs one of each on this machine "
                    "(replica counts are for upf deploy render)",
                    file=sys.stderr,
                )
        with contextlib.suppress(asyncio.CancelledError):  # stopped while starting: a clean stop too
            asyncio.run(run_all(settings, deployment))
