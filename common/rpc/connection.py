"""`RpcConnection`: a client connection of common.rpc.Server, one ServerConnection that also says when
its transport's buffer is full.

The client's HTTP/2 windows bound what a call may send, but grpcio's clients open them wide (BDP
probing takes a stream window to megabytes), and a client can leave its socket unread while they
are open: what the windows allow then piles up in the transport. So a call that streams also waits
for the transport to drain (asyncio's pause_writing / resume_writing, at its high-water mark)
before it takes its next message.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from common.http2.server import ServerConnection

if TYPE_CHECKING:
    from common.rpc.server import Server

__all__ = ["RpcConnection"]


class RpcConnection(ServerConnection["Server"]):
    def __init__(self, server: Server) -> None:
        super().__init__(server)
        self.drained: asyncio.Future[None] | None = None  # set while the transport's buffer is full

    def pause_writing(self) -> None:
        if self.drained is None:
            self.drained = self.loop.create_future()

    def resume_writing(self) -> None:
        drained, self.drained = self.drained, None
        if drained is not None and not drained.done():
            drained.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        self.resume_writing()
        super().connection_lost(exc)
