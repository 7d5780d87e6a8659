"""The manifest's JSON Schema, generated from the model and checked in as manifests/schema.json.

Editors use it to complete and check manifest.yaml as it is typed (with the YAML language server:
`# yaml-language-server: $schema=<path to manifests/schema.json>`); plugins in other languages can
validate against it. It says what each key means and its shape; the checks that relate several keys
(unique names, policies that name declared methods, ...) are only in `upf manifest validate`.

    python -m manifests.schema           # rewrite manifests/schema.json (what `make schema` runs)
    python -m manifests.schema --check   # exit 1 if the file is not what the model generates
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from manifests.model import PluginManifest

__all__ = ["SCHEMA_PATH", "build_schema", "main", "render_schema"]

SCHEMA_PATH = Path(__file__).with_name("schema.json")


def build_schema() -> dict[str, Any]:
    schema = PluginManifest.model_json_schema(by_alias=True)
    _drop_property_titles(schema)
    # What a reader looks for first at the top, the definitions of the parts at the end.
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "UPF plugin manifest",
        **{k: v for k, v in schema.items() if k not in ("title", "$defs")},
        "$defs": schema["$defs"],
    }


def _drop_property_titles(node: object) -> None:
    # pydantic titles each property after its Python name ("Grpc Services"); they add nothing to the
    # descriptions and would show up in editors' hovers.
    if isinstance(node, dict):
        for prop in node.get("properties", {}).values():
            if isinstance(prop, dict):
                prop.pop("title", None)
        for value in node.values():
            _drop_property_titles(value)
    elif isinstance(node, list):
        for value in node:
            _drop_property_titles(value)


def render_schema() -> str:
    return json.dumps(build_schema(), indent=2, ensure_ascii=False) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m manifests.schema", description="Write manifests/schema.json from the model."
    )
    parser.add_argument("--check", action="store_true", help="only check that the file is up to date")
    args = parser.parse_args(argv)
    text = render_schema()
    if args.check:
        current = SCHEMA_PATH.read_text(encoding="utf-8") if SCHEMA_PATH.exists() else ""
        if current != text:
            print(f"{SCHEMA_PATH} is stale: run `make schema`", file=sys.stderr)
            return 1
        return 0
    SCHEMA_PATH.write_text(text, encoding="utf-8")
    print(f"wrote {SCHEMA_PATH}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
