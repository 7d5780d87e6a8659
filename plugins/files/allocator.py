"""glibc's allocator set up for a process that streams files.

Every MiB that passes through a files plugin allocates a few buffers of about 1 MiB (the read or
received bytes, the protobuf message, its serialised copy). glibc hands out buffers above its mmap
threshold (128 KiB at start) as fresh mappings and unmaps them on free, so each one costs 256 page
faults and zeroed pages: measured on files-local, 500 faults and about 1.2 CPU seconds per GiB
downloaded, half of the plugin's time. glibc raises the threshold by itself after freeing a large
mapping, but only up to the size it saw, so whether a process ends up in the fast state depends on
its history. Starting at glibc's own upper bound (32 MiB) makes buffers come from the heap and be
reused from the first call. The heap gives back freed memory above 16 MiB at its top: twice the
threshold, as glibc's dynamic rule would set, kept enough freed memory in each thread's heap to raise
files-s3's peak by 20 MiB more over a 1 GiB stream (tests/conformance/files, the large stream test).
"""

from __future__ import annotations

import ctypes

__all__ = ["reuse_large_buffers"]

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 1024 * 1024
TRIM_THRESHOLD = 16 * 1024 * 1024


def reuse_large_buffers() -> bool:
    """Apply the settings above to this process; False where the C library is not glibc."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
