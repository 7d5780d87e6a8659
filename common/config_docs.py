"""The documentation of a settings model, from the model itself: every key, its default and its description.

The field descriptions (`Field(description=...)`) are the one place a configuration key is explained;
the commands' `--help` and the README's configuration tables are rendered from them here (`make docs`
writes the README's; a test fails when it is stale), so the three cannot disagree.
"""

from __future__ import annotations

import textwrap
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, SecretStr
from pydantic.alias_generators import to_camel
from pydantic_core import PydanticUndefined

__all__ = ["Key", "help_text", "keys", "markdown_table"]


@dataclass(frozen=True, slots=True)
class Key:
    path: str  # as the file spells it: rateLimiting.burstSize; auth.issuers[].audience for list items
    default: str  # as YAML; "(required)" when there is none
    description: str


def keys(model: type[BaseModel], prefix: str = "") -> Iterator[Key]:
    """Every key of `model`, depth first in declaration order; sections are walked, not listed."""
    for name, field in model.model_fields.items():
        path = prefix + (field.alias or to_camel(name))
        section = _model_of(field.annotation)
        if section is not None:
            yield from keys(section, path + ".")
            continue
        item = _list_item_model(field.annotation)
        yield Key(path, _default(field.get_default(call_default_factory=True)), _sentence(field.description or ""))
        if item is not None:
            yield from keys(item, path + "[].")


def markdown_table(model: type[BaseModel]) -> str:
    rows = ["| key | default | what it does |", "| --- | --- | --- |"]
    for key in keys(model):
        default = key.default.replace("|", "\\|")
        # Markdown would read <pkg.Service> as an HTML tag and "*" as emphasis.
        description = key.description.replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;").replace("*", "\\*")
        rows.append(f"| `{key.path}` | `{default}` | {description} |")
    return "\n".join(rows) + "\n"


def help_text(model: type[BaseModel], heading: str, width: int = 100) -> str:
    """A `--help` epilog: each key with its default, then what it does, indented below it."""
    lines = [heading]
    for key in keys(model):
        lines.append(f"  {key.path}: {key.default}")
        lines.extend(
            textwrap.wrap(
                key.description,
                width,
                initial_indent=" " * 6,
                subsequent_indent=" " * 6,
                break_long_words=False,
                break_on_hyphens=False,
            )
        )
    return "\n".join(lines) + "\n"


def _sentence(text: str) -> str:
    """Descriptions end as sentences do (some begin with a key or a value, so their case is kept)."""
    if not text:
        return text
    return text if text.endswith((".", "?", "!", ".)")) else text + "."


def _model_of(annotation: Any) -> type[BaseModel] | None:
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def _list_item_model(annotation: Any) -> type[BaseModel] | None:
    if typing.get_origin(annotation) is list:
        (item,) = typing.get_args(annotation)
        return _model_of(item)
    return None


def _default(value: Any) -> str:
    if value is PydanticUndefined:
        return "(required)"
    if isinstance(value, SecretStr):
        return "(secret)"
    if isinstance(value, Path):
        value = str(value)
    if isinstance(value, types.MappingProxyType):
        value = dict(value)
    text: str = yaml.safe_dump(value, default_flow_style=True, width=1_000_000, sort_keys=False)
    return text.removesuffix("\n").removesuffix("\n...").strip()
