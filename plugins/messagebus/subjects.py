"""Subjects, filters and consumer names: what a caller may send, and how a filter matches.

A subject is dot-separated tokens of letters, digits, `-` and `_` (order.created). A filter may also
hold `*` (exactly one token) and, as its last token, `>` (one or more tokens): the NATS rules, which
every backend follows so that a plugin can swap buses without changing its subjects.

Subjects starting with `_INBOX.` carry replies (Request). They are publishable by anyone (that is how a
responder answers) but no wildcard reaches them: a plugin cannot overhear other plugins' replies by
subscribing to `>`.
"""

from __future__ import annotations

import re

__all__ = [
    "INBOX_PREFIX",
    "InvalidInput",
    "check_filter",
    "check_name",
    "check_subject",
    "consumer_name",
    "is_inbox",
    "matches",
]

INBOX_PREFIX = "_INBOX."
MAX_SUBJECT = 256
MAX_NAME = 64
_TOKEN = re.compile(r"^[A-Za-z0-9_-]+$")
_NAME = re.compile(r"^[A-Za-z0-9_-]+$")


class InvalidInput(ValueError):
    """A field the caller sent is not acceptable; the message names the field and says why."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field


def check_subject(subject: str, field: str = "subject") -> str:
    """A subject to publish on: tokens, no wildcards."""
    tokens = _tokens(subject, field)
    for token in tokens:
        if not _TOKEN.match(token):
            raise InvalidInput(field, f'"{subject}": token "{token}" may only hold letters, digits, "-" and "_"')
    return subject


def check_filter(subject: str, field: str = "subject") -> str:
    """A subject to subscribe to: tokens, `*`, and `>` as the last token."""
    tokens = _tokens(subject, field)
    for index, token in enumerate(tokens):
        if token == ">" and index != len(tokens) - 1:
            raise InvalidInput(field, f'"{subject}": ">" may only be the last token')
        if token not in ("*", ">") and not _TOKEN.match(token):
            raise InvalidInput(
                field, f'"{subject}": token "{token}" may only hold letters, digits, "-", "_", or be "*" or ">"'
            )
    if tokens[0] == "_INBOX" and (len(tokens) != 2 or tokens[1] in ("*", ">")):
        raise InvalidInput(field, "reply subjects (_INBOX.<id>) are subscribed to one at a time")
    return subject


def check_name(name: str, field: str) -> str:
    if len(name) > MAX_NAME or not _NAME.match(name):
        raise InvalidInput(field, f'"{name}" must be 1 to {MAX_NAME} letters, digits, "-" or "_"')
    return name


def _tokens(subject: str, field: str) -> list[str]:
    if not subject:
        raise InvalidInput(field, "empty; give a subject such as order.created")
    if len(subject) > MAX_SUBJECT:
        raise InvalidInput(field, f"longer than {MAX_SUBJECT} characters")
    tokens = subject.split(".")
    if any(not token for token in tokens):
        raise InvalidInput(field, f'"{subject}" has an empty token (a leading, trailing or double ".")')
    return tokens


def is_inbox(subject: str) -> bool:
    return subject.startswith(INBOX_PREFIX)


def matches(filter_: str, subject: str) -> bool:
    """Whether a (checked) filter matches a (checked) subject."""
    if is_inbox(subject) and filter_ != subject:
        return False
    want, have = filter_.split("."), subject.split(".")
    for index, token in enumerate(want):
        if token == ">":
            return len(have) > index
        if index >= len(have) or (token != "*" and token != have[index]):
            return False
    return len(have) == len(want)


def consumer_name(namespace: str, kind: str, name: str) -> str:
    """The backend's name of a caller's durable ("d") or queue group ("q").

    A plugin id holds no "_" (manifest rule), so the first "__" ends the namespace: two callers can never
    arrive at the same name, whatever they call their consumers.
    """
    return f"{namespace}__{kind}__{name}"
