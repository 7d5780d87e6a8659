"""Writes made during one event-loop iteration leave in one send() system call.

A gRPC-Web answer is a status line and headers, then frames; a proxied call is HEADERS then DATA.
Each write is a system call, and on a busy gateway system calls cost more than the Python that
makes them. Holding writes until the end of the current loop iteration merges them without adding
latency: nothing is waiting for the bytes sooner than that.
"""

from __future__ import annotations

import asyncio

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from common.corking import CorkedTransport

__all__ = ["CorkedHttpToolsProtocol", "CorkedTransport"]


class CorkedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, writing through a CorkedTransport."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(CorkedTransport(transport, asyncio.get_running_loop()))  # type: ignore[arg-type]
