"""Tracing in a plugin: its calls continue the caller's trace (the gateway's, or another plugin's).

`TracingInterceptor` (a grpc.aio server interceptor) opens one SERVER span per call, the child of
the W3C `traceparent` the call's metadata carries, and makes it the current span while the servicer
runs; `trace_context_hook()` (on the SDK's channels to other plugins, common.rpc.Channel) sends the
current span on as `traceparent`, so a call that fans out stays one trace.

`run_plugin` turns tracing on from OpenTelemetry's own environment variables, which operators
already set for every other traced process:

    OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, else OTEL_EXPORTER_OTLP_ENDPOINT   the OTLP/gRPC collector
                                                                            (unset: tracing off)
    OTEL_SERVICE_NAME           service.name of the spans (default: the manifest's plugin id)
    OTEL_BSP_SCHEDULE_DELAY     milliseconds between batches (default 5000)

Plugins that run inside another process (`upf run`) share that process's environment, so they take
their collector from its settings instead: `traced_by(endpoint)` gives each one a provider of its own,
its plugin id as service.name, before it starts.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

import grpc
from opentelemetry import context as otel_context
from opentelemetry.trace import SpanKind, Status, StatusCode, Tracer, get_current_span, set_span_in_context

from common.rpc.channel import MetadataHook
from common.tracing import extract_context, otlp_tracer_provider, trace_metadata

__all__ = [
    "Traced", "TracingInterceptor", "trace_context_hook", "traced_by", "tracer_provider_from_environment", "untraced",
]  # fmt: skip

# A servicer's own statuses that are the server's fault (OpenTelemetry's gRPC conventions).
_SERVER_ERRORS = frozenset(
    {
        grpc.StatusCode.UNKNOWN, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DATA_LOSS,
    }
)  # fmt: skip


if TYPE_CHECKING:  # generic in the stubs only
    from opentelemetry.sdk.trace import TracerProvider

    from plugins.sdk.plugin import Plugin

    _Server = grpc.aio.ServerInterceptor[Any, Any]
else:
    _Server = grpc.aio.ServerInterceptor


Traced = Callable[["Plugin"], "Plugin"]
"""Called with a plugin before it starts; gives it its tracer provider (or not), and returns it."""


def untraced(plugin: Plugin) -> Plugin:
    return plugin


def traced_by(endpoint: str | None, *, sample_ratio: float = 1.0, schedule_delay: float = 1.0) -> Traced:
    """For plugins run inside another process: each one's spans go to the OTLP/gRPC collector at `endpoint`
    (none: no spans) under its own plugin id, unless it was given a tracer provider already."""
    if endpoint is None:
        return untraced

    def traced(plugin: Plugin) -> Plugin:
        if plugin.tracer_provider is None:
            plugin.tracer_provider = otlp_tracer_provider(
                plugin.manifest.id, endpoint, instance_id=plugin.instance_id,
                sample_ratio=sample_ratio, schedule_delay=schedule_delay,
            )  # fmt: skip
        return plugin

    return traced


def tracer_provider_from_environment(
    plugin_id: str, instance_id: str, environ: Mapping[str, str] = os.environ
) -> TracerProvider | None:
    """The plugin's tracer provider, or None when no collector is configured (see the module docstring)."""
    endpoint = environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    if not endpoint:
        return None
    try:
        delay = float(environ.get("OTEL_BSP_SCHEDULE_DELAY", "5000")) / 1000
    except ValueError:
        delay = 5.0  # as OpenTelemetry's SDK does with a value it cannot read
    return otlp_tracer_provider(
        environ.get("OTEL_SERVICE_NAME") or plugin_id, endpoint, instance_id=instance_id, schedule_delay=delay
    )


class TracingInterceptor(_Server):
    """One SERVER span per call, continuing the trace in the call's `traceparent` metadata."""

    def __init__(self, tracer: Tracer) -> None:
        self.tracer = tracer

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        # grpc-stubs types handlers for the synchronous server; here the behaviours are coroutines.
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        path: str = handler_call_details.method
        metadata = handler_call_details.invocation_metadata or ()
        parent = extract_context((item[0], item[1]) for item in metadata)
        service, _, method = path[1:].partition("/")
        attributes = {"rpc.system": "grpc", "rpc.service": service, "rpc.method": method}
        tracer = self.tracer

        def traced(behavior: Any, streaming_response: bool) -> Any:
            if not (inspect.iscoroutinefunction(behavior) or inspect.isasyncgenfunction(behavior)):
                return behavior  # a synchronous servicer method: run as grpc runs it, without a span
            if streaming_response and inspect.isasyncgenfunction(behavior):

                async def generate(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
                    span = tracer.start_span(path[1:], context=parent, kind=SpanKind.SERVER, attributes=attributes)
                    token = otel_context.attach(set_span_in_context(span))
                    try:
                        async for response in behavior(request, context):
                            yield response
                    except BaseException:
                        _finish(span, context, failed=True)
                        raise
                    finally:
                        otel_context.detach(token)
                    _finish(span, context, failed=False)

                return generate

            async def call(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
                span = tracer.start_span(path[1:], context=parent, kind=SpanKind.SERVER, attributes=attributes)
                token = otel_context.attach(set_span_in_context(span))
                try:
                    response = await behavior(request, context)
                except BaseException:
                    _finish(span, context, failed=True)
                    raise
                finally:
                    otel_context.detach(token)
                _finish(span, context, failed=False)
                return response

            return call

        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                traced(handler.unary_unary, False), handler.request_deserializer, handler.response_serializer
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                traced(handler.unary_stream, True), handler.request_deserializer, handler.response_serializer
            )
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(
                traced(handler.stream_unary, False), handler.request_deserializer, handler.response_serializer
            )
        return grpc.stream_stream_rpc_method_handler(
            traced(handler.stream_stream, True), handler.request_deserializer, handler.response_serializer
        )


def _finish(span: Any, context: grpc.aio.ServicerContext[Any, Any], *, failed: bool) -> None:
    code = context.code()
    status = code if isinstance(code, grpc.StatusCode) else _status_of(code, failed)
    span.set_attribute("rpc.grpc.status_code", status.value[0])
    if status in _SERVER_ERRORS:
        span.set_status(Status(StatusCode.ERROR, status.name))
    span.end()


def _status_of(code: object, failed: bool) -> grpc.StatusCode:
    if isinstance(code, int):  # grpcio gives the number for a code set with set_code in some versions
        for status in grpc.StatusCode:
            if status.value[0] == code:
                return status
    return grpc.StatusCode.UNKNOWN if failed else grpc.StatusCode.OK


def _trace_context() -> list[tuple[str, str]]:
    span = get_current_span()
    if not span.get_span_context().is_valid:
        return []  # not inside a traced call
    return [(name.decode(), value.decode("latin-1")) for name, value in trace_metadata(span)]


def trace_context_hook() -> MetadataHook:
    """A common.rpc.Channel metadata hook that sends the current span (the call being served) as
    `traceparent`, so a call that fans out to other plugins stays one trace."""
    return _trace_context
