"""HTTP/2 (RFC 9113) pieces shared by the upstream client and the native gRPC ingress server."""

from __future__ import annotations
