"""What the gateway tells about its calls: traces, access lines, latency.

calls.py           CallTelemetry (built once) and CallRecord (one per gRPC call, begun by admit())
upstream_trace.py  the trace context an attempt's upstream request carries
access_log.py      JSON access lines on the `upf.access` logger
latency.py         latency histograms per service, method and gRPC status, for /metrics
setup.py           the tracer from the `tracing` settings (OTLP over gRPC, off by default)
"""

from __future__ import annotations

from gateway.telemetry.calls import ACCESS_SLOT, AccessSlot, CallRecord, CallTelemetry

__all__ = ["ACCESS_SLOT", "AccessSlot", "CallRecord", "CallTelemetry"]
