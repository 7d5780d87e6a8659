"""One lifecycle for the gateway's running parts: start, close, status.

create_app registers each part once, one line each, in the order they start
(`components.add("registry", routes)`); the app's lifespan runs them through one AsyncExitStack
(`Components.running`): started in that order, closed in the reverse one, and a part that fails to
start closes the ones started before it. /readyz shows each part's `status` (gateway/health.py).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping
from typing import Any, Protocol

__all__ = ["Component", "Components"]


class Component(Protocol):
    """A part of the gateway with something to open at start-up or release at shutdown."""

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    def status(self) -> Mapping[str, Any] | None:
        """Its section of /readyz, or None for none. Information only: it never makes the gateway unready."""
        ...


class Components:
    """The parts of one app, in start order."""

    def __init__(self) -> None:
        self._parts: list[tuple[str, Component]] = []

    def add(self, name: str, component: Component | None) -> None:
        """`name` is its key in /readyz; None (a part that is switched off) is skipped."""
        if component is not None:
            self._parts.append((name, component))

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self._parts]

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            for _name, component in self._parts:
                await component.start()
                stack.push_async_callback(component.close)
            yield

    def statuses(self) -> dict[str, Any]:
        sections = {}
        for name, component in self._parts:
            status = component.status()
            if status is not None:
                sections[name] = status
        return sections
