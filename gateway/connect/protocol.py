"""What a Connect request says besides its message: codec, stream or not, deadline, compression, GET form.

POST, Content-Type application/json | application/proto            unary
POST, Content-Type application/connect+json | application/connect+proto   streaming (envelopes)
GET ?message=...&encoding=json|proto[&base64=1][&compression=identity|gzip][&connect=v1]
                                                                    unary, side-effect-free methods
Connect-Timeout-Ms: at most 10 digits                               the call's deadline
Connect-Protocol-Version: 1 (optional here, so that curl needs no extra header; another value is refused)
Content-Encoding (unary) / Connect-Content-Encoding (stream): identity or gzip, inflated with a bound
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass

from common import inflate as inflating
from gateway.connect.codec import Codec, codec_named
from gateway.errors import BadRequest, MessageTooLarge, UnsupportedEncoding

__all__ = ["ConnectRequest", "check_version", "get_request", "inflate", "is_connect", "post_kind", "timeout_seconds"]

_UNARY_PREFIX = "application/"
_STREAM_PREFIX = "application/connect+"
_ENCODINGS = ("identity", "gzip")


@dataclass(frozen=True, slots=True)
class ConnectRequest:
    codec: Codec
    streaming: bool


def _media_type(content_type: str) -> str:
    return content_type.split(";", 1)[0].strip().lower()


def post_kind(content_type: str) -> ConnectRequest | None:
    """The Connect form of a POST with this content type, or None when it is not Connect's."""
    media = _media_type(content_type)
    if media.startswith(_STREAM_PREFIX):
        codec = codec_named(media.removeprefix(_STREAM_PREFIX))
        return ConnectRequest(codec, streaming=True) if codec else None
    if media.startswith(_UNARY_PREFIX):
        codec = codec_named(media.removeprefix(_UNARY_PREFIX))
        return ConnectRequest(codec, streaming=False) if codec else None
    return None


def is_connect(content_type: str) -> bool:
    return post_kind(content_type) is not None


def check_version(headers: Mapping[str, str]) -> None:
    version = headers.get("connect-protocol-version")
    if version is not None and version.strip() != "1":
        raise BadRequest(f"Connect-Protocol-Version {version!r} is not supported (this gateway speaks 1)")


def timeout_seconds(value: str | None) -> float | None:
    if value is None:
        return None
    text = value.strip()
    if not text.isdigit() or len(text) > 10:
        raise BadRequest(f"Connect-Timeout-Ms {value!r} is not a number of at most 10 digits")
    return int(text) / 1000.0


def inflate(body: bytes, encoding: str | None, *, limit: int) -> bytes:
    """The body without its Content-Encoding; never more than `limit` bytes (a zip bomb stops there)."""
    name = (encoding or "identity").strip().lower()
    if name == "identity":
        return body
    if name != "gzip":
        raise UnsupportedEncoding(
            f"compression {name!r} is not supported", headers={"accept-encoding": ", ".join(_ENCODINGS)}
        )
    try:
        return inflating.inflate(body, gzip=True, limit=limit)
    except inflating.InflateError as exc:
        raise BadRequest(f"the gzip body is malformed: {exc}") from None
    except inflating.TooLarge:
        raise MessageTooLarge(f"the request inflates to more than {limit} bytes") from None


def get_request(query: Mapping[str, str], *, limit: int) -> tuple[Codec, bytes]:
    """The codec and message of a Connect GET (`?message=...&encoding=...`)."""
    encoding = query.get("encoding")
    if encoding is None:
        raise BadRequest("a Connect GET needs the 'encoding' query parameter (json or proto)")
    codec = codec_named(encoding)
    if codec is None:
        raise BadRequest(f"encoding {encoding!r} is not json or proto")
    if query.get("connect", "v1") != "v1":
        raise BadRequest(f"connect={query['connect']!r} is not supported (this gateway speaks v1)")
    message = query.get("message", "")
    if query.get("base64") == "1":
        try:
            raw = base64.b64decode(message + "=" * (-len(message) % 4), altchars=b"-_", validate=True)
        except (binascii.Error, ValueError):
            raise BadRequest("the 'message' query parameter is not URL-safe base64") from None
    else:
        raw = message.encode()
    return codec, inflate(raw, query.get("compression"), limit=limit)
