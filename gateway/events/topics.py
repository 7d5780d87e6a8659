"""Topics and topic patterns, in the NATS style, shared by every bus and the endpoint.

A topic is 1 to 16 dot-separated tokens of letters, digits, `_` and `-` (`order.created`,
`user.42.profile`), at most 255 characters. A pattern is a topic whose tokens may be wildcards:

  `*`  exactly one token            `order.*` matches `order.created`, not `order` nor `order.a.b`
  `>`  one or more tokens, last     `order.>` matches `order.created` and `order.a.b`, not `order`
  `#`  accepted for `>` (the MQTT/AMQP spelling), and normalized to it: the pattern the client gets
       back, the permission checked and the NATS filter all say `>`.

Permissions name patterns too (`events:order.*`), so `covers` decides whether a granted pattern
includes a requested one.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["MAX_TOKENS", "InvalidTopic", "Pattern", "check_topic", "common_filter", "parse_pattern"]

MAX_TOKENS = 16
MAX_LENGTH = 255
_TOKEN = re.compile(r"[A-Za-z0-9_-]+")


class InvalidTopic(ValueError):
    """Not a topic or pattern; the message says why."""


def _tokens(text: str, what: str) -> list[str]:
    if not isinstance(text, str) or not text:
        raise InvalidTopic(f"a {what} must be a non-empty string")
    if len(text) > MAX_LENGTH:
        raise InvalidTopic(f"{what} {text[:40]!r}... is longer than {MAX_LENGTH} characters")
    tokens = text.split(".")
    if len(tokens) > MAX_TOKENS:
        raise InvalidTopic(f"{what} {text!r} has more than {MAX_TOKENS} tokens")
    return tokens


def check_topic(topic: str) -> str:
    """`topic` itself, if it is a topic (no wildcards); otherwise InvalidTopic."""
    for token in _tokens(topic, "topic"):
        if not _TOKEN.fullmatch(token):
            raise InvalidTopic(
                f"topic {topic!r}: {token!r} is not a token (letters, digits, _ and -, between dots; no wildcards)"
            )
    return topic


@dataclass(frozen=True, slots=True)
class Pattern:
    text: str  # normalized: `#` written as `>`
    tokens: tuple[str, ...]

    @property
    def tail(self) -> bool:
        return self.tokens[-1] == ">"

    def matches(self, topic: str) -> bool:
        return self.matches_tokens(topic.split("."))

    def matches_tokens(self, topic: Sequence[str]) -> bool:
        tokens = self.tokens
        if self.tail:
            if len(topic) < len(tokens):  # `>` needs at least one token
                return False
            tokens = tokens[:-1]
        elif len(topic) != len(tokens):
            return False
        return all(mine == "*" or mine == theirs for mine, theirs in zip(tokens, topic, strict=False))

    def covers(self, other: Pattern) -> bool:
        """Whether every topic `other` matches is matched by this pattern too."""
        mine, theirs = self.tokens, other.tokens
        if self.tail:
            if len(theirs) < len(mine):
                return False
            mine = mine[:-1]
            theirs = theirs[: len(mine)]
        elif len(theirs) != len(mine) or other.tail:
            return False
        return all(a == "*" or (a == b and b != ">") for a, b in zip(mine, theirs, strict=True))


def parse_pattern(text: str) -> Pattern:
    tokens = _tokens(text, "topic pattern")
    for index, token in enumerate(tokens):
        if token in (">", "#"):
            if index != len(tokens) - 1:
                raise InvalidTopic(f"topic pattern {text!r}: {token!r} may only be the last token")
            tokens[index] = ">"
        elif token != "*" and not _TOKEN.fullmatch(token):
            raise InvalidTopic(
                f"topic pattern {text!r}: {token!r} is not a token "
                "(letters, digits, _ and -; or a whole-token wildcard * or >)"
            )
    return Pattern(".".join(tokens), tuple(tokens))


def common_filter(patterns: Sequence[Pattern]) -> str | None:
    """One pattern matching every topic the patterns match (a NATS consumer takes one filter).

    The longest run of literal tokens all patterns start with, then `>`; None when that is nothing
    (every topic). A single pattern is its own filter.
    """
    if len(patterns) == 1:
        return patterns[0].text
    prefix: list[str] = []
    shortest = min(len(pattern.tokens) for pattern in patterns)
    # Stop one token short of the shortest pattern: `>` needs a token to match after the prefix.
    for index in range(shortest - 1):
        token = patterns[0].tokens[index]
        if token in ("*", ">") or any(pattern.tokens[index] != token for pattern in patterns):
            break
        prefix.append(token)
    return ".".join([*prefix, ">"]) if prefix else None
