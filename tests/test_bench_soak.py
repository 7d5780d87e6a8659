"""bench/soak.py's verdict and table on canned samples (the soak itself starts `upf run` and takes
minutes, so it is not part of the suite): flat memory passes, growth after the warm-up fails, and
every error is listed by kind."""

from __future__ import annotations

from collections import Counter

from bench import soak


def result(rss: list[int], fds: list[int], errors: Counter[str] | None = None) -> soak.Result:
    recorder = soak.Recorder(window=10.0, started=0.0)
    for window in range(len(rss)):
        recorder.offered[window] = 100
        recorder.latencies[window] = [1.0] * 98 + [5.0, 50.0]
    recorder.errors = errors or Counter()
    samples = [
        soak.Sample(t=10.0 * (n + 1), rss_kib=r, fds=f, load1=1.0)
        for n, (r, f) in enumerate(zip(rss, fds, strict=True))
    ]
    return soak.Result(
        capacity=1000.0, capacity_p50=2.0, capacity_p99=9.0, rate=800.0, arrivals=100 * len(rss),
        recorder=recorder, samples=samples, events_published=10, events_expected=80, limiter_decisions=1e3,
        cpu_cores={"platform": 0.9, "generator": 0.8, "machine": 1.9},
    )  # fmt: skip


def test_flat_after_the_warm_up_passes_even_with_a_larger_first_minute() -> None:
    # 5 minutes at one sample per 10 s: the warm-up (first minute) may grow; after it, flat.
    rss = [50_000 + 1000 * n for n in range(6)] + [60_000, 60_500, 59_800] * 8
    fds = [40 + n for n in range(6)] + [70, 74, 68] * 8
    verdict = soak.verdict(result(rss, fds), seconds=300)
    assert [passed for _, passed, _ in verdict] == [True, True, True]


def test_growth_after_the_warm_up_fails_and_errors_are_listed_by_kind() -> None:
    rss = [60_000 + 200 * n for n in range(30)]  # +1.2 MiB a minute: 8% over the minutes compared
    fds = [70] * 30
    errors = Counter({"unary: HTTP 503": 3, "events: not delivered to a subscriber": 1})
    verdict = soak.verdict(result(rss, fds, errors), seconds=300)
    (_, errors_ok, listed), (_, rss_ok, rss_detail), (_, fds_ok, _) = verdict
    assert (errors_ok, rss_ok, fds_ok) == (False, False, True)
    assert listed == "4 (unary: HTTP 503: 3; events: not delivered to a subscriber: 1)"
    assert "+" in rss_detail


def test_the_table_has_a_row_per_minute_and_the_verdict() -> None:
    rss = [60_000] * 12
    text = soak.render(result(rss, [70] * 12), soak.parse_args(["--minutes", "2"]), 120, (0.5, 0.7))
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    assert rows[1].startswith("| 1 | 600 | 0 | 1.00 | 50.00 |")
    assert rows[2].startswith("| 2 | 600 | 0 |")
    assert rows[3].startswith("| all | 1,200 | 0 |")
    assert text.splitlines()[-3:] == [
        "PASS  errors = 0: 0 (none)",
        "PASS  RSS growth after warm-up < 5%: 58.6 -> 58.6 MiB (+0.0%)",
        "PASS  open fds growth after warm-up < 5%: 70 -> 70 (+0.0%)",
    ]
