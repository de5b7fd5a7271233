"""``core.lengths``: the K and M suffixes and ranges every length option accepts."""

from __future__ import annotations

import pytest

from longnet_cli.core.lengths import format_length, parse_length, parse_lengths


def test_lengths():
    assert parse_length("4096") == 4096
    assert parse_length("32K") == 32768 and parse_length("1m") == 1 << 20
    assert parse_lengths("4K..32K") == [4096, 8192, 16384, 32768]
    assert parse_lengths("4K,1M") == [4096, 1 << 20]
    assert format_length(1 << 20) == "1M" and format_length(1000) == "1000"
    for bad in ("", "12Q", "-1", "0", "1.5K"):
        with pytest.raises(ValueError):
            parse_length(bad)
