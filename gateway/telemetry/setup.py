"""The gateway's tracer, from the `tracing` settings: OTLP over gRPC, or none (tracing off)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from opentelemetry.trace import Tracer

from common.tracing import otlp_tracer_provider
from gateway.settings import TracingSettings

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

__all__ = ["gateway_tracer"]


def gateway_tracer(settings: TracingSettings) -> tuple[Tracer, TracerProvider] | None:
    """The tracer for the gateway's spans and its provider (to shut down last), or None when off."""
    if settings.otlp_endpoint is None:
        return None
    provider = otlp_tracer_provider(
        settings.service_name,
        settings.otlp_endpoint,
        sample_ratio=settings.sample_ratio,
        schedule_delay=settings.export_interval,
    )
    return provider.get_tracer("upf.gateway"), provider
