"""glibc malloc settings for a daemon whose every cycle allocates and frees tens of MB.

By default glibc raises its mmap threshold each time a large block is freed, so the next
cycle's large blocks (exposition chunks, HTTP bodies) land in the heap, where the long-
lived inventory pins them and RSS only grows. A fixed threshold keeps large blocks in
their own mappings, returned to the system when freed, and a trim after each cycle hands
back the free heap pages. Elsewhere (musl, macOS) this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from typing import Any

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
THRESHOLD = 128 << 10  # glibc's default starting value, kept fixed


@functools.cache
def _libc_name() -> str:
    # find_library runs `ldconfig -p` (milliseconds): once per process, not per trim().
    return ctypes.util.find_library("c") or "libc.so.6"


def _libc() -> Any:
    try:
        libc = ctypes.CDLL(_libc_name())
        libc.mallopt, libc.malloc_trim  # noqa: B018  # glibc only
    except (OSError, AttributeError):
        return None
    return libc


def tune() -> bool:
    """Fixes the mmap and trim thresholds; True when glibc took them."""
    libc = _libc()
    if libc is None:
        return False
    return bool(libc.mallopt(M_MMAP_THRESHOLD, THRESHOLD) == 1
                and libc.mallopt(M_TRIM_THRESHOLD, THRESHOLD) == 1)


def trim() -> None:
    """Returns free heap memory to the system."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)
