"""The failures a storage backend or the request checks raise, each mapped to one gRPC status by service.py."""

from __future__ import annotations

__all__ = ["BackendUnavailable", "InvalidArgument", "StorageError", "TransactionAborted", "VersionConflict"]


class StorageError(Exception):
    """Base of the errors a client is told about (anything else is logged and answered INTERNAL)."""


class InvalidArgument(StorageError):
    """Bad input; `field` names the request field at fault, e.g. "filters[1].value"."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field


class VersionConflict(StorageError):
    """A conditional write found another version than the one expected (ABORTED)."""

    def __init__(self, collection: str, record_id: str, expected: int, actual: int | None) -> None:
        found = "does not exist" if actual is None else f"is at version {actual}"
        want = "not to exist" if expected == 0 else f"version {expected}"
        super().__init__(f"version conflict: {collection}/{record_id} {found}, expected {want}")
        self.expected = expected
        self.actual = actual


class BackendUnavailable(StorageError):
    """The database cannot be reached or dropped the connection (UNAVAILABLE: retry later)."""


class TransactionAborted(StorageError):
    """The database gave up a transaction (deadlock, serialization failure): ABORTED, retry it."""
