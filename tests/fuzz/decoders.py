"""The decoders that read bytes from outside the gateway, each as one function of bytes, and what each
may raise: the error its caller turns into an answer to the client. Anything else (an IndexError, a
UnicodeDecodeError, a MemoryError) is a crash; a call that does not return soon is a hang.

Shared by the suite's short run (test_decoders.py) and `make fuzz` (a long run: python -m tests.fuzz).
"""

from __future__ import annotations

import asyncio
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import hpack

from common.auth.revocations import MemoryRevocations
from common.config import ConfigError, load_config
from common.http2.frames import PREFACE
from common.http2.headers import HeaderBlockDecoder
from common.http2.reader import FrameReader, ProtocolError
from gateway.auth.verify import TokenVerifier, TrustedIssuer
from gateway.errors import GatewayError
from gateway.grpcweb.text import TextDecoder
from gateway.settings import GatewaySettings
from gateway.websocket.grpcws import parse_header_block
from gateway.websocket.mux_frames import MuxProtocolError, parse_increment, parse_open
from gateway.wire.request_frames import RequestFrames
from manifests.load import ManifestError, parse_manifest

__all__ = ["TARGETS", "Target"]

MAX_MESSAGE = 64 * 1024


@dataclass(frozen=True)
class Target:
    name: str
    run: Callable[[bytes], object]
    allowed: tuple[type[BaseException], ...]


class _Frames:
    """A FrameHandler that takes whatever passed the reader's checks."""

    def on_data(self, stream_id: int, data: bytes, flow_length: int, end_stream: bool) -> None: ...
    def on_headers(self, stream_id: int, block: bytes, end_stream: bool) -> None: ...
    def on_rst_stream(self, stream_id: int, code: int) -> None: ...
    def on_settings(self, settings: list[tuple[int, int]]) -> None: ...
    def on_ping(self, payload: bytes) -> None: ...
    def on_goaway(self, last_stream_id: int, code: int, debug: bytes) -> None: ...
    def on_window_update(self, stream_id: int, increment: int) -> None: ...


def _grpc_web_frames(data: bytes) -> None:
    for encoding in (None, "gzip"):
        frames = RequestFrames(MAX_MESSAGE, encoding)
        half = len(data) // 2
        frames.feed(data[:half])  # cut anywhere, as a body arrives
        frames.feed(data[half:])
        frames.close()


def _grpc_web_text(data: bytes) -> None:
    decoder = TextDecoder()
    decoder.feed(data)
    decoder.close()


def _http2(server: bool) -> Callable[[bytes], None]:
    def read(data: bytes) -> None:
        reader = FrameReader(_Frames(), server=server, max_frame=16_384, max_header_block=65_536)
        reader.feed((PREFACE if server else b"") + data)

    return read


def _hpack(data: bytes) -> None:
    HeaderBlockDecoder().decode(data)


def _mux(data: bytes) -> None:
    view = memoryview(data)
    try:
        parse_open(view)
    finally:
        parse_increment(view[:4])


class _NoKeys:
    def get(self, kid: str) -> None:
        return None

    async def resolve(self, kid: str) -> None:
        return None


_VERIFIER = TokenVerifier(
    [TrustedIssuer("https://issuer.example", ("upf-api",), frozenset({"EdDSA"}), keys=_NoKeys())],
    revocations=MemoryRevocations(),
)


def _jwt(data: bytes) -> None:
    asyncio.run(_VERIFIER.verify(data.decode("latin-1")))


def _manifest(data: bytes) -> None:
    text = data.decode("utf-8", "replace")
    parse_manifest(text)
    parse_manifest(text, json_format=True)


def _config(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "gateway.yaml"
        path.write_bytes(data)
        load_config(GatewaySettings, path, environ={})


TARGETS = {
    target.name: target
    for target in (
        Target("grpc-web-frames", _grpc_web_frames, (GatewayError,)),
        Target("grpc-web-text", _grpc_web_text, (GatewayError,)),
        Target("http2-server-frames", _http2(server=True), (ProtocolError,)),
        Target("http2-client-frames", _http2(server=False), (ProtocolError,)),
        Target("hpack", _hpack, (hpack.HPACKError,)),
        Target("mux-frames", _mux, (MuxProtocolError,)),
        Target("grpc-websockets-headers", parse_header_block, (GatewayError,)),
        Target("jwt", _jwt, (GatewayError,)),
        Target("manifest", _manifest, (ManifestError,)),
        Target("config", _config, (ConfigError,)),
    )
}


# Peak memory one input may take: a decoder that allocates what a length field says (4 GiB from four
# bytes) goes far past it; the largest real one (a manifest through pydantic) stays under 2 MiB.
MEMORY_LIMIT = 16 * 1024 * 1024


def check(target: Target, data: bytes, *, limit: float = 2.0) -> None:
    """Run one input: an allowed error is fine; anything else, more than `limit` seconds, or more than
    MEMORY_LIMIT bytes allocated at once, fails."""
    started = time.monotonic()
    tracemalloc.start()
    try:
        target.run(data)
    except target.allowed:
        pass
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    spent = time.monotonic() - started
    if spent > limit:
        raise AssertionError(f"{target.name}: {spent:.2f} s for {len(data)} bytes (a hang?)")
    if peak > MEMORY_LIMIT:
        raise AssertionError(f"{target.name}: {peak} bytes allocated for an input of {len(data)} bytes")
