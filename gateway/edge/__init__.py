"""Limits on the HTTP port: request head sizes, slow clients, connections and WebSockets per client."""

from __future__ import annotations

from gateway.edge.config import EdgeConfig
from gateway.edge.guard import EdgeGuard
from gateway.edge.protocol import EdgeHttpToolsProtocol, EdgeWebSocketProtocol

__all__ = ["EdgeConfig", "EdgeGuard", "EdgeHttpToolsProtocol", "EdgeWebSocketProtocol"]
