"""The process's allocator settings, which are the command line's to choose (not the library's)."""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter
_MMAP_THRESHOLD_BYTES = 1 << 20


def return_large_frees() -> None:
    """Have glibc give every freed block of 1 MiB or more back to the system at once.

    By default glibc raises that threshold after the first such free, and its per-thread arenas
    then keep the freed bodies of streamed chunks (a few MB each, on eight threads) resident:
    about 100 MB more peak memory in tests/test_memory.py. No library sets this; ctypes does.
    """
    if not sys.platform.startswith("linux"):
        return
    name = ctypes.util.find_library("c")
    if name is None:
        return
    try:
        libc = ctypes.CDLL(name)
        libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_BYTES)
    except (OSError, AttributeError):  # not glibc (musl has no mallopt): nothing to tune
        return
