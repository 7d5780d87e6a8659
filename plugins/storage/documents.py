"""Checks on what a request names and carries: namespaces, collections, ids, JSON documents, sizes.

Names go into keys (and, for field paths, into the SQL text of the JSON path), so they are kept to a
small, safe alphabet here, once, before any backend sees them.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

from plugins.storage.errors import InvalidArgument

__all__ = ["Limits", "check_collection", "check_id", "check_namespace", "parse_document", "parse_json_value"]

_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,63}")
_CONTROL = re.compile(r"[\x00-\x1f]")  # checked per id: a BatchGet of 100 ids checks 100
_NAMESPACE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}")
MAX_ID_CHARS = 255
# MariaDB's JSON type refuses documents nested 32 levels deep; every backend refuses them alike.
MAX_DEPTH = 31


@dataclass(frozen=True, slots=True)
class Limits:
    """Sizes a request may reach; values stay under the gRPC message limit the server is given."""

    max_message_bytes: int = 4 * 1024 * 1024
    max_batch: int = 1000  # ids of a BatchGet, items of a BatchSet or of one StreamSet message
    max_page: int = 1000  # Query's limit
    default_page: int = 100
    max_filters: int = 32
    max_sort: int = 8
    max_in_values: int = 100
    # A Transaction or StreamSet open longer is rolled back (ABORTED): it holds locks (SQLite: the
    # write lock of every other writer), and a client without a deadline must not hold them forever.
    max_transaction_seconds: float = 60.0

    @property
    def max_document_bytes(self) -> int:
        # Room for the other fields of the message that carries the document.
        return self.max_message_bytes - 4096


def check_namespace(namespace: str) -> str:
    if not _NAMESPACE.fullmatch(namespace):
        raise InvalidArgument("caller", f"namespace {namespace!r} is not 1-128 letters, digits, '_', '.', ':', '-'")
    return namespace


def check_collection(name: str, field: str = "collection") -> str:
    if not name:
        raise InvalidArgument(field, "is empty")
    if not _NAME.fullmatch(name):
        raise InvalidArgument(
            field, f"{name[:80]!r} is not a collection name (a letter, then up to 63 letters, digits, '_', '.', '-')"
        )
    return name


def check_id(record_id: str, field: str = "id") -> str:
    if not record_id:
        raise InvalidArgument(field, "is empty")
    if len(record_id) > MAX_ID_CHARS:
        raise InvalidArgument(field, f"is {len(record_id)} characters long; the limit is {MAX_ID_CHARS}")
    if _CONTROL.search(record_id):
        raise InvalidArgument(field, "contains a control character")
    return record_id


def _finite(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise ValueError(f"the number {text[:40]} does not fit a 64-bit float")
    return number


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > 300:
        raise ValueError(f"the integer {text[:20]}... does not fit a 64-bit float")
    return int(text)


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_json_value(text: str, field: str) -> Any:
    """Parse JSON text strictly: no NaN/Infinity, no numbers a double cannot hold (every backend must
    compare them alike)."""
    try:
        value = json.loads(text, parse_float=_finite, parse_int=_bounded_int, parse_constant=_no_constants)
    except (ValueError, RecursionError) as exc:
        raise InvalidArgument(field, f"is not valid JSON ({exc})") from None
    _check_tree(value, field, escapes="\\u" in text)
    return value


def _check_tree(value: Any, field: str, *, escapes: bool) -> None:
    """Depth within MAX_DEPTH; and, when the text has \\u escapes, no U+0000 and no lone surrogate
    (PostgreSQL and MariaDB refuse both, so SQLite must too)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth > MAX_DEPTH:
                raise InvalidArgument(field, f"is nested more than {MAX_DEPTH} levels deep")
            children = [*item.keys(), *item.values()] if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children if escapes or isinstance(child, dict | list))
        elif escapes and isinstance(item, str):
            if "\x00" in item:
                raise InvalidArgument(field, "contains the character U+0000, which the backends cannot store")
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                raise InvalidArgument(field, "contains a lone UTF-16 surrogate (\\ud800-\\udfff)") from None


def parse_document(text: str, field: str, limits: Limits) -> None:
    """Check that `text` is a JSON object within the size limit (it is stored as sent)."""
    size = len(text.encode("utf-8"))
    if size > limits.max_document_bytes:
        raise InvalidArgument(field, f"is {size} bytes; the limit is {limits.max_document_bytes}")
    if not isinstance(parse_json_value(text, field), dict):
        raise InvalidArgument(field, "must be a JSON object")
