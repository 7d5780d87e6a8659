"""google.api.http path templates: parse once, match request paths, bind variables to field paths.

    Template = "/" Segments [ ":" Verb ]        Segment  = "*" | "**" | LITERAL | Variable
    Segments = Segment { "/" Segment }          Variable = "{" FieldPath [ "=" Segments ] "}"

`{name}` is `{name=*}`: one segment. `**` matches the rest of the path (zero or more segments) and may
only come last. A variable's value is the path text it matched, percent-decoded; a single-segment
variable's value cannot hold a "/" (grpc-gateway and Envoy decode `%2F` in it; we do too, since the
bound text is a field value, not a route).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote

__all__ = ["PathTemplate", "TemplateError"]

_LITERAL = re.compile(r"[A-Za-z0-9._~!$&'()+,;=@%-]+")
_FIELD_PATH = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


class TemplateError(ValueError):
    """A template that does not follow the grammar; the message says where."""


@dataclass(frozen=True, slots=True)
class _Segment:
    kind: str  # "literal", "*" or "**"
    text: str = ""
    variable: str | None = None  # the field path this segment binds, or None
    first: bool = False  # the first segment of its variable (values of several segments are joined with "/")


@dataclass(frozen=True, slots=True)
class PathTemplate:
    source: str
    segments: tuple[_Segment, ...]
    verb: str | None

    @classmethod
    def parse(cls, source: str) -> PathTemplate:
        if not source.startswith("/"):
            raise TemplateError(f"{source!r}: a template starts with '/'")
        body, verb = source[1:], None
        # The verb is after the last ':' outside braces.
        depth, split = 0, -1
        for index, char in enumerate(body):
            depth += char == "{"
            depth -= char == "}"
            if char == ":" and depth == 0:
                split = index
        if split >= 0:
            body, verb = body[:split], body[split + 1 :]
            if not _LITERAL.fullmatch(verb):
                raise TemplateError(f"{source!r}: the verb {verb!r} is not a literal")
        segments = _parse_segments(source, body, variable=None)
        for index, segment in enumerate(segments):
            if segment.kind == "**" and index != len(segments) - 1:
                raise TemplateError(f"{source!r}: '**' can only be the last segment")
        names = [s.variable for s in segments if s.first]
        if len(names) != len(set(names)):
            raise TemplateError(f"{source!r}: a field is bound twice")
        return cls(source, tuple(segments), verb)

    @property
    def variables(self) -> list[str]:
        return [s.variable for s in self.segments if s.first and s.variable is not None]

    @property
    def literal_count(self) -> int:
        """How specific the template is: routes with more literal segments are tried first."""
        return sum(s.kind == "literal" for s in self.segments)

    def match(self, path: str) -> dict[str, str] | None:
        """The variables' values for this request path, or None when it does not match."""
        if not path.startswith("/"):
            return None
        rest = path[1:]
        if self.verb is not None:
            if not rest.endswith(":" + self.verb):
                return None
            rest = rest[: -len(self.verb) - 1]
        parts = rest.split("/") if rest else []
        values: dict[str, list[str]] = {}
        index = 0
        for segment in self.segments:
            if segment.kind == "**":
                taken, index = parts[index:], len(parts)
            else:
                if index >= len(parts) or parts[index] == "":
                    return None
                taken, index = [parts[index]], index + 1
                if segment.kind == "literal" and taken[0] != segment.text:
                    return None
            if segment.variable is not None:
                values.setdefault(segment.variable, []).extend(taken)
        if index != len(parts):
            return None
        return {name: "/".join(unquote(part) for part in taken) for name, taken in values.items()}


def _parse_segments(source: str, body: str, variable: str | None) -> list[_Segment]:
    segments: list[_Segment] = []
    for part in _split_outside_braces(source, body):
        if part.startswith("{"):
            if variable is not None:
                raise TemplateError(f"{source!r}: variables cannot nest")
            if not part.endswith("}"):
                raise TemplateError(f"{source!r}: {part!r} does not close its '{{'")
            inner = part[1:-1]
            name, _, pattern = inner.partition("=")
            if not _FIELD_PATH.fullmatch(name):
                raise TemplateError(f"{source!r}: {name!r} is not a field path")
            bound = _parse_segments(source, pattern or "*", variable=name)
            segments.extend(_Segment(s.kind, s.text, variable=name, first=(i == 0)) for i, s in enumerate(bound))
        elif part in ("*", "**"):
            segments.append(_Segment(part, variable=variable))
        elif _LITERAL.fullmatch(part):
            segments.append(_Segment("literal", part, variable=variable))
        else:
            raise TemplateError(f"{source!r}: {part!r} is not a segment")
    return segments


def _split_outside_braces(source: str, body: str) -> list[str]:
    parts, depth, current = [], 0, ""
    for char in body:
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth < 0:
                raise TemplateError(f"{source!r}: '}}' without '{{'")
        if char == "/" and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    if depth != 0:
        raise TemplateError(f"{source!r}: '{{' without '}}'")
    parts.append(current)
    if any(part == "" for part in parts):
        raise TemplateError(f"{source!r}: an empty segment")
    return parts
