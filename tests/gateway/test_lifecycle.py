"""The gateway's running parts: started in the order registered, closed in reverse, statuses for /readyz."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from gateway.lifecycle import Components


class Part:
    def __init__(self, name: str, log: list[str], *, fails: bool = False, status: Mapping[str, Any] | None = None):
        self.name, self.log, self.fails, self._status = name, log, fails, status

    async def start(self) -> None:
        if self.fails:
            raise OSError(f"{self.name} cannot start")
        self.log.append(f"start {self.name}")

    async def close(self) -> None:
        self.log.append(f"close {self.name}")

    def status(self) -> Mapping[str, Any] | None:
        return self._status


async def test_parts_start_in_order_and_close_in_reverse() -> None:
    log: list[str] = []
    components = Components()
    components.add("a", Part("a", log))
    components.add("off", None)  # a part switched off is not registered
    components.add("b", Part("b", log))
    async with components.running():
        assert log == ["start a", "start b"]
    assert log == ["start a", "start b", "close b", "close a"]
    assert components.names == ["a", "b"]


async def test_a_part_that_fails_to_start_closes_those_started_before_it() -> None:
    log: list[str] = []
    components = Components()
    components.add("a", Part("a", log))
    components.add("b", Part("b", log, fails=True))
    components.add("c", Part("c", log))
    with pytest.raises(OSError, match="b cannot start"):
        async with components.running():
            pass
    assert log == ["start a", "close a"]


def test_statuses_hold_the_parts_that_report_one_in_order() -> None:
    components = Components()
    components.add("registry", Part("registry", [], status={"reachable": False}))
    components.add("pool", Part("pool", []))
    components.add("auth", Part("auth", [], status={"issuer": "x"}))
    assert components.statuses() == {"registry": {"reachable": False}, "auth": {"issuer": "x"}}
    assert list(components.statuses()) == ["registry", "auth"]
