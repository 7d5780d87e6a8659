"""The trace context an upstream request carries: set per attempt by the call path, read by the client.

gateway/proxy/attempts.py sets it around each attempt (the attempt span's `traceparent`, or with
tracing off the client's own, passed through); gateway/upstream/client.py appends it to the request's
headers. A context variable, because an attempt's request is written by the codec's own code, deep
below the call path, in the same task: this is how OpenTelemetry's instrumentations find the current
span too. Outside an attempt (the gateway's own calls) it is empty.
"""

from __future__ import annotations

from contextvars import ContextVar

__all__ = ["UPSTREAM_TRACE"]

# HPACK-encoded traceparent / tracestate fields, or b"".
UPSTREAM_TRACE: ContextVar[bytes] = ContextVar("upstream_trace", default=b"")
