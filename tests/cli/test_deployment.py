"""The deployment file: the seed's example loads as written, and every mistake is named."""

from __future__ import annotations

from pathlib import Path

import pytest

from cli.deployment import DEFAULTS, Choice, Deployment, DeploymentError, load_deployment

KNOWN = {
    "storage-sqlite": "storage",
    "storage-postgres": "storage",
    "cache-memory": "cache",
    "cache-redis": "cache",
    "files-local": "files",
    "files-s3": "files",
    "message-bus-memory": "messageBus",
    "message-bus-nats": "messageBus",
}

# The seed's deployment.yaml (section 4, "Selecting Infrastructure Plugins"), with the plugins this
# platform has under the names it gives them.
SEED = """\
# deployment.yaml
infrastructure:
  storage:
    plugin: storage-postgres
    config:
      connectionString: ${DATABASE_URL}
      maxConnections: 20

  cache:
    plugin: cache-redis
    config:
      url: ${REDIS_URL}
      keyPrefix: 'upf:'

  files:
    plugin: files-s3
    config:
      endpoint: ${MINIO_ENDPOINT}
      bucket: upf-files
      accessKey: ${MINIO_ACCESS_KEY}
      secretKey: ${MINIO_SECRET_KEY}

  messageBus:
    plugin: message-bus-nats
    config:
      servers:
        - ${NATS_URL}
      jetstream:
        enabled: true
"""
ENV = {
    "DATABASE_URL": "postgresql://postgres@127.0.0.1:5432/upf",
    "REDIS_URL": "redis://127.0.0.1:6379/0",
    "MINIO_ENDPOINT": "http://127.0.0.1:9000",
    "MINIO_ACCESS_KEY": "ak",
    "MINIO_SECRET_KEY": "sk",
    "NATS_URL": "nats://127.0.0.1:4222",
}


def load(tmp_path: Path, text: str, environ: dict[str, str] | None = None) -> Deployment:
    path = tmp_path / "deployment.yaml"
    path.write_text(text)
    return load_deployment(path, KNOWN, ENV if environ is None else environ)


def test_the_seeds_example_loads_as_written_with_its_placeholders_filled(tmp_path: Path) -> None:
    deployment = load(tmp_path, SEED)
    storage = deployment.infrastructure["storage"]
    assert storage == Choice("storage-postgres", {"connectionString": ENV["DATABASE_URL"], "maxConnections": 20})
    assert deployment.infrastructure["cache"].config == {"url": ENV["REDIS_URL"], "keyPrefix": "upf:"}
    assert deployment.infrastructure["messageBus"].config["servers"] == [ENV["NATS_URL"]]
    assert deployment.infrastructure["files"].config["secretKey"] == "sk"


def test_what_the_file_leaves_out_is_the_embedded_default(tmp_path: Path) -> None:
    deployment = load(tmp_path, "infrastructure:\n  cache: {plugin: cache-redis}\n")
    plugins = {key: choice.plugin for key, choice in deployment.infrastructure.items()}
    assert plugins == {**DEFAULTS, "cache": "cache-redis"}
    assert load(tmp_path, "").infrastructure == Deployment.embedded().infrastructure


def test_a_placeholder_may_carry_a_default(tmp_path: Path) -> None:
    text = "infrastructure:\n  cache: {plugin: cache-redis, config: {url: '${NOPE:-redis://127.0.0.1:6379/1}'}}\n"
    assert load(tmp_path, text, {}).infrastructure["cache"].config == {"url": "redis://127.0.0.1:6379/1"}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (SEED, "infrastructure.storage.config.connectionString: environment variable DATABASE_URL is not set"),
        ("infrastructure:\n  database: {plugin: storage-sqlite}\n", "infrastructure.database: unknown interface"),
        ("infrastructure:\n  storage: {plugin: storage-mongodb}\n", "unknown plugin 'storage-mongodb'; for storage:"),
        ("infrastructure:\n  storage: {plugin: cache-redis}\n", "cache-redis implements ICache, not IStorage"),
        ("infrastructure:\n  storage: {plugin: storage-sqlite, conf: {}}\n", "unknown key 'conf'"),
        ("infrastructure:\n  storage: storage-sqlite\n", "infrastructure.storage.plugin: name the plugin"),
        ("services: {}\n", "unknown key 'services'"),
        ("infrastructure: [\n", "not valid YAML"),
    ],
)
def test_mistakes_are_named_with_the_file_and_key(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(DeploymentError) as caught:
        load(tmp_path, text, {})
    assert str(tmp_path / "deployment.yaml") in str(caught.value)
    assert message in str(caught.value)
