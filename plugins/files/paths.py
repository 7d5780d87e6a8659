"""What a file path may be, checked once at the edge so that every backend sees only safe keys.

A path is relative to the caller's namespace: UTF-8 segments joined by "/", none of them empty, "." or
"..", no leading "/", no NUL or other control characters, at most `MAX_PATH_BYTES` bytes. Spaces and any
other unicode are fine. The same rules make a path safe as a file name under a directory (files-local)
and unambiguous as an object key (S3, GCS).
"""

from __future__ import annotations

import unicodedata

__all__ = ["MAX_PATH_BYTES", "MAX_SEGMENT_BYTES", "InvalidPath", "check_path", "check_prefix"]

# S3 and GCS allow 1024 bytes per key; the caller's namespace ("<plugin id>/") takes some of them.
MAX_PATH_BYTES = 900
# File systems (files-local) limit one name to 255 bytes; the same limit everywhere keeps paths portable.
MAX_SEGMENT_BYTES = 255


class InvalidPath(ValueError):
    """A path or prefix that breaks the rules; `field` names the request field, the message says why."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field


def check_path(field: str, path: str) -> str:
    """`path` if it names a file; InvalidPath otherwise."""
    if not path:
        raise InvalidPath(field, "is empty; name a file, e.g. reports/2026/summary.pdf")
    _check_text(field, path)
    if path.startswith("/"):
        raise InvalidPath(field, f"{path!r} is absolute; paths are relative to your namespace (drop the leading /)")
    if path.endswith("/"):
        raise InvalidPath(field, f"{path!r} ends with /; that names a folder, not a file")
    for segment in path.split("/"):
        if segment in ("", ".", ".."):
            shown = "an empty segment (//)" if not segment else f'a "{segment}" segment'
            raise InvalidPath(field, f"{path!r} has {shown}; paths cannot climb or skip folders")
        if len(segment.encode("utf-8")) > MAX_SEGMENT_BYTES:
            raise InvalidPath(field, f"a segment of {path!r} is longer than {MAX_SEGMENT_BYTES} UTF-8 bytes")
    return path


def check_prefix(field: str, prefix: str) -> str:
    """`prefix` if it can start paths ("" and "folder/" included); InvalidPath otherwise."""
    if not prefix:
        return prefix
    _check_text(field, prefix)
    if prefix.startswith("/"):
        raise InvalidPath(field, f"{prefix!r} is absolute; prefixes are relative to your namespace")
    # The last segment may be partial ("rep" matches "reports/"), but none may climb.
    for segment in prefix.split("/")[:-1]:
        if segment in ("", ".", ".."):
            raise InvalidPath(field, f"{prefix!r} has an empty, . or .. segment")
    if prefix.split("/")[-1] in (".", ".."):
        raise InvalidPath(field, f"{prefix!r} ends with a . or .. segment")
    return prefix


def _check_text(field: str, text: str) -> None:
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_PATH_BYTES:
        raise InvalidPath(field, f"is {size} bytes long; at most {MAX_PATH_BYTES} UTF-8 bytes")
    for position, char in enumerate(text):
        category = unicodedata.category(char)
        if category == "Cc" or category == "Cs":
            # Control characters (NUL, newlines, escapes) break logs, headers and file systems; lone
            # surrogates are not encodable.
            raise InvalidPath(field, f"has a control character (U+{ord(char):04X}) at position {position}")
