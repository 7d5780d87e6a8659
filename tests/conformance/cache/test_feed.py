"""The in-process invalidation feed (memory, memcached): a watcher that falls behind is told, not stalled on."""

from __future__ import annotations

import contextlib

import pytest

from plugins.cache.backend import Change
from plugins.cache.errors import BackendUnavailable
from plugins.cache.feed import LocalFeed


async def test_a_watcher_that_falls_behind_is_told_changes_were_lost() -> None:
    feed = LocalFeed(queue_size=4)
    async with contextlib.aclosing(feed.watch("ns")) as slow, contextlib.aclosing(feed.watch("other")) as other:
        assert (await anext(slow)).ready
        assert (await anext(other)).ready
        for n in range(10):  # the writer never waits for the watcher
            feed.publish("ns", Change(keys=(f"k{n}",)))
        feed.publish("other", Change(keys=("elsewhere",)))
        assert [(await anext(slow)).keys for _ in range(3)] == [("k0",), ("k1",), ("k2",)]
        with pytest.raises(BackendUnavailable, match="fell behind"):
            await anext(slow)
        assert (await anext(other)).keys == ("elsewhere",)  # other namespaces' watchers are not affected
    assert not feed._watchers  # closed watches leave nothing behind
