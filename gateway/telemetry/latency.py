"""Call latency per service, method and gRPC status, as Prometheus histogram buckets.

The hot path bumps plain integers (one bucket, the count, the sum); gateway/metrics.py reads them
when /metrics is scraped. Label sets are capped: method names come from clients, so a client that
makes up names would otherwise grow the table (and every scrape) without bound.
"""

from __future__ import annotations

from bisect import bisect_left

__all__ = ["BUCKETS", "LatencyHistograms"]

# Seconds: a gateway hop is sub-millisecond, a call through it milliseconds, a stream minutes.
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
MAX_SERIES = 2000  # (service, method, code) sets; beyond, calls count under method "other"


class _Series:
    __slots__ = ("buckets", "count", "sum")

    def __init__(self) -> None:
        self.buckets = [0] * (len(BUCKETS) + 1)  # the last one: above every bound (+Inf only)
        self.count = 0
        self.sum = 0.0


class LatencyHistograms:
    def __init__(self, max_series: int = MAX_SERIES) -> None:
        self.series: dict[tuple[str, str, str], _Series] = {}
        self.max_series = max_series

    def observe(self, service: str, method: str, code: str, seconds: float) -> None:
        key = (service, method, code)
        series = self.series.get(key)
        if series is None:
            if len(self.series) >= self.max_series:
                key = (service, "other", code)
                series = self.series.get(key)
            if series is None:
                series = self.series[key] = _Series()
        series.buckets[bisect_left(BUCKETS, seconds)] += 1
        series.count += 1
        series.sum += seconds

    def cumulative(self, series: _Series) -> list[tuple[str, float]]:
        """Prometheus' cumulative buckets, `le` as text, +Inf last."""
        total = 0
        out: list[tuple[str, float]] = []
        for bound, count in zip((*map(str, BUCKETS), "+Inf"), series.buckets, strict=True):
            total += count
            out.append((bound, total))
        return out
