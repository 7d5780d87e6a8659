"""Signed URLs for files-local: HMAC-SHA256 over method, key, expiry and content type.

    signer = UrlSigner(secret, "http://127.0.0.1:9400/files")
    url = signer.sign("PUT", "orders-plugin/invoices/1.pdf", expires_at=..., content_type="application/pdf")
    signer.verify("PUT", key, query, content_type=...)  -> None, or UrlRefused with why

The URL names the key in its path and carries `X-Upf-Method`, `X-Upf-Expires` (Unix seconds),
`X-Upf-Content-Type` (PUT only) and `X-Upf-Signature` (hex). Every part that changes what the URL can
do is inside the signature, so a URL changed in any of them, used after its expiry, with another
method or for another path is refused. The base is configurable so that the gateway can later proxy
a path prefix (e.g. /files/) to the plugin's listener and hand out URLs on its own origin.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Mapping
from urllib.parse import quote, urlencode

__all__ = ["UrlRefused", "UrlSigner"]

_SCHEME = "UPF-HMAC-SHA256"


class UrlRefused(Exception):
    """The URL does not allow this request: the message says why (never which secret or signature)."""


class UrlSigner:
    def __init__(self, secret: bytes, base_url: str, *, clock: Callable[[], float]) -> None:
        if len(secret) < 16:
            raise ValueError("the signing secret must be at least 16 bytes")
        self._secret = secret
        self.base_url = base_url.rstrip("/")
        self._clock = clock

    def sign(self, method: str, key: str, *, expires_at: int, content_type: str) -> str:
        query = {"X-Upf-Method": method, "X-Upf-Expires": str(expires_at)}
        if method == "PUT":
            query["X-Upf-Content-Type"] = content_type
        query["X-Upf-Signature"] = self._signature(method, key, expires_at, query.get("X-Upf-Content-Type", ""))
        return f"{self.base_url}/{quote(key, safe='/')}?{urlencode(query)}"

    def verify(self, method: str, key: str, query: Mapping[str, str], *, content_type: str = "") -> None:
        signed_method = query.get("X-Upf-Method", "")
        expires = query.get("X-Upf-Expires", "")
        signed_type = query.get("X-Upf-Content-Type", "")
        signature = query.get("X-Upf-Signature", "")
        if not signature or not expires.isdigit():
            raise UrlRefused("not a signed URL (X-Upf-Signature and X-Upf-Expires are needed)")
        expected = self._signature(signed_method, key, int(expires), signed_type)
        # Checked before anything else is said about the URL, in constant time.
        if not hmac.compare_digest(expected, signature):
            raise UrlRefused("the signature does not match this URL")
        if signed_method != method:
            raise UrlRefused(f"this URL is for {signed_method}, not {method}")
        if int(expires) < self._clock():
            raise UrlRefused("this URL has expired")
        if method == "PUT" and content_type != signed_type:
            raise UrlRefused(f"this URL needs Content-Type: {signed_type}")

    def _signature(self, method: str, key: str, expires: int, content_type: str) -> str:
        text = "\n".join((_SCHEME, method, key, str(expires), content_type))
        return hmac.new(self._secret, text.encode("utf-8"), hashlib.sha256).hexdigest()
