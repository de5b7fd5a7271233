"""Process-wide settings for heavy commands (bench, train, eval)."""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def keep_freed_memory(threshold_bytes: int = 1 << 30) -> bool:
    """Ask glibc to keep large freed blocks instead of returning them to the OS.

    At long sequence lengths on a CPU, glibc unmaps every large temporary and page-faults it
    back on the next allocation; measured in DESIGN.md as a third of the time in the kernel.
    Returns False (and changes nothing) where glibc's mallopt is not available.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        ok_mmap = libc.mallopt(_M_MMAP_THRESHOLD, threshold_bytes)
        ok_trim = libc.mallopt(_M_TRIM_THRESHOLD, threshold_bytes)
    except (OSError, AttributeError):
        return False
    return bool(ok_mmap and ok_trim)
