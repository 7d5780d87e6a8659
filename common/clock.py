"""The one clock type: a function returning seconds, passed in so that tests can drive time.

Components take `clock: Clock = time.monotonic` (or `time.time` where the value is stored or shared
with other processes, as the registry's leases are) instead of reading the time themselves.
"""

from __future__ import annotations

from typing import Protocol

__all__ = ["Clock"]


class Clock(Protocol):
    def __call__(self) -> float: ...
