"""OpenTelemetry for the processes: a tracer provider that exports OTLP over gRPC, and W3C trace context.

The gateway (tracing.otlpEndpoint) and the plugin SDK (OTEL_EXPORTER_OTLP_ENDPOINT) both build their
provider here, so their spans carry the same resource shape and reach the same collector. Trace
context crosses processes as W3C `traceparent` / `tracestate` gRPC metadata
(https://www.w3.org/TR/trace-context/), read and written with OpenTelemetry's own propagator.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from opentelemetry.context import Context
from opentelemetry.trace import Span, format_span_id, format_trace_id
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

__all__ = ["TRACE_HEADERS", "extract_context", "otlp_tracer_provider", "trace_id_of", "trace_metadata"]

TRACE_HEADERS = (b"traceparent", b"tracestate")

_PROPAGATOR = TraceContextTextMapPropagator()
_EXPORT_TIMEOUT = 3.0  # seconds for one batch to reach the collector


def otlp_tracer_provider(
    service_name: str,
    endpoint: str,
    *,
    instance_id: str | None = None,
    sample_ratio: float = 1.0,
    schedule_delay: float = 1.0,
) -> TracerProvider:
    """A provider whose spans go in batches to the OTLP/gRPC collector at `endpoint` (host:port or a URL).

    Sampling follows the caller's decision when a trace came in with one (ParentBased); a trace the
    process starts is kept with probability `sample_ratio`. `schedule_delay`: seconds between exports.
    """
    # Imported here: the SDK and the exporter (grpc, protobuf modules) take a while to import, and a
    # process with tracing off never needs them.
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import SERVICE_INSTANCE_ID, SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    attributes: dict[str, str] = {SERVICE_NAME: service_name}
    if instance_id is not None:
        attributes[SERVICE_INSTANCE_ID] = instance_id
    provider = TracerProvider(
        sampler=ParentBased(TraceIdRatioBased(sample_ratio)),
        resource=Resource.create(attributes),
        shutdown_on_exit=False,  # shut down by the owner, after its last calls ended
    )
    secure = endpoint.startswith("https://")
    target = endpoint.removeprefix("https://").removeprefix("http://")
    # A collector that is down costs a process at most this long at exit (the last batch), not the
    # exporter's default 10 s; spans are dropped rather than held up.
    exporter = OTLPSpanExporter(endpoint=target, insecure=not secure, timeout=_EXPORT_TIMEOUT)
    provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=schedule_delay * 1000))
    return provider


def extract_context(metadata: Iterable[tuple[bytes, bytes]] | Iterable[tuple[str, str | bytes]]) -> Context:
    """The remote parent carried by `traceparent` / `tracestate` in `metadata` (an empty Context if none)."""
    carrier: dict[str, str] = {}
    for name, value in metadata:
        key = name.decode("latin-1") if isinstance(name, bytes) else name
        if key in ("traceparent", "tracestate"):
            carrier[key] = value.decode("latin-1") if isinstance(value, bytes) else value
    return _PROPAGATOR.extract(carrier) if carrier else Context()


def trace_metadata(span: Span) -> list[tuple[bytes, bytes]]:
    """`traceparent` (and `tracestate`, when there is one) naming `span` as the parent of the next hop."""
    context = span.get_span_context()
    flags = b"01" if context.trace_flags.sampled else b"00"
    parent = b"00-%s-%s-%s" % (
        format_trace_id(context.trace_id).encode(),
        format_span_id(context.span_id).encode(),
        flags,
    )
    fields = [(b"traceparent", parent)]
    if context.trace_state:
        fields.append((b"tracestate", context.trace_state.to_header().encode("latin-1")))
    return fields


def trace_id_of(span: Span) -> str | None:
    """The span's trace id as 32 hex digits, or None for a span that is not recorded anywhere."""
    context = span.get_span_context()
    return format_trace_id(context.trace_id) if context.is_valid else None
