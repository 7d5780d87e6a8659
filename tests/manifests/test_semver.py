"""npm-style semver: a table of cases with the answers node-semver 7 gives.

The expected values were produced by node-semver 7.8.6 (`semver.satisfies`, `semver.validRange`,
`semver.maxSatisfying`, `semver.compare`) when this table was written; node is not needed to run it.
Where node-semver answers false or null for input it cannot read, ours raises SemverError instead.
"""

from __future__ import annotations

import pytest

from manifests.semver import SemverError, Version, max_satisfying, parse_range, parse_version, satisfies

# (range, version, node-semver's satisfies(version, range))
SATISFIES = [
    ("1.2.3", "1.2.3", True),
    ("1.2.3", "1.2.4", False),
    ("=1.2.3", "1.2.3", True),
    ("v1.2.3", "1.2.3", True),
    ("1.2.3", "1.2.3+build.1", True),
    (">=1.0.0", "1.0.0", True),
    (">=1.0.0", "0.9.9", False),
    (">1.0.0", "1.0.0", False),
    (">1.0.0", "1.0.1", True),
    ("<=2.0.0", "2.0.0", True),
    ("<=2.0.0", "2.0.1", False),
    ("<2.0.0", "1.9999.9999", True),
    ("<2.0.0", "2.0.0", False),
    (">= 1.0.0", "1.0.0", True),
    (">=1.0.0 <2.0.0", "1.5.0", True),
    (">=1.0.0 <2.0.0", "2.0.0", False),
    ("^1.2.3", "1.2.3", True),
    ("^1.2.3", "1.8.1", True),
    ("^1.2.3", "2.0.0", False),
    ("^1.2.3", "1.2.2", False),
    ("^0.2.3", "0.2.3", True),
    ("^0.2.3", "0.2.9", True),
    ("^0.2.3", "0.3.0", False),
    ("^0.0.3", "0.0.3", True),
    ("^0.0.3", "0.0.4", False),
    ("^1.2", "1.2.0", True),
    ("^1.2", "1.9.9", True),
    ("^1.2", "1.1.9", False),
    ("^1.2", "2.0.0", False),
    ("^1", "1.0.0", True),
    ("^1", "1.99.0", True),
    ("^1", "2.0.0", False),
    ("^0", "0.9.9", True),
    ("^0", "1.0.0", False),
    ("^0.1", "0.1.9", True),
    ("^0.1", "0.2.0", False),
    ("^1.x", "1.4.0", True),
    ("^x", "3.0.0", True),
    ("^ 1.2", "1.3.0", True),
    ("~1.2.3", "1.2.3", True),
    ("~1.2.3", "1.2.9", True),
    ("~1.2.3", "1.3.0", False),
    ("~1.2.3", "1.2.2", False),
    ("~1.2", "1.2.0", True),
    ("~1.2", "1.2.9", True),
    ("~1.2", "1.3.0", False),
    ("~1", "1.9.9", True),
    ("~1", "2.0.0", False),
    ("~0.0.1", "0.0.2", True),
    ("~0.0.1", "0.1.0", False),
    ("~>3.2.1", "3.2.2", True),
    ("~>3.2.1", "3.3.0", False),
    ("~ 1.0", "1.0.2", True),
    # With a patch, a spaced tilde means something other than the bare version.
    ("~ 1.0.2", "1.0.1", False),
    ("~ 1.0.2", "1.0.9", True),
    ("~ 1.0.2", "1.1.0", False),
    ("~*", "0.0.0", True),
    ("~x", "1.2.3", True),
    ("1.x", "1.0.0", True),
    ("1.x", "1.9.9", True),
    ("1.x", "2.0.0", False),
    ("1.2.x", "1.2.7", True),
    ("1.2.x", "1.3.0", False),
    ("*", "0.0.0", True),
    ("*", "99.0.0", True),
    ("x", "1.2.3", True),
    ("1", "1.5.0", True),
    ("1", "2.0.0", False),
    ("1.2", "1.2.5", True),
    ("1.2", "1.3.0", False),
    ("2.*.*", "2.1.3", True),
    ("1.X", "1.1.0", True),
    ("", "1.0.0", True),
    (">1", "1.9.9", False),
    (">1", "2.0.0", True),
    (">1.2", "1.2.9", False),
    (">1.2", "1.3.0", True),
    ("<=1.2", "1.2.9", True),
    ("<=1.2", "1.3.0", False),
    ("<=1", "1.9.9", True),
    ("<=1", "2.0.0", False),
    ("<1.2", "1.1.9", True),
    ("<1.2", "1.2.0", False),
    (">=1.2", "1.2.0", True),
    ("=1.x", "1.4.0", True),
    (">*", "1.0.0", False),
    ("<x", "0.0.0", False),
    ("1.2.3 - 2.3.4", "1.2.3", True),
    ("1.2.3 - 2.3.4", "2.3.4", True),
    ("1.2.3 - 2.3.4", "2.3.5", False),
    ("1.2.3 - 2.3.4", "1.2.2", False),
    ("1.2 - 2.3", "2.3.9", True),
    ("1.2 - 2.3", "2.4.0", False),
    ("1.2 - 2", "2.9.9", True),
    ("1.2 - 2", "3.0.0", False),
    ("1.2 - 2", "1.1.9", False),
    ("1 - 2", "0.9.9", False),
    ("1 - 2", "1.0.0", True),
    ("1 - 2", "2.9.9", True),
    ("1 - 2", "3.0.0", False),
    ("x - 1.0.0", "0.0.1", True),
    ("1.0.0 - x", "5.0.0", True),
    (">=1.2.3 <1.3.0", "1.2.9", True),
    (">=1.2.3 <1.3.0", "1.3.0", False),
    ("~1.2.1 >=1.2.3", "1.2.2", False),
    ("~1.2.1 >=1.2.3", "1.2.3", True),
    ("1.2.x || 2.x", "2.1.3", True),
    ("1.2.x || 2.x", "1.3.0", False),
    (">=0.2.3 || <0.0.1", "0.0.0", True),
    (">=0.2.3 || <0.0.1", "0.1.0", False),
    ("^1.0.0 || ^3.0.0", "2.0.0", False),
    ("^1.0.0 || ^3.0.0", "3.1.0", True),
    ("<1.0.0 >2.0.0", "1.5.0", False),
    (">=1.0.0 <x", "1.0.0", False),
    (">=1.0.0", "1.1.0-beta", False),
    ("*", "1.0.0-rc.1", False),
    ("^1.2.3", "1.2.3-beta", False),
    ("^1.2.3", "1.2.4-beta", False),
    ("<1.2.3", "1.2.3-beta", False),
    ("<=1.2.3", "1.2.3-beta", False),
    ("^1.2.3-alpha", "1.2.3-beta", True),
    ("^1.2.3-alpha", "1.2.3-alpha", True),
    ("^1.2.3-beta", "1.2.3-alpha", False),
    ("^1.2.3-alpha", "1.2.4-alpha", False),
    ("^1.2.3-alpha", "1.9.0", True),
    (">=1.2.3-alpha.1 <=1.2.3-alpha.10", "1.2.3-alpha.2", True),
    (">=1.2.3-alpha.1 <=1.2.3-alpha.10", "1.2.3-alpha.11", False),
    ("~1.2.3-beta.2", "1.2.3-beta.4", True),
    ("~1.2.3-beta.2", "1.2.4-beta.2", False),
    ("~1.2.3-beta.2", "1.2.9", True),
    ("1.2.3-beta", "1.2.3-beta", True),
    ("1.2.3-beta", "1.2.3", False),
    ("^1.0.0", "2.0.0-rc.1", False),
    ("1.x", "1.5.0-rc.1", False),
    ("1.2.3-pre+asdf - 2.4.3-pre+asdf", "1.2.3-pre.2", True),
    ("1.2.3-pre+asdf - 2.4.3-pre+asdf", "2.4.3-alpha", True),
    ("1.2.3 - 2.4.3", "2.4.3-alpha", False),
    ("^0.0.1-alpha", "0.0.1-beta", True),
    ("^0.0.1-alpha", "0.0.1", True),
    ("^0.0.1-alpha", "0.0.2-alpha", False),
    (">1.2.3-alpha <1.2.4", "1.2.3", True),
    ("1.0.0-rc.1 || 2.x", "1.0.0-rc.1", True),
    ("1.0.0-rc.1 || 2.x", "2.0.0-rc.1", False),
    ("<1.2.3-rc.1", "1.2.3-beta", True),
    (">1.2.3-rc.1", "1.2.3-rc.10", True),
    (">1.2.3-rc.1", "1.2.3-rc.1a", True),
]

DESUGARED = [
    ("1.2.3", "1.2.3"),
    ("=1.2.3", "1.2.3"),
    ("v1.2.3", "1.2.3"),
    (">= 1.2.3", ">=1.2.3"),
    (">=1.2.3 <2", ">=1.2.3 <2.0.0-0"),
    ("^1.2.3", ">=1.2.3 <2.0.0-0"),
    ("^0.2.3", ">=0.2.3 <0.3.0-0"),
    ("^0.0.3", ">=0.0.3 <0.0.4-0"),
    ("^1.2", ">=1.2.0 <2.0.0-0"),
    ("^1", ">=1.0.0 <2.0.0-0"),
    ("^0", "<1.0.0-0"),
    ("^0.1", ">=0.1.0 <0.2.0-0"),
    ("^0.0", "<0.1.0-0"),
    ("^1.2.3-beta.4", ">=1.2.3-beta.4 <2.0.0-0"),
    ("^0.0.1-beta", ">=0.0.1-beta <0.0.2-0"),
    ("^x", "*"),
    ("~1.2.3", ">=1.2.3 <1.3.0-0"),
    ("~1.2", ">=1.2.0 <1.3.0-0"),
    ("~1", ">=1.0.0 <2.0.0-0"),
    ("~0", "<1.0.0-0"),
    ("~1.2.3-beta.2", ">=1.2.3-beta.2 <1.3.0-0"),
    ("~>3.2.1", ">=3.2.1 <3.3.0-0"),
    ("~ 1.0", ">=1.0.0 <1.1.0-0"),
    ("~ 1.0.2", ">=1.0.2 <1.1.0-0"),
    ("~*", "*"),
    ("~x", "*"),
    ("1.x", ">=1.0.0 <2.0.0-0"),
    ("1.2.x", ">=1.2.0 <1.3.0-0"),
    ("1.X", ">=1.0.0 <2.0.0-0"),
    ("x", "*"),
    ("*", "*"),
    ("", "*"),
    ("1", ">=1.0.0 <2.0.0-0"),
    ("1.2", ">=1.2.0 <1.3.0-0"),
    ("2.*.*", ">=2.0.0 <3.0.0-0"),
    (">1", ">=2.0.0"),
    (">1.2", ">=1.3.0"),
    (">=1.2", ">=1.2.0"),
    ("<1.2", "<1.2.0-0"),
    ("<=1.2", "<1.3.0-0"),
    ("<=1", "<2.0.0-0"),
    ("<1", "<1.0.0-0"),
    ("=1.x", ">=1.0.0 <2.0.0-0"),
    (">*", "<0.0.0-0"),
    ("<x", "<0.0.0-0"),
    (">=0.0.0", "*"),
    ("1.2.3 - 2.3.4", ">=1.2.3 <=2.3.4"),
    ("1.2 - 2.3", ">=1.2.0 <2.4.0-0"),
    ("1.2 - 2", ">=1.2.0 <3.0.0-0"),
    ("1 - 2", ">=1.0.0 <3.0.0-0"),
    ("1 - 2.3.4", ">=1.0.0 <=2.3.4"),
    ("x - 1.0.0", "<=1.0.0"),
    ("1.0.0 - x", ">=1.0.0"),
    ("1.2.3-beta - 2.0.0-rc.1", ">=1.2.3-beta <=2.0.0-rc.1"),
    ("1.2.3+build - 2.3.4+build", ">=1.2.3 <=2.3.4"),
    (">=1 <2 || >=3", ">=1.0.0 <2.0.0-0||>=3.0.0"),
    ("1.2.x || 2.x", ">=1.2.0 <1.3.0-0||>=2.0.0 <3.0.0-0"),
    ("||", "*"),
    ("1.2.3 ||", "*"),
    ("^ 1.2 ^ 1", ">=1.2.0 <2.0.0-0 >=1.0.0"),
    (">=1.2.1 >=1.2.1", ">=1.2.1"),
    ("<x <* || >* 2.x", "<0.0.0-0"),
    # A comparator nothing satisfies empties its alternative, whatever stands next to it.
    (">=1.0.0 <x", "<0.0.0-0"),
    ("1.x || >=1.0.0 <x", ">=1.0.0 <2.0.0-0"),
    (">x 2.x || * || <x", "*"),
    ("  ^1.2   ||   ~2.3  ", ">=1.2.0 <2.0.0-0||>=2.3.0 <2.4.0-0"),
    ("^1.2.3+build", ">=1.2.3 <2.0.0-0"),
]

MAX = "9007199254740991"  # 2**53 - 1, node-semver's largest version number
TOO_BIG = "9007199254740992"
LONGEST = "1.2.3-" + "a" * 250  # 256 characters, node-semver's longest version
TOO_LONG = LONGEST + "a"

NOT_RANGES = [
    "^1.x.y",
    ">=1.0.0 <2.x.y",
    "1.2.3.4",
    "01.2.3",
    ">=1.0.0,<2.0.0",
    "latest",
    "1.x.3",
    "x.1",
    "1.2.3 -2.3.4",
    "- 1.2.3",
    ">>1",
    "=>1",
    "!1",
    "1.2.3-01",
    "^1.2.3-",
    "1.2.3+",
    f"{TOO_BIG}.0.0",
    f"0.{TOO_BIG}.0",
    f"0.0.{TOO_BIG}",
    TOO_LONG,
    # A comparator that matches nothing does not excuse what follows it: npm reads every one first.
    ">* latest",
    "<x 01",
    "1.x || <x nonsense",
]


# What node-semver cannot read (validRange gives null).
NOT_VERSIONS = [
    "1.2",
    "1.2.3.4",
    "01.2.3",
    "1.2.3-01",
    "1.2.3-",
    "1.2.3+",
    "1.2.3-a..b",
    "1.2.3-a_b",
    f"{TOO_BIG}.0.0",
    f"0.{TOO_BIG}.0",
    f"0.0.{TOO_BIG}",
    TOO_LONG,
    "",
]

# (versions, range, node-semver's maxSatisfying)
MAX_SATISFYING = [
    (["1.2.3", "1.2.4", "1.3.0", "2.0.0"], "^1.2", "1.3.0"),
    (["1.2.3", "1.2.4", "1.3.0", "2.0.0"], "~1.2", "1.2.4"),
    (["1.2.3", "1.2.4"], ">=2", None),
    (["1.0.0", "1.1.0-beta", "1.0.1"], "^1.0.0", "1.0.1"),
    (["1.0.0", "1.1.0-beta", "1.0.1"], ">=1.1.0-alpha", "1.1.0-beta"),
    (["2.0.0", "3.0.0", "1.0.0"], "*", "3.0.0"),
    (["1.2.3+a", "1.2.3+b"], "1.2.3", "1.2.3+a"),
]

# node-semver's ascending order (versions.sort(semver.compare)).
ORDERED = [
    "0.0.0-0",
    "1.0.0-1",
    "1.0.0-01a",
    "1.0.0-A",
    "1.0.0-a1",
    "1.0.0-alpha",
    "1.0.0-alpha.1",
    "1.0.0-alpha.1.2",
    "1.0.0-alpha.beta",
    "1.0.0-beta",
    "1.0.0-beta.2",
    "1.0.0-beta.11",
    "1.0.0-rc.1",
    "1.0.0",
    "1.9.0",
    "1.10.0",
    "2.0.0-0",
    "2.0.0",
]


@pytest.mark.parametrize(("range_", "version", "expected"), SATISFIES)
def test_satisfies_as_node_semver(range_: str, version: str, expected: bool) -> None:
    assert satisfies(version, range_) is expected


@pytest.mark.parametrize(("range_", "expected"), DESUGARED)
def test_ranges_rewrite_to_the_comparators_node_semver_shows(range_: str, expected: str) -> None:
    assert str(parse_range(range_)) == expected


@pytest.mark.parametrize("range_", NOT_RANGES)
def test_ranges_node_semver_rejects_are_errors(range_: str) -> None:
    with pytest.raises(SemverError, match="is not a semver range"):
        parse_range(range_)


@pytest.mark.parametrize("text", NOT_VERSIONS)
def test_versions_node_semver_rejects_are_errors(text: str) -> None:
    with pytest.raises(SemverError, match="is not a semantic version"):
        parse_version(text)


@pytest.mark.parametrize("text", [f"{MAX}.{MAX}.{MAX}", LONGEST])
def test_node_semvers_largest_numbers_and_longest_text_are_still_versions(text: str) -> None:
    assert str(parse_version(text)) == text
    assert str(parse_range(text)) == text


@pytest.mark.parametrize("text", ["v1.2.3", " 1.2.3", "1.2.3 "])
def test_a_version_is_written_one_way(text: str) -> None:
    # node-semver accepts these; a manifest's version is written exactly.
    with pytest.raises(SemverError) as caught:
        parse_version(text)
    assert str(caught.value) == f'"{text}" is not a semantic version: write it as MAJOR.MINOR.PATCH, e.g. 1.0.0'


def test_input_that_is_not_text_is_refused_as_such() -> None:
    # A YAML or JSON manifest can hold a number or null where a version belongs.
    with pytest.raises(SemverError) as caught:
        parse_version(123)  # type: ignore[arg-type]
    assert str(caught.value) == "123 is not a semantic version: expected text such as 1.0.0"
    with pytest.raises(SemverError) as caught:
        parse_range(None)  # type: ignore[arg-type]
    assert str(caught.value) == "None is not a semver range: expected text such as ^1.0.0"


@pytest.mark.parametrize(("versions", "range_", "expected"), MAX_SATISFYING)
def test_max_satisfying_as_node_semver(versions: list[str], range_: str, expected: str | None) -> None:
    assert max_satisfying(versions, range_) == expected


def test_precedence_as_node_semver() -> None:
    shuffled = sorted(ORDERED, key=lambda v: v[::-1])
    assert [str(v) for v in sorted(parse_version(v) for v in shuffled)] == ORDERED


def test_a_version_keeps_its_parts() -> None:
    version = parse_version("1.2.3-rc.1+build.5")
    assert version == Version(1, 2, 3, ("rc", 1), ("build", "5"))
    assert str(version) == "1.2.3-rc.1+build.5"
    assert version.core == (1, 2, 3)
    # Build metadata is not part of precedence.
    assert version == parse_version("1.2.3-rc.1")
    assert hash(version) == hash(parse_version("1.2.3-rc.1"))


def test_a_version_is_not_equal_to_its_text() -> None:
    text: object = "1.0.0"  # typed as object: mypy refuses to compare a Version with a str
    assert (parse_version("1.0.0") == text) is False
    assert parse_version("1.0.0") != text


def test_functions_take_parsed_values_too() -> None:
    spec = parse_range("^1.2 || ~3.0")
    assert satisfies(parse_version("3.0.9"), spec)
    assert "1.4.0" in spec
    assert "3.1.0" not in spec
    assert max_satisfying([parse_version("1.2.0"), parse_version("1.9.0")], spec) == parse_version("1.9.0")


def test_errors_quote_the_input_and_the_part_that_cannot_be_read() -> None:
    with pytest.raises(SemverError) as caught:
        parse_range("^1.x.y")
    assert str(caught.value) == '"^1.x.y" is not a semver range'
    with pytest.raises(SemverError) as caught:
        parse_range(">=1.0.0 <2.x.y")
    assert str(caught.value) == '">=1.0.0 <2.x.y" is not a semver range: cannot read "<2.x.y"'
    with pytest.raises(SemverError) as caught:
        parse_range("^1.0.0 ≥2")
    assert str(caught.value) == '"^1.0.0 ≥2" is not a semver range: cannot read "≥2"'  # as written, not as \u2265
    with pytest.raises(SemverError) as caught:
        satisfies("1.2", "^1.0.0")
    assert str(caught.value) == '"1.2" is not a semantic version: write it as MAJOR.MINOR.PATCH, e.g. 1.0.0'
