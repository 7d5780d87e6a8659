"""The gateway's tracer, from the `tracing` settings: OTLP over gRPC, or none (tracing off)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from opentelemetry.trace import Tracer

from common.tracing import otlp_tracer_provider
from gateway.settings import TracingSettings

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

__all__ = ["TraceExport", "gateway_tracer"]


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


class TraceExport:
    """The span exporter as one of the gateway's components (gateway/lifecycle.py): started first and so
    closed last, when every call has ended, sending the spans still queued."""

    def __init__(self, provider: TracerProvider) -> None:
        self.provider = provider

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        await asyncio.to_thread(self.provider.shutdown)  # blocks up to its export timeout

    def status(self) -> None:
        return None
