"""``core.memory``: peak resident memory in bytes, whatever unit the platform reports."""

from __future__ import annotations

import resource
import sys
from pathlib import Path

import pytest

from longnet_cli.core import memory


def test_ru_maxrss_is_kib_on_linux_and_bytes_on_macos(monkeypatch):
    monkeypatch.setattr(sys, "platform", "linux")
    assert memory.maxrss_bytes(1000) == 1_024_000
    monkeypatch.setattr(sys, "platform", "darwin")
    assert memory.maxrss_bytes(1000) == 1000


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_peak_rss_matches_the_kernels_high_water_mark():
    ballast = bytearray(64 << 20)  # touch 64 MiB so the peak moves
    ballast[::4096] = b"\x01" * len(ballast[::4096])
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    high_water = int(fields["VmHWM"].split()[0]) * 1024  # kB, read independently of getrusage
    assert abs(memory.peak_rss_bytes() - high_water) <= 8 << 20
    assert memory.peak_rss_bytes() >= 64 << 20
    del ballast


def test_children_peak_reads_the_childrens_rusage():
    expected = memory.maxrss_bytes(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
    assert memory.children_peak_rss_bytes() == expected
