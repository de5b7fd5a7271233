"""``longnet bench parallel``: the planned cost table and a real 2-process measurement."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from click.testing import CliRunner

from longnet_cli.bench.parallel import (
    PLANNED_LENGTHS,
    PLANNED_WORLDS,
    SHARDING_LENGTHS,
    SHARDING_WORLDS,
    geometric_segments,
    plan_costs,
    plan_recipe,
    plan_sharding,
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


def test_plan_sharding_gives_every_model_length_and_world_with_and_without_fsdp():
    """paper_base and the 1.3B and 2.7B configurations at 32K, 256K and 1M tokens on 8, 64 and
    256 GPUs. Unsharded, the state is 16 bytes per parameter on every GPU (the table of
    ``plan_recipe``); sharded, it falls by 16 x (1 - 1/P) per parameter less what FSDP holds
    whole while computing: at most 10 bytes per parameter of one block (two gathered in bf16,
    one's fp32 gradients) and 6 per parameter of the embedding (gathered bf16, fp32 gradient)."""
    root = Path(__file__).resolve().parents[2]
    rows = plan_sharding(root / "recipes" / "paper_base.yaml")
    assert [(r.model, r.seq_len, r.world) for r in rows] == [
        (m, n, p) for m in ("paper_base", "1.3B", "2.7B")
        for n in SHARDING_LENGTHS for p in SHARDING_WORLDS
    ]  # fmt: skip
    sizes = {r.model: r.parameters for r in rows}
    assert 1.2e9 < sizes["1.3B"] < 1.4e9 and 2.5e9 < sizes["2.7B"] < 2.8e9
    shapes = {"paper_base": (12, 768, 32000), "1.3B": (24, 2048, 32000), "2.7B": (32, 2560, 32000)}
    _, tables = plan_recipe(root / "recipes" / "paper_base.yaml")
    as_planned = {(c.seq_len, c.world): c.memory_bytes for c in tables["as in the recipe"]}
    for row in rows:
        depth, dim, vocab = shapes[row.model]
        embedding = vocab * dim
        saved = row.unsharded_bytes - row.sharded_bytes
        most = 16 * row.parameters * (1 - 1 / row.world)
        held = 10 * (row.parameters - embedding) / depth + 6 * embedding
        assert most - held <= saved <= most, row
        if row.model == "paper_base" and (row.seq_len, row.world) in as_planned:
            assert row.unsharded_bytes == as_planned[row.seq_len, row.world]
    by_key = {(r.model, r.seq_len, r.world): r for r in rows}
    big = by_key["2.7B", 1 << 20, 8]  # the row sharding makes fit
    assert big.unsharded_bytes > 80e9 > big.sharded_bytes


def test_bench_parallel_no_measure_prints_and_reports_the_sharding_table():
    args = ["bench", "parallel", "--no-measure"]
    text = CliRunner().invoke(cli, args)
    assert text.exit_code == 0, text.output
    assert "parallel.shard none vs fsdp" in text.output
    assert any(line.split()[:4] == ["2.7B", "2.60B", "1M", "8"] and line.endswith("no/yes")
               for line in text.output.splitlines())  # fmt: skip
    report = json.loads(CliRunner().invoke(cli, [*args, "--json"]).output)
    assert len(report["sharding"]) == 27 and "fits_80gb_sharded" in report["sharding"][0]


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
