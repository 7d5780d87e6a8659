"""A short fuzzing run in the suite: each decoder of outside bytes (tests/fuzz/decoders.py) gets its kept
corpus (tests/fuzz/corpus/<target>/, every input that once found a fault or reaches a deep path) and a few
hundred inputs that hypothesis derives; none may crash or hang. `make fuzz` runs the long search."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from tests.fuzz.decoders import TARGETS, check

CORPUS = Path(__file__).parent / "corpus"
EXAMPLES = int(os.environ.get("UPF_FUZZ_EXAMPLES", "300"))


def _corpus() -> list[tuple[str, Path]]:
    return [(name, path) for name in TARGETS for path in sorted((CORPUS / name).glob("*")) if path.is_file()]


@pytest.mark.parametrize(("name", "path"), _corpus(), ids=lambda v: v.name if isinstance(v, Path) else v)
def test_the_kept_corpus_neither_crashes_nor_hangs(name: str, path: Path) -> None:
    check(TARGETS[name], path.read_bytes())


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_derived_inputs_neither_crash_nor_hang(name: str) -> None:
    target = TARGETS[name]
    seeds = [path.read_bytes() for path in sorted((CORPUS / name).glob("*")) if path.is_file()] or [b""]

    @settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(st.sampled_from(seeds), st.binary(max_size=512), st.integers(0, 4096), st.integers(0, 255))
    def run(seed: bytes, extra: bytes, at: int, byte: int) -> None:
        # Mutations of a kept input (a byte changed, bytes inserted) reach past the first checks; plain
        # random bytes would mostly stop at the first length or magic.
        cut = at % (len(seed) + 1)
        mutated = bytearray(seed[:cut] + extra + seed[cut:])
        if mutated:
            mutated[at % len(mutated)] = byte
        check(target, bytes(mutated))

    run()


def test_the_check_fails_on_a_crash_a_hang_and_an_allocation_by_length() -> None:
    from tests.fuzz.decoders import Target

    with pytest.raises(IndexError):
        check(Target("crash", lambda data: data[10], (ValueError,)), b"short")
    with pytest.raises(AssertionError, match="a hang"):
        check(Target("hang", lambda data: time.sleep(0.05), ()), b"", limit=0.01)
    with pytest.raises(AssertionError, match="allocated"):
        check(Target("by-length", lambda data: bytearray(int.from_bytes(data, "big")), ()), b"\x04\x00\x00\x00")
