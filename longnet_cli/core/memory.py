"""Peak resident memory, read one way everywhere (``ru_maxrss`` is KiB on Linux, bytes on macOS)."""

from __future__ import annotations

import resource
import sys


def maxrss_bytes(ru_maxrss: int) -> int:
    """``ru_maxrss`` of any ``rusage`` (this process's, or a child's from ``os.wait4``) in bytes."""
    return int(ru_maxrss if sys.platform == "darwin" else ru_maxrss * 1024)


def peak_rss_bytes() -> int:
    """This process's peak resident set size, in bytes."""
    return maxrss_bytes(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def children_peak_rss_bytes() -> int:
    """The largest peak resident set size of this process's waited-for children, in bytes."""
    return maxrss_bytes(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
