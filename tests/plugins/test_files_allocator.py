"""plugins/files/allocator.py: the standalone files plugins set glibc's thresholds, and nothing breaks elsewhere."""

from __future__ import annotations

import platform

from plugins.files.allocator import reuse_large_buffers


def test_the_thresholds_apply_under_glibc_only() -> None:
    assert reuse_large_buffers() is (platform.libc_ver()[0] == "glibc")
