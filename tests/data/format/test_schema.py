"""The token dtype of a vocabulary."""

from __future__ import annotations

from longnet_cli.data.format.schema import token_dtype


def test_token_dtype_selection():
    assert token_dtype(300) == "uint16"
    assert token_dtype(65536) == "uint16"
    assert token_dtype(65537) == "uint32"
    assert token_dtype(200_000) == "uint32"
