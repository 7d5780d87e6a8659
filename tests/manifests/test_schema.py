"""The checked-in JSON Schema is what the model generates, and it documents every key."""

from __future__ import annotations

import json
from typing import Any

from manifests.schema import SCHEMA_PATH, main, render_schema


def test_the_checked_in_schema_is_up_to_date() -> None:
    assert SCHEMA_PATH.read_text(encoding="utf-8") == render_schema(), "manifests/schema.json is stale: run make schema"
    assert main(["--check"]) == 0


def _objects(node: Any) -> list[dict[str, Any]]:
    found = []
    if isinstance(node, dict):
        if "properties" in node:
            found.append(node)
        for value in node.values():
            found += _objects(value)
    elif isinstance(node, list):
        for value in node:
            found += _objects(value)
    return found


def test_every_key_is_described_and_no_other_key_is_allowed() -> None:
    schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    objects = _objects(schema)
    assert len(objects) == 14  # the manifest and its thirteen parts
    for obj in objects:
        assert obj["additionalProperties"] is False
        for key, prop in obj["properties"].items():
            assert prop.get("description"), key


def test_the_schema_uses_the_manifest_keys() -> None:
    schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    assert schema["required"] == ["id", "version", "name", "type"]
    provided = schema["$defs"]["ProvidedInterface"]
    assert provided["required"] == ["name", "version", "protoFile", "grpcServices"]
    assert provided["properties"]["grpcServices"]["items"]["pattern"].startswith("^[A-Za-z_]")
    assert set(schema["$defs"]["MethodPolicy"]["properties"]) == {
        "requiredPermission",
        "rateLimit",
        "timeout",
        "idempotent",
    }
