"""Reading manifests, and reporting every problem with its file, line, column and field.

A problem reads like a compiler's, so editors and people can jump to it:

    plugins/demo/manifest.yaml:12:5: requires[0].version: "^1.x.y" is not a semver range

The line and column point at the key whose value is wrong (or at the entry that lacks a required key).
They come from PyYAML's node tree, which records where each key and value starts; pydantic's error
locations are walked down that tree. JSON files are read with `json` (so JSON's rules apply) and located
with the same tree, since JSON is YAML.

`load_manifest` raises `ManifestError` (its `problems` are the structured form, its `str()` the lines
above) for any manifest that cannot be used, and lets `OSError` through for a file that cannot be read.
"""

from __future__ import annotations

import dataclasses
import datetime
import difflib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import UnionType
from typing import Any, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError
from pydantic.alias_generators import to_camel
from pydantic_core import ErrorDetails

from manifests.infer import complete
from manifests.model import CONSISTENCY_ERROR, Location, PluginManifest, dotted_path

__all__ = ["ManifestError", "Problem", "load_manifest", "manifest_from_data", "parse_manifest"]


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a manifest: the field (`path`, "" for the whole file), where it is, and why."""

    path: str
    message: str
    line: int | None = None  # 1-based, like editors count
    column: int | None = None

    def format(self, source: str) -> str:
        where = source if self.line is None else f"{source}:{self.line}:{self.column}"
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


class ManifestError(ValueError):
    """A manifest that cannot be used. `str()` gives one line per problem, `problems` the details."""

    def __init__(self, source: str, problems: Sequence[Problem]) -> None:
        self.source = source
        self.problems = tuple(problems)
        super().__init__("\n".join(p.format(source) for p in self.problems))


def load_manifest(path: str | Path) -> PluginManifest:
    """Read and validate a manifest file (JSON when it ends in .json, YAML otherwise)."""
    source = str(path)
    raw = Path(path).read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ManifestError(
            source, [Problem("", f"not UTF-8 text (byte {exc.start}); save the file as UTF-8")]
        ) from None
    json_format = Path(path).suffix.lower() == ".json"
    return parse_manifest(text, source, json_format=json_format, base=Path(path).resolve().parent)


def parse_manifest(
    text: str, source: str = "<manifest>", *, json_format: bool = False, base: Path | None = None
) -> PluginManifest:
    """Validate a manifest given as YAML (or JSON) text; `source` names it in the problems. `base`, the
    manifest's folder, lets what it leaves out be read from the files it names (manifests/infer.py)."""
    if json_format:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ManifestError(source, [Problem("", f"not valid JSON: {exc.msg}", exc.lineno, exc.colno)]) from None
        # Only for positions. YAML forbids the tabs JSON allows between tokens; a space keeps the columns.
        root = _compose(text.replace("\t", " "))
    else:
        try:
            root, data = _read_yaml(text)
        except yaml.YAMLError as exc:
            raise ManifestError(source, [_yaml_problem(exc)]) from None
    if root is None and data is None:
        raise ManifestError(
            source, [Problem("", "the file is empty; a manifest needs at least id, version, name, type")]
        )
    problems = list(_duplicate_keys(root)) if root is not None else []
    data, not_inferred = complete(data, base)
    try:
        manifest = manifest_from_data(data, source, root)
    except ManifestError as exc:
        # "required key is missing" says less than why it could not be inferred.
        reasons = {dotted_path(loc): reason for loc, reason in not_inferred.items()}
        problems += [
            dataclasses.replace(p, message=reasons[p.path]) if p.path in reasons and p.message == _MISSING else p
            for p in exc.problems
        ]
    if problems:
        raise ManifestError(source, _in_order(problems))
    return manifest


def manifest_from_data(data: object, source: str = "<manifest>", root: yaml.Node | None = None) -> PluginManifest:
    """Validate already-parsed data; `root`, the YAML node tree it came from, adds lines and columns."""
    try:
        return PluginManifest.model_validate(data)
    except ValidationError as exc:
        raise ManifestError(source, _in_order(list(_problems(exc, root)))) from None


_MISSING = "required key is missing"


def _read_yaml(text: str) -> tuple[yaml.Node | None, Any]:
    # What yaml.safe_load does, keeping the node tree that records positions.
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
        return root, None if root is None else loader.construct_document(root)
    finally:
        loader.dispose()


def _compose(text: str) -> yaml.Node | None:
    try:
        return yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return None  # valid JSON that YAML cannot read: problems are reported without positions


def _yaml_problem(exc: yaml.YAMLError) -> Problem:
    if not isinstance(exc, yaml.MarkedYAMLError) or exc.problem_mark is None:
        return Problem("", f"not valid YAML: {exc}")
    message = f"not valid YAML: {exc.problem}"
    if exc.context:
        message += f" ({exc.context}"
        if exc.context_mark is not None:
            message += f" at line {exc.context_mark.line + 1}"
        message += ")"
    if "\\t" in str(exc.problem):
        message += "; indent with spaces, not tabs"
    return Problem("", message, exc.problem_mark.line + 1, exc.problem_mark.column + 1)


def _in_order(problems: list[Problem]) -> list[Problem]:
    # Top to bottom, as a person reads and fixes the file; problems without a position last.
    return sorted(problems, key=lambda p: (p.line is None, p.line or 0, p.column or 0))


def _duplicate_keys(node: yaml.Node, loc: Location = ()) -> Iterator[Problem]:
    # YAML and JSON loaders keep the last of two equal keys without a word; in a manifest it is a mistake.
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, yaml.Node] = {}
        for key, value in node.value:
            if not isinstance(key, yaml.ScalarNode):
                continue
            if key.value in seen:
                first = seen[key.value].start_mark.line + 1
                yield Problem(
                    dotted_path((*loc, key.value)),
                    f"duplicate key (also on line {first}); only the last one would count",
                    key.start_mark.line + 1,
                    key.start_mark.column + 1,
                )
            seen[key.value] = key
            yield from _duplicate_keys(value, (*loc, key.value))
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            yield from _duplicate_keys(item, (*loc, index))


def _problems(exc: ValidationError, root: yaml.Node | None) -> Iterator[Problem]:
    for error in exc.errors(include_url=False):
        if error["type"] == CONSISTENCY_ERROR:
            for loc, message in error.get("ctx", {})["problems"]:
                yield _located(tuple(loc), message, root)
        else:
            yield _located(error["loc"], _message(error), root)


def _located(loc: Location, message: str, root: yaml.Node | None) -> Problem:
    node = _node_at(loc, root)
    if node is None:
        return Problem(dotted_path(loc), message)
    return Problem(dotted_path(loc), message, node.start_mark.line + 1, node.start_mark.column + 1)


def _node_at(loc: Location, root: yaml.Node | None) -> yaml.Node | None:
    """The key (or list entry) at `loc`, or the deepest one that exists on the way to it."""
    node, found = root, root
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            pairs = [(k, v) for k, v in node.value if isinstance(k, yaml.ScalarNode) and k.value == str(part)]
            if not pairs:
                break
            found, node = pairs[-1]  # the last of duplicate keys is the one that was validated
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
            found = node = node.value[part]
        else:
            break
    return found


def _describe(value: object) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return f"{value!r} (a number)"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, datetime.date):
        return f"{value.isoformat()} (a date)"
    return type(value).__name__


def _number(value: object) -> str:
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


def _message(error: ErrorDetails) -> str:
    kind, value, ctx = error["type"], error["input"], error.get("ctx", {})
    got = _describe(value)
    if kind == "missing":
        return _MISSING
    if kind == "extra_forbidden":
        return _unknown_key(error["loc"])
    if kind == "string_type":
        hint = ""
        if isinstance(value, bool):
            hint = "; YAML reads yes, no, on, off, true and false as booleans: put the text in quotes"
        elif isinstance(value, int | float | datetime.date):
            hint = "; put the value in quotes to make it text"
        return f"expected text, got {got}{hint}"
    if kind == "bool_type":
        return f"expected true or false, got {got}"
    if kind in ("int_type", "int_from_float"):
        return f"expected a whole number, got {got}"
    if kind == "float_type":
        return f"expected a number, got {got}"
    if kind == "list_type":
        return f"expected a list, got {got}"
    if kind in ("dict_type", "model_type", "model_attributes_type"):
        return f"expected a mapping of keys, got {got}"
    if kind == "literal_error":
        return f"expected {str(ctx.get('expected', '')).replace(chr(39), chr(34))}, got {got}"
    if kind == "greater_than":
        return f"must be greater than {_number(ctx['gt'])}, got {got}"
    if kind == "greater_than_equal":
        return f"must be at least {_number(ctx['ge'])}, got {got}"
    if kind == "string_too_short":
        return "must not be empty"
    if kind == "too_short":
        return f"must list at least {ctx['min_length']}, got none" if not value else error["msg"]
    return error["msg"]


def _unknown_key(loc: Location) -> str:
    key = str(loc[-1])
    model = _model_at(loc[:-1])
    if model is None:
        return f'unknown key "{key}"'
    allowed = [field.alias or name for name, field in model.model_fields.items()]
    guess = next((a for a in allowed if a.lower() == key.lower() or a == to_camel(key)), None)
    guess = guess or next(iter(difflib.get_close_matches(key, allowed, n=1, cutoff=0.7)), None)
    if guess is not None:
        return f'unknown key "{key}"; did you mean "{guess}"?'
    return f'unknown key "{key}"; expected one of: {", ".join(allowed)}'


def _model_at(loc: Location) -> type[BaseModel] | None:
    """The model class whose keys are at `loc`, following field types through lists, dicts and Optional."""
    kind: Any = PluginManifest
    for part in loc:
        kind = _without_none(kind)
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            field = next((f for n, f in kind.model_fields.items() if (f.alias or n) == part), None)
            if field is None:
                return None
            kind = field.annotation
        elif get_origin(kind) in (list, dict):
            kind = get_args(kind)[-1]
        else:
            return None
    kind = _without_none(kind)
    return kind if isinstance(kind, type) and issubclass(kind, BaseModel) else None


def _without_none(kind: Any) -> Any:
    if get_origin(kind) in (Union, UnionType):
        options = [a for a in get_args(kind) if a is not type(None)]
        return options[0] if len(options) == 1 else kind
    return kind
