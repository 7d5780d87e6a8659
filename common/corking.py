"""Writes made during one event-loop iteration leave in one send() system call.

A proxied or served gRPC call is HEADERS then DATA (then trailers); each write is a system call, and on
a busy process system calls cost more than the Python that makes them. Holding writes until the end of
the current loop iteration merges them without adding latency: nothing is waiting for the bytes sooner
than that.
"""

from __future__ import annotations

import asyncio
from typing import Any

__all__ = ["CorkedTransport"]


class CorkedTransport:
    __slots__ = ("_chunks", "_loop", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._chunks: list[bytes] = []

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not self._chunks:
            self._loop.call_soon(self.flush)
        self._chunks.append(bytes(data))

    def writelines(self, lines: Any) -> None:
        for data in lines:
            self.write(data)

    def flush(self) -> None:
        if self._chunks:
            data = self._chunks[0] if len(self._chunks) == 1 else b"".join(self._chunks)
            self._chunks.clear()
            if not self._transport.is_closing():
                self._transport.write(data)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def abort(self) -> None:
        self._chunks.clear()
        self._transport.abort()

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + sum(map(len, self._chunks))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)
