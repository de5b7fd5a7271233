"""``longnet bench parallel``: what sequence parallelism costs per rank, measured and planned.

``measure``: real gloo process groups of P = 1, 2, 4 ... CPU processes run one layer of
sequence-parallel dilated attention (forward + backward) on one sequence; each rank reports
its peak RSS and time, and the bytes it exchanged (from the plan the exchange follows).

``plan_costs``: the per-GPU memory and communication of training a model at a sequence
length on P GPUs, from the implementation's own plan (``plan_sequence``) and a documented
model of its main buffers. No GPU needed: it is arithmetic. ``plan_recipe``: that table for a
recipe's model, as it is and with its segments extended up to the whole sequence.
``plan_sharding``: per-GPU memory with and without ``parallel.shard: fsdp`` for the recipe's
model and two larger ones (1.3B, 2.7B parameters).
"""

from __future__ import annotations

import dataclasses
import os
import socket
import time
import traceback
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from longnet_cli.core.memory import peak_rss_bytes
from longnet_cli.model.parallel import plan_sequence

GB = 1e9
PLANNED_LENGTHS = (1 << 20, 1 << 24, 1 << 28, 1 << 30)  # 1M, 16M, 256M and 1B tokens
PLANNED_WORLDS = (8, 64, 256, 1024)
SHARDING_LENGTHS = (1 << 15, 1 << 18, 1 << 20)  # 32K, 256K and 1M tokens
SHARDING_WORLDS = (8, 64, 256)
# Larger configurations on the recipe's attention (its segments and rates): GPT-3's 1.3B and
# 2.7B widths and depths, with a SwiGLU feed-forward of 8/3 x dim (3 matrices: 12 dim^2 per
# block, as GPT's 4 x dim MLP), and a 32K vocabulary.
LARGER_MODELS = {
    "1.3B": {"dim": 2048, "depth": 24, "heads": 16, "dim_head": 128, "ff_mult": 8 / 3},
    "2.7B": {"dim": 2560, "depth": 32, "heads": 32, "dim_head": 80, "ff_mult": 8 / 3},
}


@dataclass
class RankMeasurement:
    """One rank's figures for one layer's forward + backward."""

    world: int
    rank: int
    seq_len: int
    seconds: float
    peak_rss_bytes: int
    sent_bytes: int  # keys and values forward + key/value gradients backward
    received_bytes: int

    def to_dict(self) -> dict:
        return asdict(self)


def exchanged_bytes(plan, head_dim: int, element_bytes: int, batch: int = 1) -> tuple[int, int]:
    """(sent, received) bytes of one forward + backward: keys and values go one way, their
    gradients come back the other."""
    per_row = 2 * head_dim * element_bytes * batch  # a key and a value (or their gradients)
    sent = (plan.sent_tokens() + plan.received_tokens()) * per_row
    received = (plan.received_tokens() + plan.sent_tokens()) * per_row
    return sent, received


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _measure_rank(rank, world, port, config, results) -> None:
    """Worker: one layer of attention, fwd + bwd, on this rank's chunk; report to the parent."""
    try:
        import torch.distributed as dist

        from longnet_cli.model.parallel import dilated_attention_sp
        from longnet_cli.runtime import keep_freed_memory

        torch.set_num_threads(config["threads"])
        keep_freed_memory()
        dist.init_process_group(
            "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
        )
        n, h, d = config["seq_len"] // world, config["heads"], config["dim_head"]
        segments, rates = config["segment_lengths"], config["dilation_rates"]
        q, k, v = (torch.randn(1, n, h, d, requires_grad=True) for _ in range(3))

        def layer():
            out = dilated_attention_sp(q, k, v, segments, rates, causal=True)
            out.backward(torch.ones_like(out))

        layer()  # warm-up
        dist.barrier()
        start = time.perf_counter()
        layer()
        dist.barrier()
        seconds = time.perf_counter() - start
        plan = plan_sequence(n, rank, world, h, segments, rates, True)
        sent, received = exchanged_bytes(plan, d, 4)
        peak = peak_rss_bytes()
        results.put(
            RankMeasurement(world, rank, config["seq_len"], seconds, peak, sent, received).to_dict()
        )
        dist.destroy_process_group()
    except Exception:
        results.put({"rank": rank, "error": traceback.format_exc()})


def measure(
    seq_len: int,
    worlds: Sequence[int],
    *,
    heads: int,
    dim_head: int,
    segment_lengths: Sequence[int],
    dilation_rates: Sequence[int],
    threads: int = 1,
) -> list[RankMeasurement]:
    """Run each world size as a real gloo group of CPU processes; every rank's figures."""
    import torch.multiprocessing as mp

    config = {
        "seq_len": seq_len,
        "heads": heads,
        "dim_head": dim_head,
        "threads": threads,
        "segment_lengths": list(segment_lengths),
        "dilation_rates": list(dilation_rates),
    }
    context = mp.get_context("spawn")
    rows: list[RankMeasurement] = []
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    for world in worlds:
        if seq_len % world:
            raise ValueError(f"sequence length {seq_len} is not divisible by {world}")
        results = context.Queue()
        port = _free_port()
        processes = [
            context.Process(target=_measure_rank, args=(rank, world, port, config, results))
            for rank in range(world)
        ]
        for process in processes:
            process.start()
        reports = [results.get(timeout=1800) for _ in range(world)]
        for process in processes:
            process.join(timeout=60)
        for report in sorted(reports, key=lambda r: r["rank"]):
            if "error" in report:
                raise RuntimeError(f"rank {report['rank']} failed:\n{report['error']}")
            rows.append(RankMeasurement(**report))
    return rows


# --------------------------------------------------------------------------- planned costs


@dataclass
class PlannedCost:
    """Per-GPU training cost of one sequence of ``seq_len`` tokens split over ``world`` GPUs."""

    seq_len: int
    world: int
    chunk: int
    received_tokens: int  # per layer, worst rank: (token, head) rows of keys received (forward)
    communication_bytes: float  # per layer, worst rank: sent + received, forward + backward
    memory_bytes: float  # per GPU, worst rank

    def fits(self, capacity_bytes: float = 80 * GB) -> bool:
        return self.memory_bytes <= capacity_bytes

    def to_dict(self) -> dict:
        return {**asdict(self), "fits_80gb": self.fits()}


def plan_costs(
    model_config,
    seq_len: int,
    world: int,
    *,
    element_bytes: int = 2,
    parameters: int,
    causal: bool = True,
    state_bytes: float | None = None,
) -> PlannedCost:
    """Memory and communication per GPU, from the plans of ranks 0, P/2 and P-1 (the worst).

    Memory model of the implementation with activation checkpointing and bf16 autocast:
      the training state: 16 bytes per parameter (fp32 weights, gradients, two AdamW moments;
      replicated), or ``state_bytes`` (sharded: ``sharded_state_bytes``),
      every block's input kept in fp32 (depth x chunk x dim x 4),
      the one block recomputed during backward: q, k, v, attention output (bf16) and the
      float32 output accumulator, lse and dq, dk, dv accumulators; the SwiGLU hidden layers
      (3 x ff, bf16); two RMSNorm outputs (fp32); and the received keys and values with their
      gradients (bf16) — plus the loss chunk's logits, small.
    """
    c = model_config
    state = 16 * parameters if state_bytes is None else state_bytes
    chunk = seq_len // world
    inner = c.heads * c.dim_head
    plans = [
        plan_sequence(
            chunk, rank, world, c.heads, c.segment_lengths, c.dilation_rates, causal, local=False
        )
        for rank in sorted({0, world // 2, world - 1})
    ]
    traffic = [sum(exchanged_bytes(plan, c.dim_head, element_bytes)) for plan in plans]
    rows = max(plan.received_tokens() + plan.sent_tokens() for plan in plans)
    block = chunk * (
        inner * (4 * element_bytes + 4 + 3 * 4)
        + c.heads * 4
        + 3 * int(c.ff_mult * c.dim) * element_bytes
        + 2 * c.dim * 4
    )
    exchange = 2 * rows * c.dim_head * element_bytes  # keys and values, then their gradients
    memory = state + c.depth * chunk * c.dim * 4 + block + exchange
    received = max(plan.received_tokens() for plan in plans)
    return PlannedCost(seq_len, world, chunk, received, max(traffic), memory)


def geometric_segments(seq_len: int) -> tuple[list[int], list[int]]:
    """Segments 2K, 8K, 32K ... up to seq_len with rates keeping w/r = 2048 (the paper's)."""
    segments, w = [], 2048
    while w < seq_len:
        segments.append(w)
        w *= 4
    segments.append(seq_len)
    return segments, [max(1, s // 2048) for s in segments]


def plan_recipe(recipe_path: Path) -> tuple[int, dict[str, list[PlannedCost]]]:
    """The recipe's parameter count, and its planned costs at every length of
    ``PLANNED_LENGTHS`` on every world size of ``PLANNED_WORLDS``: for its segments "as in the
    recipe", and for "segments up to N" (``geometric_segments``). The model is built on the meta
    device: no memory, no weights."""
    from longnet_cli.config import load_recipe

    recipe = load_recipe(recipe_path)
    with torch.device("meta"):
        model = recipe.model.build(recipe.model.vocab_size or 32000)
    parameters, config = model.num_parameters(), model.config

    def extended(n: int):
        segments, rates = geometric_segments(n)
        return dataclasses.replace(config, segment_lengths=segments, dilation_rates=rates)

    variants = {"as in the recipe": lambda n: config, "segments up to N": extended}
    tables = {
        label: [
            plan_costs(config_at(n), n, world, parameters=parameters)
            for n in PLANNED_LENGTHS
            for world in PLANNED_WORLDS
        ]
        for label, config_at in variants.items()
    }
    return parameters, tables


# --------------------------------------------------------------------------- sharding


def sharded_state_bytes(parameters: int, block: int, root: int, world: int) -> float:
    """Per-GPU bytes of the training state under ``parallel.shard: fsdp`` with the bf16 policy:
    the 16 bytes per parameter (fp32 weights, gradients, two AdamW moments) over ``world``, plus
    what FSDP2 holds whole while computing: two blocks' parameters gathered in bf16 (the one
    running and the next, prefetched), one block's fp32 gradients before their reduce-scatter,
    and the root's parameters (embedding, tied head; ``root`` of them), gathered in bf16 for
    the whole step, with their fp32 gradients."""
    return 16 * parameters / world + 2 * 2 * block + 4 * block + (2 + 4) * root


@dataclass
class ShardedCost:
    """Per-GPU memory of one model training on one sequence split over ``world`` GPUs, its
    state replicated (``parallel.shard: none``) and sharded (``fsdp``)."""

    model: str
    parameters: int
    seq_len: int
    world: int
    chunk: int
    unsharded_bytes: float
    sharded_bytes: float

    def to_dict(self) -> dict:
        fits = {"fits_80gb_unsharded": self.unsharded_bytes <= 80 * GB,
                "fits_80gb_sharded": self.sharded_bytes <= 80 * GB}  # fmt: skip
        return {**asdict(self), **fits}


def plan_sharding(recipe_path: Path) -> list[ShardedCost]:
    """Per-GPU memory with and without sharding of the recipe's model and of ``LARGER_MODELS``
    (on the recipe's segments), at every length of ``SHARDING_LENGTHS`` on every world size of
    ``SHARDING_WORLDS``; one sequence over all the GPUs (sequence parallel, as ``plan_recipe``),
    activations as ``plan_costs`` models them. Models built on the meta device: arithmetic."""
    from longnet_cli.config import load_recipe
    from longnet_cli.model.transformer import LongNetTransformer

    recipe = load_recipe(recipe_path)
    with torch.device("meta"):
        base = recipe.model.build(recipe.model.vocab_size or 32000)
        models = {Path(recipe_path).stem: base}
        for name, shape in LARGER_MODELS.items():
            config = dataclasses.replace(base.config, num_tokens=32000, **shape)
            models[name] = LongNetTransformer.from_config(config)
    rows = []
    for name, model in models.items():
        parameters = model.num_parameters()
        block = sum(p.numel() for p in model.blocks[0].parameters())
        root = parameters - len(model.blocks) * block
        for n in SHARDING_LENGTHS:
            for world in SHARDING_WORLDS:
                sharded = sharded_state_bytes(parameters, block, root, world)
                none = plan_costs(model.config, n, world, parameters=parameters)
                fsdp = plan_costs(
                    model.config, n, world, parameters=parameters, state_bytes=sharded
                )
                rows.append(ShardedCost(name, parameters, n, world, n // world,
                                        none.memory_bytes, fsdp.memory_bytes))  # fmt: skip
    return rows
