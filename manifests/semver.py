"""npm-style semantic versions and ranges, with the meaning node-semver 7 gives them.

Manifests say which interface versions they need with the ranges npm users already know: `>=1.0.0`,
`^1.2`, `~1.2.3`, `1.x`, `1.2.3 - 2.3.4`, `>=1 <2 || >=3`. This module reads them as node-semver does
with its default options (neither `loose` nor `includePrerelease`), without a third-party dependency:

- A range is alternatives joined by `||`; an alternative is comparators separated by spaces, all of which
  must hold.
- Caret, tilde, x-ranges, `*` and hyphen ranges are rewritten into plain comparators by the same steps
  node-semver takes (`^1.2` -> `>=1.2.0 <2.0.0-0`), so `str(parse_range("^1.2"))` shows what a range
  means and equals node-semver's `validRange`.
- A prerelease such as `1.2.3-beta.1` satisfies an alternative only when one of its comparators names
  the same MAJOR.MINOR.PATCH with a prerelease: `>=1.2.3-alpha` lets `1.2.3-beta` in, `>=1.0.0` does not,
  so a consumer never gets an unstable provider it did not ask for.

Versions are strict SemVer 2.0.0 (`1.2.3`, `1.2.3-rc.1+build.5`). Unlike npm, `parse_version` takes no
leading `v` and no surrounding spaces, because a manifest's version should be written one way; inside a
range npm's `v1.2.3` and `=1.2.3` are accepted. Where node-semver answers `false` or `null` for input it
cannot read, these functions raise `SemverError`, so a typo is reported instead of matching nothing.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal, TypeVar

__all__ = [
    "VERSION_PATTERN",
    "Comparator",
    "Range",
    "SemverError",
    "Version",
    "max_satisfying",
    "parse_range",
    "parse_version",
    "satisfies",
]

MAX_LENGTH = 256  # node-semver's limit on a version string
MAX_SAFE_INTEGER = 2**53 - 1  # node-semver's limit on a version number (JavaScript's exact integers)

# The building blocks of node-semver's regular expressions (internal/re.js), strict flavour. Digits are
# spelled [0-9] because Python's \d also matches other scripts' digits.
_NUM = r"0|[1-9][0-9]*"
_NON_NUM = r"[0-9]*[a-zA-Z-][a-zA-Z0-9-]*"
_PRE_ID = rf"(?:{_NON_NUM}|{_NUM})"
_PRERELEASE = rf"(?:-({_PRE_ID}(?:\.{_PRE_ID})*))"
_BUILD = r"(?:\+([a-zA-Z0-9-]+(?:\.[a-zA-Z0-9-]+)*))"
_MAIN = rf"({_NUM})\.({_NUM})\.({_NUM})"
_FULL_PLAIN = rf"v?{_MAIN}{_PRERELEASE}?{_BUILD}?"
_LOOSE_PLAIN = (
    rf"[v=\s]*([0-9]+)\.([0-9]+)\.([0-9]+)(?:-?((?:{_NON_NUM}|[0-9]+)(?:\.(?:{_NON_NUM}|[0-9]+))*))?{_BUILD}?"
)
_GTLT = r"((?:<|>)?=?)"
_XR_ID = rf"{_NUM}|x|X|\*"
_XRANGE_PLAIN = rf"[v=\s]*({_XR_ID})(?:\.({_XR_ID})(?:\.({_XR_ID})(?:{_PRERELEASE})?{_BUILD}?)?)?"

#: A strict SemVer 2.0.0 version, for JSON Schema `pattern`s.
VERSION_PATTERN = rf"^{_MAIN}{_PRERELEASE}?{_BUILD}?$"

_VERSION = re.compile(_FULL_PLAIN)
_COMPARATOR = re.compile(rf"{_GTLT}\s*({_FULL_PLAIN})")
_XRANGE = re.compile(rf"{_GTLT}\s*{_XRANGE_PLAIN}")
_TILDE = re.compile(rf"(?:~>?){_XRANGE_PLAIN}")
_CARET = re.compile(rf"(?:\^){_XRANGE_PLAIN}")
_HYPHEN = re.compile(rf"\s*({_XRANGE_PLAIN})\s+-\s+({_XRANGE_PLAIN})\s*")
_COMPARATOR_TRIM = re.compile(rf"(\s*){_GTLT}\s*({_LOOSE_PLAIN}|{_XRANGE_PLAIN})")
_TILDE_TRIM = re.compile(r"(\s*)(?:~>?)\s+")
_CARET_TRIM = re.compile(r"(\s*)(?:\^)\s+")
_BUILD_ANYWHERE = re.compile(_BUILD)
_STAR = re.compile(r"(<|>)?=?\s*\*")
_GTE0 = re.compile(r"\s*>=\s*0\.0\.0\s*")
_SPACES = re.compile(r"\s+")

Operator = Literal["", "<", "<=", ">", ">="]
_OPERATORS: dict[str, Operator] = {"": "", "=": "", "<": "<", "<=": "<=", ">": ">", ">=": ">="}


class SemverError(ValueError):
    """A version or range cannot be read; the message quotes it and says what is expected."""


def _quote(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


@dataclass(frozen=True, eq=False, slots=True)
class Version:
    """A semantic version. Ordered by SemVer precedence; build metadata is kept but never compared."""

    major: int
    minor: int
    patch: int
    prerelease: tuple[int | str, ...] = ()
    build: tuple[str, ...] = ()

    @property
    def _key(self) -> tuple[int, int, int, int, tuple[tuple[int, int, str], ...]]:
        # A release sorts after its prereleases; numeric identifiers sort before alphanumeric ones, each
        # group in its own order; a longer list of identifiers wins when the shorter one is its prefix.
        ids = tuple((0, i, "") if isinstance(i, int) else (1, 0, i) for i in self.prerelease)
        return (self.major, self.minor, self.patch, 0 if self.prerelease else 1, ids)

    @property
    def core(self) -> tuple[int, int, int]:
        """MAJOR.MINOR.PATCH, the part a prerelease is matched on."""
        return (self.major, self.minor, self.patch)

    def __eq__(self, other: object) -> bool:
        return self._key == other._key if isinstance(other, Version) else NotImplemented

    def __hash__(self) -> int:
        return hash(self._key)

    def __lt__(self, other: Version) -> bool:
        return self._key < other._key

    def __le__(self, other: Version) -> bool:
        return self._key <= other._key

    def __gt__(self, other: Version) -> bool:
        return self._key > other._key

    def __ge__(self, other: Version) -> bool:
        return self._key >= other._key

    def __str__(self) -> str:
        text = f"{self.major}.{self.minor}.{self.patch}"
        if self.prerelease:
            text += "-" + ".".join(str(i) for i in self.prerelease)
        if self.build:
            text += "+" + ".".join(self.build)
        return text


def parse_version(text: str) -> Version:
    """Read a strict SemVer 2.0.0 version such as `1.2.3` or `2.0.0-rc.1+build.7`."""
    if not isinstance(text, str):
        raise SemverError(f"{text!r} is not a semantic version: expected text such as 1.0.0")
    if text.startswith("v") or text != text.strip():
        raise SemverError(f"{_quote(text)} is not a semantic version: write it as MAJOR.MINOR.PATCH, e.g. 1.0.0")
    version = _read_version(text)
    if version is None:
        raise SemverError(f"{_quote(text)} is not a semantic version: write it as MAJOR.MINOR.PATCH, e.g. 1.0.0")
    return version


def _read_version(text: str) -> Version | None:
    # node-semver's SemVer constructor: a leading "v" and surrounding spaces are allowed.
    if len(text) > MAX_LENGTH:
        return None
    match = _VERSION.fullmatch(text.strip())
    if match is None:
        return None
    major, minor, patch = (int(match.group(i)) for i in (1, 2, 3))
    if max(major, minor, patch) > MAX_SAFE_INTEGER:
        return None
    pre = match.group(4)
    build = match.group(5)
    return Version(
        major,
        minor,
        patch,
        tuple(int(i) if i.isdigit() else i for i in pre.split(".")) if pre else (),
        tuple(build.split(".")) if build else (),
    )


@dataclass(frozen=True, slots=True)
class Comparator:
    """One condition on a version: `>=1.2.0`, `<2.0.0-0`, `1.2.3` (equal), or any version (`version` None)."""

    operator: Operator
    version: Version | None

    def test(self, version: Version) -> bool:
        if self.version is None:
            return True
        op, bound = self.operator, self.version
        if op == "":
            return version == bound
        if op == "<":
            return version < bound
        if op == "<=":
            return version <= bound
        if op == ">":
            return version > bound
        return version >= bound

    def __str__(self) -> str:
        if self.version is None:
            return ""
        # node-semver prints a comparator's version without build metadata.
        return self.operator + str(Version(*self.version.core, self.version.prerelease))


_NULL = "<0.0.0-0"  # node-semver's comparator that nothing satisfies


@dataclass(frozen=True, slots=True)
class Range:
    """A parsed range: alternatives (`||`), each a tuple of comparators that must all hold."""

    raw: str
    alternatives: tuple[tuple[Comparator, ...], ...]

    def test(self, version: Version) -> bool:
        return any(_test_alternative(alt, version) for alt in self.alternatives)

    def __contains__(self, version: object) -> bool:
        if isinstance(version, str):
            version = parse_version(version)
        return isinstance(version, Version) and self.test(version)

    def __str__(self) -> str:
        # The same text as node-semver's `validRange(raw)`.
        return "||".join(" ".join(str(c) for c in alt) for alt in self.alternatives) or "*"


def _test_alternative(comparators: tuple[Comparator, ...], version: Version) -> bool:
    if not all(c.test(version) for c in comparators):
        return False
    if not version.prerelease:
        return True
    # A prerelease is only let in by a comparator that mentions a prerelease of the same x.y.z.
    return any(c.version is not None and c.version.prerelease and c.version.core == version.core for c in comparators)


def _is_x(part: str | None) -> bool:
    return not part or part.lower() == "x" or part == "*"


def _hyphen(match: re.Match[str]) -> str:
    # "1.2 - 3.4.5" -> ">=1.2.0 <=3.4.5"; a partial upper bound takes in all of its versions.
    start, fmaj, fmin, fpat = match.group(1, 2, 3, 4)
    end, tmaj, tmin, tpat, tpre = match.group(7, 8, 9, 10, 11)
    if _is_x(fmaj):
        low = ""
    elif _is_x(fmin):
        low = f">={fmaj}.0.0"
    elif _is_x(fpat):
        low = f">={fmaj}.{fmin}.0"
    else:
        low = f">={start}"
    if _is_x(tmaj):
        high = ""
    elif _is_x(tmin):
        high = f"<{int(tmaj) + 1}.0.0-0"
    elif _is_x(tpat):
        high = f"<{tmaj}.{int(tmin) + 1}.0-0"
    elif tpre:
        high = f"<={tmaj}.{tmin}.{tpat}-{tpre}"
    else:
        high = f"<={end}"
    return f"{low} {high}".strip()


def _caret(match: re.Match[str]) -> str:
    # ^1.2.3 allows changes that do not modify the left-most non-zero part.
    major, minor, patch, pre = match.group(1, 2, 3, 4)
    if _is_x(major):
        return ""
    if _is_x(minor):
        return f">={major}.0.0 <{int(major) + 1}.0.0-0"
    if _is_x(patch):
        if major == "0":
            return f">={major}.{minor}.0 <{major}.{int(minor) + 1}.0-0"
        return f">={major}.{minor}.0 <{int(major) + 1}.0.0-0"
    low = f">={major}.{minor}.{patch}" + (f"-{pre}" if pre else "")
    if major == "0":
        if minor == "0":
            return f"{low} <{major}.{minor}.{int(patch) + 1}-0"
        return f"{low} <{major}.{int(minor) + 1}.0-0"
    return f"{low} <{int(major) + 1}.0.0-0"


def _tilde(match: re.Match[str]) -> str:
    # ~1.2.3 allows patch-level changes; ~1 allows minor-level ones.
    major, minor, patch, pre = match.group(1, 2, 3, 4)
    if _is_x(major):
        return ""
    if _is_x(minor):
        return f">={major}.0.0 <{int(major) + 1}.0.0-0"
    if _is_x(patch):
        return f">={major}.{minor}.0 <{major}.{int(minor) + 1}.0-0"
    low = f">={major}.{minor}.{patch}" + (f"-{pre}" if pre else "")
    return f"{low} <{major}.{int(minor) + 1}.0-0"


def _xrange(match: re.Match[str]) -> str:
    whole = match.group(0)
    op, major, minor, patch = match.group(1, 2, 3, 4)
    if (_is_x(major) and not _is_x(minor)) or (_is_x(minor) and patch and not _is_x(patch)):
        return whole  # "x.1" or "1.x.3": left for the comparator check to reject
    x_major = _is_x(major)
    x_minor = x_major or _is_x(minor)
    any_x = x_minor or _is_x(patch)
    if op == "=" and any_x:
        op = ""
    if x_major:
        return "<0.0.0-0" if op in (">", "<") else "*"
    if op and any_x:
        maj, mino, pat = int(major), 0 if x_minor else int(minor), 0
        if op == ">":
            # >1 means >=2.0.0, >1.2 means >=1.3.0
            op = ">="
            if x_minor:
                maj, mino = maj + 1, 0
            else:
                mino += 1
        elif op == "<=":
            # <=1.2 takes in every 1.2.x, so it means <1.3.0-0
            op = "<"
            if x_minor:
                maj += 1
            else:
                mino += 1
        return f"{op}{maj}.{mino}.{pat}" + ("-0" if op == "<" else "")
    if x_minor:
        return f">={major}.0.0 <{int(major) + 1}.0.0-0"
    if any_x:
        return f">={major}.{minor}.0 <{major}.{int(minor) + 1}.0-0"
    return whole


def _each(text: str, pattern: re.Pattern[str], replace: Callable[[re.Match[str]], str]) -> str:
    parts = _SPACES.split(text.strip())
    return " ".join(replace(m) if (m := pattern.fullmatch(p)) else p for p in parts)


def _desugar(comp: str) -> str:
    # node-semver's parseComparator: carets, then tildes, then x-ranges, then stars become comparators.
    comp = _BUILD_ANYWHERE.sub("", comp, count=1)
    comp = _each(comp, _CARET, _caret)
    comp = _each(comp, _TILDE, _tilde)
    comp = " ".join(_xrange(m) if (m := _XRANGE.fullmatch(p.strip())) else p.strip() for p in _SPACES.split(comp))
    return _STAR.sub("", comp.strip(), count=1)


class _Unreadable(Exception):
    def __init__(self, part: str) -> None:
        self.part = part


def _comparator(text: str) -> Comparator:
    if text == "":
        return Comparator("", None)
    match = _COMPARATOR.fullmatch(text)
    version = _read_version(match.group(2)) if match else None
    if match is None or version is None:
        raise _Unreadable(text)
    return Comparator(_OPERATORS[match.group(1)], version)


def _alternative(text: str) -> tuple[Comparator, ...]:
    # node-semver's Range.parseRange, step by step and in its order, so that odd input (spaces after an
    # operator, a hyphen range next to other comparators) means here what it means to npm.
    text = _BUILD_ANYWHERE.sub("", text)
    if match := _HYPHEN.fullmatch(text):
        text = _hyphen(match)
    text = _COMPARATOR_TRIM.sub(lambda m: (m.group(1) or "") + (m.group(2) or "") + (m.group(3) or ""), text)
    text = _TILDE_TRIM.sub(lambda m: m.group(1) + "~", text)
    text = _CARET_TRIM.sub(lambda m: m.group(1) + "^", text)
    parts = _SPACES.split(" ".join(_desugar(c) for c in text.split(" ")))
    comparators: dict[str, Comparator] = {}  # by text, in order: node-semver drops repeats
    for part in parts:
        part = part.strip()
        comparator = _comparator("" if _GTE0.fullmatch(part) else part)
        comparators[str(comparator)] = comparator
    # A comparator that matches nothing makes the alternative match nothing, once every comparator has
    # been read: as in npm, text that cannot be read after it is still an error.
    if (null := comparators.get(_NULL)) is not None:
        return (null,)
    if len(comparators) > 1:
        comparators.pop("", None)  # "*" adds nothing next to other comparators
    return tuple(comparators.values())


def parse_range(text: str) -> Range:
    """Read an npm range (`^1.2`, `~1.2.3`, `>=1.0.0 <2`, `1.x || >=3`, `1.2.3 - 2.3.4`, `*`)."""
    if not isinstance(text, str):
        raise SemverError(f"{text!r} is not a semver range: expected text such as ^1.0.0")
    raw = _SPACES.sub(" ", text.strip())
    try:
        alternatives = [_alternative(part.strip()) for part in raw.split("||")]
    except _Unreadable as exc:
        detail = "" if exc.part == raw else f": cannot read {_quote(exc.part)}"
        raise SemverError(f"{_quote(text)} is not a semver range{detail}") from None
    if len(alternatives) > 1:
        # Alternatives that match nothing add nothing; an alternative that matches anything is the range.
        kept = [alt for alt in alternatives if str(alt[0]) != _NULL] or alternatives[:1]
        alternatives = next(([alt] for alt in kept if len(alt) == 1 and alt[0].version is None), kept)
    return Range(raw, tuple(alternatives))


def _as_version(version: str | Version) -> Version:
    return version if isinstance(version, Version) else parse_version(version)


def satisfies(version: str | Version, range_: str | Range) -> bool:
    """Whether `version` is in `range_`, as node-semver's `satisfies`; unreadable input raises SemverError."""
    spec = range_ if isinstance(range_, Range) else parse_range(range_)
    return spec.test(_as_version(version))


V = TypeVar("V", str, Version)


def max_satisfying(versions: Iterable[V], range_: str | Range) -> V | None:
    """The highest of `versions` in `range_` (returned as given), or None when none is."""
    spec = range_ if isinstance(range_, Range) else parse_range(range_)
    best: tuple[Version, V] | None = None
    for item in versions:
        version = _as_version(item)
        if spec.test(version) and (best is None or version > best[0]):
            best = (version, item)
    return None if best is None else best[1]
