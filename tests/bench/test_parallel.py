"""``longnet bench parallel``: the planned cost table and a real 2-process measurement."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from click.testing import CliRunner

from longnet_cli.bench.parallel import (
    PLANNED_LENGTHS,
    PLANNED_WORLDS,
    geometric_segments,
    plan_costs,
    plan_recipe,
)
from longnet_cli.cli import cli
from longnet_cli.model.config import LongNetConfig
from longnet_cli.model.parallel import plan_sequence


def test_planned_communication_does_not_grow_with_the_sequence():
    """Per-rank traffic depends on the segments and P, not on N (the segments here are fixed)."""
    config = LongNetConfig(
        num_tokens=100,
        dim=64,
        depth=2,
        dim_head=16,
        heads=4,
        segment_lengths=(1024, 4096),
        dilation_rates=(1, 4),
    )
    costs = [plan_costs(config, n, 8, parameters=1000) for n in (1 << 13, 1 << 14)]
    # 8K on 8 ranks: 1K chunks, the 4K segment spans 4 of them; 16K: 2K chunks, 2 of them.
    assert costs[0].communication_bytes > 0 and costs[1].communication_bytes > 0
    assert costs[1].communication_bytes <= costs[0].communication_bytes
    big = plan_costs(config, 1 << 20, 8, parameters=1000)
    assert big.communication_bytes == 0  # 128K chunks hold whole segments: all local
    assert big.memory_bytes > costs[1].memory_bytes  # memory does grow with the chunk


def test_geometric_segments_reach_the_sequence_with_2048_keys_per_branch():
    segments, rates = geometric_segments(1 << 20)
    assert segments == [2048, 8192, 32768, 131072, 524288, 1 << 20]
    assert [w // r for w, r in zip(segments, rates)] == [2048] * len(segments)


def test_plan_recipe_tables_every_length_and_world_for_both_segment_choices():
    root = Path(__file__).resolve().parents[2]
    parameters, tables = plan_recipe(root / "recipes" / "paper_base.yaml")
    assert parameters > 0 and list(tables) == ["as in the recipe", "segments up to N"]
    for costs in tables.values():
        expected = [(n, world) for n in PLANNED_LENGTHS for world in PLANNED_WORLDS]
        assert [(cost.seq_len, cost.world) for cost in costs] == expected


def test_measure_on_two_processes_reports_the_planned_traffic():
    args = [
        "bench",
        "parallel",
        "--processes",
        "2",
        "--length",
        "4K",
        "--segments",
        "1024,4096",
        "--rates",
        "1,4",
        "--no-table",
        "--json",
    ]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)["measured"]
    assert [r["rank"] for r in rows] == [0, 1]
    plan = plan_sequence(2048, 0, 2, 4, [1024, 4096], [1, 4], causal=True)
    expected = (plan.sent_tokens() + plan.received_tokens()) * 2 * 32 * 4  # k and v, fp32
    assert rows[0]["sent_bytes"] == expected > 0
    assert all(r["peak_rss_bytes"] > 0 and r["seconds"] > 0 for r in rows)
    assert torch.tensor([r["sent_bytes"] for r in rows]).sum() == sum(
        r["received_bytes"] for r in rows
    )
