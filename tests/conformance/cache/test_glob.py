"""The memory backend's glob matching agrees with Redis's own MATCH, key by key, pattern by pattern."""

from __future__ import annotations

import pytest

from plugins.cache.errors import InvalidArgument
from plugins.cache.glob import check_pattern, escape, matcher
from tests.support.redis_server import delete_prefix, new_prefix, shared_client

KEYS = ["a", "ab", "abc", "b", "a*b", "a?b", "a[b", "a]b", "a\\b", "x-y", "user:1", "user:10", "é", "a\nb", ""]
PATTERNS = [
    "*", "a*", "a?", "a??", "?", "[ab]", "[^a]", "[a-c]*", "[c-a]*", "a\\*b", "a\\?b", "a\\[b", "a]b",
    "a\\\\b", "user:[0-9]", "user:[0-9]*", "*b", "a*b*", "[!-]*", "x[-]y", "é", "a?b", "[\\]]*",
]  # fmt: skip


@pytest.mark.parametrize("pattern", PATTERNS)
def test_matches_what_redis_matches(pattern: str) -> None:
    client, prefix = shared_client(), new_prefix()
    try:
        for key in KEYS:
            client.set(f"{prefix}:{key}", b"1")
        found = {k.decode()[len(prefix) + 1 :] for k in client.scan_iter(match=escape(f"{prefix}:") + pattern)}
        assert {k for k in KEYS if matcher(check_pattern(pattern))(k)} == found
    finally:
        delete_prefix(client, prefix)
        client.close()


@pytest.mark.parametrize("pattern", ["", "[abc", "abc\\", "[]", "x" * 1025])
def test_refuses_what_redis_would_guess_at(pattern: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        check_pattern(pattern)
    assert caught.value.field == "pattern"
