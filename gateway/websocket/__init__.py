"""WebSocket endpoints: the grpc-websockets bridge for client-streaming and bidi calls from browsers."""

from __future__ import annotations

from gateway.websocket.grpcws import GrpcWebSocketEndpoint, WebSocketRegistry, max_websocket_message

__all__ = ["GrpcWebSocketEndpoint", "WebSocketRegistry", "max_websocket_message"]
