"""``longnet bench generate``: interleaved decode timing, cache figures counted independently."""

from __future__ import annotations

import json

import pytest

from longnet_cli.bench.generate import DECODE_ROUNDS, MODEL, bench_generate
from longnet_cli.cli import main


def _selected_keys(position: int) -> int:
    """Keys per layer a bounded cache holds after decoding positions [0, position): every
    head's selected positions of its current segment, counted one position at a time."""
    held = 0
    last = position - 1
    for w, r in zip(MODEL["segment_lengths"], MODEL["dilation_rates"]):
        segment_start = last // w * w
        for head in range(MODEL["heads"]):
            held += sum(1 for q in range(segment_start, last + 1) if (q % w) % r == head % r)
    return held


def test_bench_generate_rows_count_the_cache_and_the_dense_alternative():
    lengths, new_tokens = (100, 2_100), 3
    rows = bench_generate(lengths, new_tokens=new_tokens, device="cpu", progress=False)
    assert [row.prompt_tokens for row in rows] == list(lengths)
    per_token = 2 * MODEL["depth"] * MODEL["heads"] * MODEL["dim_head"] * 4  # float32 k and v
    for length, row in zip(lengths, rows):
        # the branches reach 1M: a prompt shorter than that prefills whole
        assert row.prefill_tokens == length
        assert row.decode_tokens == new_tokens
        assert row.decode_seconds > 0 and row.prefill_seconds > 0
        decoded = 1 + DECODE_ROUNDS * new_tokens  # the warm-up step, then every round
        assert row.cache_keys_per_layer == _selected_keys(length + decoded)
        assert row.dense_cache_bytes == per_token * length


def test_bench_generate_cli_json(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "generate", "--lengths", "50,70", "--new-tokens", "2", "--json"])
    assert exit_info.value.code == 0
    payload = json.loads(capsys.readouterr().out)
    assert [row["prompt_tokens"] for row in payload["rows"]] == [50, 70]
    assert payload["decode_vs_first"][0] == pytest.approx(1.0)
    assert payload["peak_rss_bytes"] > 0


def test_bench_generate_cli_rejects_bad_lengths(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "generate", "--lengths", "8Q", "--new-tokens", "2"])
    assert exit_info.value.code == 2
    assert "--lengths" in capsys.readouterr().err
