"""Access log lines: one JSON object per line, on the `upf.access` logger at INFO.

One line per HTTP request (gateway/middleware/access_log.py: REST, gRPC-Web and Connect calls)
and one per call that arrives another way (native gRPC, grpc-websockets, upf-mux.v1: written when
the call ends, gateway/telemetry/calls.py). Fields (absent when they do not apply):

    time         when the request ended, RFC 3339 UTC
    requestId    the client's X-Request-ID (printable, up to 128 characters), else one made here
    traceId      the call's trace (32 hex digits), when tracing is on or the client sent one
    protocol     http | grpc-web | connect | grpc | grpc-websockets | upf-mux
    client       the client's address, behind the trusted proxies (rateLimiting.trustedProxies)
    httpMethod, path, httpStatus   the HTTP request, for HTTP requests
    service, method, grpcStatus    the gRPC call, for calls
    durationMs   from the request's first byte handed to the gateway to its last answer

Never a header's value: a token, a cookie or an API key cannot end up in the log.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Iterable
from typing import Any

__all__ = ["ACCESS_LOGGER", "enable_access_log", "new_request_id", "request_id_from", "write_line"]

ACCESS_LOGGER = logging.getLogger("upf.access")


def new_request_id() -> str:
    return os.urandom(8).hex()


def request_id_from(headers: Iterable[tuple[bytes, bytes]]) -> str:
    """The client's X-Request-ID when it is a sane one, else a new id."""
    for name, value in headers:
        if name == b"x-request-id":
            if 0 < len(value) <= 128 and value.isascii() and value.decode("ascii").isprintable():
                return value.decode("ascii")
            break
    return new_request_id()


def write_line(fields: dict[str, Any]) -> None:
    """One access line; `fields` without the time, which is added here."""
    if not ACCESS_LOGGER.isEnabledFor(logging.INFO):
        return
    now = time.time()
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z"
    ACCESS_LOGGER.info("%s", json.dumps({"time": stamp, **fields}, separators=(",", ":")))


class _Line(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return record.getMessage()


def enable_access_log() -> None:
    """Access lines go to stdout as bare JSON (not in the process' log format), once per process."""
    if any(isinstance(handler.formatter, _Line) for handler in ACCESS_LOGGER.handlers):
        return
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(_Line())
    ACCESS_LOGGER.addHandler(handler)
    ACCESS_LOGGER.setLevel(logging.INFO)
    ACCESS_LOGGER.propagate = False
