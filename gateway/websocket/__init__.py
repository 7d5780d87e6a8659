"""WebSocket endpoints: grpc-websockets (one gRPC call per socket) and upf-mux.v1 (many calls on one socket)."""

from __future__ import annotations

from gateway.websocket.grpcws import GrpcWebSocketEndpoint, max_websocket_message
from gateway.websocket.open_sockets import OpenSockets

__all__ = ["GrpcWebSocketEndpoint", "OpenSockets", "max_websocket_message"]
