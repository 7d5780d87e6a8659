"""Base64 ("grpc-web-text") bodies in both directions.

A text body is a concatenation of independently padded base64 chunks (PROTOCOL-WEB.md: "the
implementation may send base64-encoded chunks with potential padding whenever the runtime needs to
flush"), so it is not one valid base64 document. Every 4-character quantum decodes on its own,
which is what the decoder below relies on. Requests split anywhere by the network are fine.
"""

from __future__ import annotations

import binascii

from gateway.errors import MalformedMessage

__all__ = ["TextDecoder", "encode_text"]


def encode_text(data: bytes) -> bytes:
    """One padded base64 chunk; each response frame is encoded on its own, so clients can decode it at once."""
    return binascii.b2a_base64(data, newline=False)


class TextDecoder:
    __slots__ = ("_pending",)

    def __init__(self) -> None:
        self._pending = b""

    def feed(self, data: bytes) -> bytes:
        data = self._pending + data
        usable = len(data) - len(data) % 4
        self._pending = data[usable:]
        return _decode_quanta(data[:usable])

    def close(self) -> bytes:
        """Decode what is left. An unpadded final chunk is accepted (liberal, unlike Envoy)."""
        rest, self._pending = self._pending, b""
        if not rest:
            return b""
        if len(rest) == 1:
            raise MalformedMessage("request body is not valid base64: it ends with a lone character")
        return _decode_quanta(rest + b"=" * (4 - len(rest)))


def _decode_quanta(data: bytes) -> bytes:
    if not data:
        return b""
    padding = data.find(b"=")
    if padding == -1 or padding >= len(data) - 2:
        return _strict(data)
    # Padding inside the body: a concatenation of padded chunks. Decode up to the end of each
    # quantum that holds padding, then go on from there.
    out = bytearray()
    start = 0
    while start < len(data):
        padding = data.find(b"=", start)
        end = len(data) if padding == -1 else (padding // 4 + 1) * 4
        if padding != -1 and padding % 4 < 2:
            # '=' can only end a quantum ("xx==", "xxx="). Python 3.11's strict mode lets a run of
            # '=' after a whole quantum ("AAAA====") through; it is not base64 all the same.
            raise MalformedMessage("request body is not valid base64: '=' in the first half of a quantum")
        out += _strict(data[start:end])
        start = end
    return bytes(out)


def _strict(data: bytes) -> bytes:
    try:
        return binascii.a2b_base64(data, strict_mode=True)
    except binascii.Error as exc:
        raise MalformedMessage(f"request body is not valid base64: {exc}") from None
