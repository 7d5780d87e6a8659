"""The upstream side's name for the HTTP/2 client, which lives in common.http2.client.

Kept so that the modules that proxy calls (gRPC-Web, the native ingress, the WebSocket bridges)
import the client as before; new code imports common.http2.client.
"""

from __future__ import annotations

from common.http2.client import STREAM_WINDOW, ClientConnection, Http2Stream, NeverProcessed, StreamError, connect

__all__ = ["STREAM_WINDOW", "Http2Connection", "Http2Stream", "NeverProcessed", "StreamError", "connect"]

Http2Connection = ClientConnection
