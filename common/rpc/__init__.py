"""gRPC for the platform's Python processes, on the HTTP/2 core the gateway uses (common/http2)."""
