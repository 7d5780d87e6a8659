"""Client-side gRPC-Web helpers for byte-level tests: build request bodies, take responses apart."""

from __future__ import annotations

import base64
import struct
import uuid
from dataclasses import dataclass, field
from urllib.parse import unquote

import httpx

BINARY = "application/grpc-web+proto"
TEXT = "application/grpc-web-text"


def frame(payload: bytes, flags: int = 0) -> bytes:
    return struct.pack(">BI", flags, len(payload)) + payload


def split_frames(body: bytes) -> list[tuple[int, bytes]]:
    frames = []
    offset = 0
    while offset < len(body):
        assert len(body) - offset >= 5, f"dangling bytes after the last frame: {body[offset:]!r}"
        flags, length = struct.unpack_from(">BI", body, offset)
        payload = body[offset + 5 : offset + 5 + length]
        assert len(payload) == length, "frame shorter than its prefix"
        frames.append((flags, payload))
        offset += 5 + length
    return frames


def decode_text_body(body: bytes) -> bytes:
    """Concatenated, separately padded base64 chunks, decoded 4 characters at a time like clients do."""
    assert len(body) % 4 == 0, "text body is not made of whole base64 quanta"
    return b"".join(base64.b64decode(body[i : i + 4]) for i in range(0, len(body), 4))


def parse_trailer_block(block: bytes) -> list[tuple[str, str]]:
    text = block.decode("ascii")
    assert text.endswith("\r\n") or not text, f"trailer block does not end with CRLF: {text!r}"
    pairs = []
    for line in text.split("\r\n")[:-1]:
        key, _, value = line.partition(":")
        pairs.append((key.strip(), value.strip()))
    return pairs


@dataclass
class GrpcWebResponse:
    http_status: int
    headers: dict[str, str]
    messages: list[bytes] = field(default_factory=list)
    trailers: list[tuple[str, str]] = field(default_factory=list)
    trailers_only: bool = False

    @property
    def status(self) -> int:
        source = dict(self.trailers) if not self.trailers_only else self.headers
        return int(source["grpc-status"])

    @property
    def message(self) -> str:
        source = dict(self.trailers) if not self.trailers_only else self.headers
        return unquote(source.get("grpc-message", ""))

    def trailer(self, key: str) -> str | None:
        return dict(self.trailers).get(key) if not self.trailers_only else self.headers.get(key)


def parse_response(http_status: int, headers: dict[str, str], body: bytes, *, text: bool = False) -> GrpcWebResponse:
    """Check the response is well-formed gRPC-Web and take it apart; fail loudly when it is not."""
    raw = decode_text_body(body) if text else body
    response = GrpcWebResponse(http_status, headers)
    if not raw:
        assert "grpc-status" in headers, f"empty body without grpc-status header: {headers}"
        response.trailers_only = True
        return response
    frames = split_frames(raw)
    flags, last = frames[-1]
    assert flags == 0x80, "the last frame is not a trailer frame"
    for flags, payload in frames[:-1]:
        assert flags == 0, f"unexpected frame flags {flags:#x} before the trailer frame"
        response.messages.append(payload)
    response.trailers = parse_trailer_block(last)
    return response


RESPONSE_TYPE = "application/grpc-web+proto"


def new_key() -> str:
    """A fresh key for the probe service's Observe/Release bookkeeping."""
    return uuid.uuid4().hex


def assert_trailers_only(r: httpx.Response, code: int) -> str:
    """HTTP 200, status in headers, `content-length: 0`, an empty body; returns the decoded grpc-message."""
    assert r.status_code == 200
    assert r.headers.get_list("content-type") == [RESPONSE_TYPE]
    assert r.headers.get_list("grpc-status") == [str(code)], r.headers.get("grpc-message")
    assert r.headers["content-length"] == "0"
    assert "transfer-encoding" not in r.headers
    assert r.content == b""
    return unquote(r.headers.get("grpc-message", ""), errors="strict")
