"""Token counts written the human way: ``4096``, ``32K``, ``1M`` (K = 1024, M = 1024**2)."""

from __future__ import annotations

import re

_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3}
_LENGTH = re.compile(r"^\s*(\d+)\s*([KMG]?)\s*$", re.IGNORECASE)


def parse_length(text: str | int) -> int:
    """``"32K"`` -> 32768. Raises ValueError naming the text when it is not a positive length."""
    if isinstance(text, int) and not isinstance(text, bool):
        value = text
    else:
        match = _LENGTH.match(str(text))
        if not match:
            raise ValueError(f"{text!r} is not a length (examples: 4096, 32K, 1M)")
        value = int(match.group(1)) * _UNITS[match.group(2).upper()]
    if value < 1:
        raise ValueError(f"{text!r} is not a positive length")
    return value


def parse_lengths(text: str) -> list[int]:
    """A comma list (``4K,64K,1M``) or a doubling range (``4K..1M``) of lengths."""
    if ".." in text:
        low, high = (parse_length(part) for part in text.split("..", 1))
        if low > high:
            raise ValueError(f"range {text!r} runs backwards")
        out = []
        while low <= high:
            out.append(low)
            low *= 2
        return out
    return [parse_length(part) for part in text.split(",") if part.strip()]


def format_length(value: int) -> str:
    """32768 -> ``"32K"``; values that are not whole K or M stay plain."""
    for suffix, unit in (("G", 1024**3), ("M", 1024**2), ("K", 1024)):
        if value >= unit and value % unit == 0:
            return f"{value // unit}{suffix}"
    return str(value)
