"""What can go wrong in a cache call, as domain errors; CacheService turns each into its gRPC status.

    CacheError                 code      message sent to the client as is
    ├── InvalidArgument        INVALID_ARGUMENT     "<field>: <what is wrong>"
    ├── FailedPrecondition     FAILED_PRECONDITION  not an integer, not the lock's holder
    ├── Unsupported            UNIMPLEMENTED        the backend cannot do it, and why
    └── BackendUnavailable     UNAVAILABLE          the backend cannot be reached (or the feed was cut)

Backends raise these and nothing else on purpose; anything else is a bug, logged by the service and
answered INTERNAL "internal error".
"""

from __future__ import annotations

from typing import ClassVar

import grpc

__all__ = ["BackendUnavailable", "CacheError", "FailedPrecondition", "InvalidArgument", "Unsupported"]


class CacheError(Exception):
    code: ClassVar[grpc.StatusCode] = grpc.StatusCode.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(CacheError):
    code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field


class FailedPrecondition(CacheError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class Unsupported(CacheError):
    code = grpc.StatusCode.UNIMPLEMENTED


class BackendUnavailable(CacheError):
    code = grpc.StatusCode.UNAVAILABLE
