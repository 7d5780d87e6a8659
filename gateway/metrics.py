"""GET /metrics: the gateway's traffic counters in the Prometheus text format.

Nothing here runs per call. The hot paths only bump plain integers they own (an endpoint's count per
gRPC status, the limiter's decision counters, the retry counters); a collector of this app's own
CollectorRegistry (never prometheus-client's global one: two apps in one process, as in tests, keep
their numbers apart) reads them when /metrics is scraped.

    upf_upstream_calls_total{service, code}                  calls ended, by gRPC status
    upf_ratelimit_decisions_total{policy, decision, source}  allowed / limited, by the store or the
                                                             local fallback bucket
    upf_ratelimit_fallbacks_total{policy, mode}              requests decided without the store
                                                             (failureMode open / closed / local)
    upf_ratelimit_store_errors_total{policy}                 store calls that failed
    upf_ratelimit_round_trips_total                          with leaseTokens: decisions that went to
                                                             Redis (the rest were spent from a lease)
    upf_breaker_transitions_total{service, replica, from, to}
    upf_breaker_state{service, replica}                      0 closed, 1 half-open, 2 open
    upf_retries_total{outcome}                               attempted / succeeded / budget_exhausted
    upf_call_duration_seconds{service, method, code}         histogram of gRPC calls, every entry point
                                                             (refused before routing: service "")
    upf_websockets_open{kind}                                grpc-websockets / upf-mux / events
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import grpc
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.responses import Response

from gateway.ratelimit.calls import CallLimiter
from gateway.telemetry.latency import LatencyHistograms
from gateway.upstream.breaker import BreakerState
from gateway.upstream.pool import UpstreamPool
from gateway.upstream.retry import Retries
from gateway.websocket.open_sockets import OpenSockets

__all__ = ["TrafficMetrics", "split_breaker_name"]

_CODE_NAMES = {code.value[0]: code.name for code in grpc.StatusCode}
_STATE_VALUES = {BreakerState.CLOSED: 0, BreakerState.HALF_OPEN: 1, BreakerState.OPEN: 2}


def split_breaker_name(name: str) -> tuple[str, str]:
    """A breaker's name, `service@replica`, as (service, replica)."""
    service, _, replica = name.partition("@")
    return service, replica


class TrafficMetrics(Collector):
    """The app's CollectorRegistry and the collector over the counters named in the module docstring."""

    def __init__(
        self,
        pool: UpstreamPool,
        limiter: CallLimiter | None,
        retries: Retries | None,
        *,
        latency: LatencyHistograms | None = None,
        sockets: OpenSockets | None = None,
    ) -> None:
        self.pool = pool
        self.limiter = limiter
        self.retries = retries
        self.latency = latency
        self.sockets = sockets
        # (breaker name, from, to) -> transitions; bumped by the app's breaker listener.
        self.transitions: Counter[tuple[str, str, str]] = Counter()
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)

    def breaker_moved(self, name: str, previous: BreakerState, state: BreakerState) -> None:
        self.transitions[(name, previous.value, state.value)] += 1

    async def endpoint(self, request: Request) -> Response:
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)

    def collect(self) -> Iterator[Metric]:
        calls = CounterMetricFamily(
            "upf_upstream_calls", "Upstream calls ended, by gRPC status.", labels=["service", "code"]
        )
        for service, codes in sorted(self.pool.codes.items()):
            for number, count in enumerate(codes):
                if count:
                    calls.add_metric([service, _CODE_NAMES.get(number, str(number))], count)
        yield calls
        yield from self._limiter()
        moves = CounterMetricFamily(
            "upf_breaker_transitions", "Circuit breaker state changes.", labels=["service", "replica", "from", "to"]
        )
        for (name, previous, state), count in sorted(self.transitions.items()):
            moves.add_metric([*split_breaker_name(name), previous, state], count)
        yield moves
        states = GaugeMetricFamily(
            "upf_breaker_state", "Circuit breaker state: 0 closed, 1 half-open, 2 open.", labels=["service", "replica"]
        )
        for service, route in sorted(self.pool.routes.items()):
            for endpoint in route.endpoints:
                if endpoint.breaker is not None:
                    states.add_metric([service, endpoint.address], _STATE_VALUES[endpoint.breaker.state])
        yield states
        retries = CounterMetricFamily("upf_retries", "Retries of refused idempotent calls.", labels=["outcome"])
        if self.retries is not None:
            retries.add_metric(["attempted"], self.retries.attempted)
            retries.add_metric(["succeeded"], self.retries.succeeded)
            retries.add_metric(["budget_exhausted"], self.retries.budget_exhausted)
        yield retries
        if self.latency is not None:
            latency = self.latency
            durations = HistogramMetricFamily(
                "upf_call_duration_seconds",
                "gRPC calls through the gateway, every entry point, by status.",
                labels=["service", "method", "code"],
            )
            for (service, method, code), series in sorted(latency.series.items()):
                durations.add_metric([service, method, code], latency.cumulative(series), series.sum)
            yield durations
        if self.sockets is not None:
            sockets = GaugeMetricFamily("upf_websockets_open", "Open WebSockets, by kind.", labels=["kind"])
            for kind, count in sorted(self.sockets.by_kind().items()):
                sockets.add_metric([kind], count)
            yield sockets

    def _limiter(self) -> Iterator[Metric]:
        decisions = CounterMetricFamily(
            "upf_ratelimit_decisions", "Rate-limit decisions.", labels=["policy", "decision", "source"]
        )
        fallbacks = CounterMetricFamily(
            "upf_ratelimit_fallbacks", "Requests decided without the store (failureMode).", labels=["policy", "mode"]
        )
        errors = CounterMetricFamily(
            "upf_ratelimit_store_errors", "Rate-limit store calls that failed.", labels=["policy"]
        )
        leases = self.limiter.leases if self.limiter is not None else None
        if leases is not None:
            trips = CounterMetricFamily(
                "upf_ratelimit_round_trips", "Rate-limit round trips to Redis that took a lease (leaseTokens)."
            )
            trips.add_metric([], leases.round_trips)
            yield trips
        if self.limiter is not None:
            for policy, counts in sorted(self.limiter.counters()):
                for decision, source, key in (
                    ("allowed", "store", "allowed"),
                    ("limited", "store", "rejected"),
                    ("allowed", "local", "local_allowed"),
                    ("limited", "local", "local_rejected"),
                ):
                    decisions.add_metric([policy, decision, source], counts[key])
                fallbacks.add_metric([policy, "open"], counts["failed_open"])
                fallbacks.add_metric([policy, "closed"], counts["failed_closed"])
                fallbacks.add_metric([policy, "local"], counts["local_allowed"] + counts["local_rejected"])
                errors.add_metric([policy], counts["store_errors"])
        yield decisions
        yield fallbacks
        yield errors
