"""The processes' log format and level: one place for the CLI and for the gateway's worker processes."""

from __future__ import annotations

import logging

__all__ = ["configure_logging"]

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(level: str) -> None:
    """Root logging at `level` (a logLevel setting), unless this process has configured it already.

    Worker processes (gateway `workers` > 1) start afresh and call this themselves: without it their
    gateway.* loggers would print warnings through logging's last resort, without a format, and
    drop everything below.
    """
    logging.basicConfig(level=level.upper(), format=FORMAT)
