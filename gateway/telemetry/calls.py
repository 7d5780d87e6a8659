"""CallTelemetry and CallRecord: what the call path records of each gRPC call, whatever its codec.

admit() begins a record, its steps (auth, rate limit) and run_attempts() its attempts; the record
ends once with the call's gRPC status. Ending it observes the latency histogram, ends the call's
span, and writes the call's access line (or leaves its fields to the HTTP request's line: the
access-log middleware puts a slot in the scope for them).

Trace context is the call path's: codecs never forward a client's `traceparent` / `tracestate`
(gateway/wire/metadata.py, gateway/ingress/call.py drop them) and each attempt sends the one this
record gives it (gateway/telemetry/upstream_trace.py):
- tracing off: the client's own, unchanged, so a trace started by a client still reaches the
  plugins (W3C propagation costs a header scan per call);
- tracing on: a span per call (SERVER, the child of the client's span when it sent one), per step,
  and per attempt (CLIENT, retries included), and the attempt span as the plugin's parent.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Callable, Iterable, MutableMapping
from contextvars import Token
from typing import Any

import grpc
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer, set_span_in_context

from common.http2.headers import encode_header
from common.tracing import TRACE_HEADERS, extract_context, trace_id_of, trace_metadata
from gateway.telemetry.access_log import request_id_from, write_line
from gateway.telemetry.latency import LatencyHistograms
from gateway.telemetry.upstream_trace import UPSTREAM_TRACE

__all__ = ["ACCESS_SLOT", "AccessSlot", "CallRecord", "CallTelemetry"]

# The access-log middleware's slot in an HTTP request's scope: the call's fields go on its line.
ACCESS_SLOT = "upf.access"

# gRPC statuses that are the server's fault: its span is an error (OpenTelemetry's gRPC conventions).
_SERVER_ERRORS = frozenset(
    {
        grpc.StatusCode.UNKNOWN, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DATA_LOSS,
    }
)  # fmt: skip

_NO_STEP = contextlib.nullcontext()
_MAX_TRACE_VALUE = 1024  # bytes; W3C asks that at least 512 characters of a tracestate be passed on
_PRINTABLE = re.compile(rb"^[\x20-\x7e]*$").match


class AccessSlot:
    """Set by the access-log middleware, filled by the call's record (one HTTP request, one call)."""

    __slots__ = ("fields", "request_id")

    def __init__(self, request_id: str) -> None:
        self.request_id = request_id
        self.fields: dict[str, Any] = {}


class CallTelemetry:
    """Built once by gateway/app.py; the default records latency only (tests that build a ProxyConfig).

    `tracer`: None with tracing off. `log`: write access lines for calls that are not HTTP requests.
    `client`: the client's address from a scope (behind trusted proxies).
    """

    def __init__(
        self,
        *,
        tracer: Tracer | None = None,
        log: bool = False,
        client: Callable[[MutableMapping[str, Any]], str | None] | None = None,
        latency: LatencyHistograms | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.tracer = tracer
        self.log = log
        self.client = client
        self.latency = latency if latency is not None else LatencyHistograms()
        self.clock = clock

    def begin(
        self,
        protocol: str,
        service: str,
        method: str,
        headers: Iterable[tuple[bytes, bytes]],
        scope: MutableMapping[str, Any],
    ) -> CallRecord:
        return CallRecord(self, protocol, service, method, headers, scope)


class CallRecord:
    __slots__ = (
        "_context", "_headers", "_parent", "_passed", "admitted", "code", "method", "protocol", "scope",
        "service", "slot", "span", "started", "telemetry",
    )  # fmt: skip

    def __init__(
        self,
        telemetry: CallTelemetry,
        protocol: str,
        service: str,
        method: str,
        headers: Iterable[tuple[bytes, bytes]],
        scope: MutableMapping[str, Any],
    ) -> None:
        self.telemetry = telemetry
        self.started = telemetry.clock()
        self.protocol = protocol
        self.service = service
        self.method = method
        self.scope = scope
        self._headers = headers  # the call's own (a WebSocket call's header block): its X-Request-ID
        self.slot: AccessSlot | None = scope.get(ACCESS_SLOT)
        self.admitted = False  # routed: the service exists (labels of refused calls are not the client's)
        self.code: grpc.StatusCode | None = None
        trace = [(name, value) for name, value in headers if name in TRACE_HEADERS]
        tracer = telemetry.tracer
        self.span: Span | None = None
        self._context = None
        self._passed = b""
        self._parent = None
        if trace:
            # Only values that can be metadata go on (printable ASCII, of a sane length); a
            # malformed trace context is the client's problem, never a reason to fail its call.
            trace = [(name, value) for name, value in trace if len(value) <= _MAX_TRACE_VALUE and _PRINTABLE(value)]
            self._parent = next((value for name, value in trace if name == b"traceparent"), None)
        if tracer is not None:
            self.span = tracer.start_span(
                f"{service}/{method}",
                context=extract_context(trace),
                kind=SpanKind.SERVER,
                attributes={"rpc.system": "grpc", "rpc.service": service, "rpc.method": method},
            )
            self._context = set_span_in_context(self.span)
        elif trace:
            self._passed = b"".join(encode_header(name, value) for name, value in trace)

    @property
    def trace_id(self) -> str | None:
        if self.span is not None:
            return trace_id_of(self.span)
        parent = self._parent  # passed through: the client's trace, if its traceparent is well formed
        if parent is not None and len(parent) == 55 and parent[2:3] == b"-":
            return parent[3:35].decode("latin-1")
        return None

    def step(self, name: str) -> contextlib.AbstractContextManager[Any]:
        """A span for one admission step (auth, rate limit); nothing with tracing off."""
        tracer = self.telemetry.tracer
        if tracer is None:
            return _NO_STEP
        return tracer.start_as_current_span(name, context=self._context, record_exception=False)

    def attempt(self, address: str, number: int) -> _Attempt | None:
        """Before one attempt on the replica at `address` (number 1, 2, ... of the call): sets the
        trace context its request carries. The attempts driver ends it with `attempt_ended`."""
        tracer = self.telemetry.tracer
        if tracer is None:
            # A plain method, not a context manager: this runs for every attempt of every call.
            return _Attempt(None, UPSTREAM_TRACE.set(self._passed)) if self._passed else None
        span = tracer.start_span(
            f"{self.service}/{self.method}",
            context=self._context,
            kind=SpanKind.CLIENT,
            attributes={
                "rpc.system": "grpc",
                "rpc.service": self.service,
                "rpc.method": self.method,
                "server.address": address,
                "upf.attempt": number,
            },
        )
        fields = b"".join(encode_header(name, value) for name, value in trace_metadata(span))
        return _Attempt(span, UPSTREAM_TRACE.set(fields))

    @staticmethod
    def attempt_ended(attempt: _Attempt | None, code: grpc.StatusCode) -> None:
        if attempt is None:
            return
        UPSTREAM_TRACE.reset(attempt.token)
        span = attempt.span
        if span is not None:
            span.set_attribute("rpc.grpc.status_code", code.value[0])
            if code is not grpc.StatusCode.OK:
                span.set_status(Status(StatusCode.ERROR, code.name))
            span.end()

    def end(self, code: grpc.StatusCode) -> None:
        """The call is over (the first end counts: a codec may end a call the path did not)."""
        if self.code is not None:
            return
        self.code = code
        telemetry = self.telemetry
        elapsed = telemetry.clock() - self.started
        if self.admitted:
            telemetry.latency.observe(self.service, self.method, code.name, elapsed)
        else:
            telemetry.latency.observe("", "", code.name, elapsed)  # refused before routing
        span = self.span
        if span is not None:
            span.set_attribute("rpc.grpc.status_code", code.value[0])
            if code in _SERVER_ERRORS:
                span.set_status(Status(StatusCode.ERROR, code.name))
            span.end()
        slot = self.slot
        if slot is not None:
            slot.fields.update(self._fields(code))
        elif telemetry.log:
            fields = {"requestId": request_id_from(self._headers), **self._fields(code)}
            fields["durationMs"] = round(elapsed * 1000, 3)
            write_line(fields)

    def _fields(self, code: grpc.StatusCode) -> dict[str, Any]:
        fields: dict[str, Any] = {"protocol": self.protocol}
        if (trace_id := self.trace_id) is not None:
            fields["traceId"] = trace_id
        if self.slot is None:
            client = self.telemetry.client
            peer = self.scope.get("client")
            fields["client"] = client(self.scope) if client is not None else (peer[0] if peer else None)
        fields.update(service=self.service, method=self.method, grpcStatus=code.name)
        return fields


class _Attempt:
    """One attempt's span (None with tracing off) and the trace context set for its request."""

    __slots__ = ("span", "token")

    def __init__(self, span: Span | None, token: Token[bytes]) -> None:
        self.span = span
        self.token = token
