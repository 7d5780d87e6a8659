"""The gRPC wire vocabulary every entry point shares: message framing (framing.py), the request byte
stream checked frame by frame (request_frames.py), status lines (status.py), grpc-timeout
(timeout.py) and metadata between HTTP headers and gRPC (metadata.py).

Below the codecs (gateway/grpcweb/, gateway/ingress/, gateway/websocket/) and the upstream client,
importing neither: gRPC-Web and native gRPC speak the same words.
"""

from __future__ import annotations
