"""Limits on the HTTP port: request head sizes, slow clients, connections and WebSockets per client
(connections counted with the native gRPC port's)."""

from __future__ import annotations

from gateway.edge.config import EdgeConfig
from gateway.edge.guard import EdgeGuard, process_guard
from gateway.edge.protocol import EdgeHttpToolsProtocol, EdgeWebSocketProtocol

__all__ = ["EdgeConfig", "EdgeGuard", "EdgeHttpToolsProtocol", "EdgeWebSocketProtocol", "process_guard"]
