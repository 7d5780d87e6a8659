"""The upstream side's name for HPACK encoding and decoding, which lives in common.http2.headers.

Kept so that the modules that write gRPC metadata (gRPC-Web, the ingress, auth) import it as before;
new code imports common.http2.headers.
"""

from __future__ import annotations

from common.http2.headers import HeaderBlockDecoder, HeaderList, RequestEncoder, encode_header

__all__ = ["HeaderBlockDecoder", "HeaderList", "RequestEncoder", "encode_header"]
