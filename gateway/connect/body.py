"""A request body read whole, up to a limit: Connect's and REST's calls both need the whole message
before they can be placed (the JSON form is parsed, and a retry sends it again)."""

from __future__ import annotations

from starlette.types import Receive

from gateway.errors import BadRequest

__all__ = ["ClientLeft", "read_body"]


class ClientLeft(Exception):
    """The client went away while the request body was being read."""


async def read_body(receive: Receive, limit: int) -> bytes:
    """The whole body, or BadRequest (with `connection: close`) once it passes `limit` bytes."""
    parts: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientLeft
        chunk: bytes = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BadRequest(f"the request body is over the limit of {limit} bytes", headers={"connection": "close"})
        parts.append(chunk)
        if not message.get("more_body", False):
            return b"".join(parts)
