"""Before/after figures of the model's launch cuts (issue 20), on this machine, in one run.

    PYTHONPATH=. python tools/bench_launch_cuts.py [--n 8192] [--rounds 5] [--threads 0]

Compares, forward and backward, the code the cuts replaced (copied here as it was) with the
package's:

    rotary   q and k (B=1, N, H=8, D=64) rotated: widen, four multiplies, a subtraction, an
             addition, a concatenation per tensor, against one rotate-half, a multiply and a
             multiply-add (``positions.apply_positions``)
    xpos     the same under xPos in a stack of 12 layers: before, each layer scaled the
             tables again (four (N, D/2) passes); now once per set of tables
    rmsnorm  RMSNorm over (1, N, 768) float32: five ops against torch's rms_norm
    model    (--model) a training step (loss, backward) of a small xPos LongNetTransformer
             (dim 256, depth 4, 4 heads of 64, N tokens), the old side with the old position
             and norm code patched in

For each: aten operations per call, forward and backward (counted with a dispatch mode: a
machine-independent figure of the kernels launched; gradient accumulation into q and k across
layers counts on both sides), and the best time of ``--rounds``
interleaved rounds (old, new, old, new, ...), so both sides see the same machine load.
A harness of the source checkout, not part of the package.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from longnet_cli.model import layers
from longnet_cli.model.layers import RMSNorm
from longnet_cli.model.positions import XPos, apply_positions

XPOS_MAX_EXPONENT = 40.0
LAYERS = 12


# -- the code the cuts replaced ------------------------------------------------------------------


def old_rotate(x, cos, sin):
    x1, x2 = x.to(torch.promote_types(x.dtype, torch.float32)).chunk(2, dim=-1)
    cos, sin = cos[:, None], sin[:, None]
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).to(x.dtype)


def old_apply_positions(q, k, tables):
    if tables.scale is None:
        return old_rotate(q, tables.cos, tables.sin), old_rotate(k, tables.cos, tables.sin)
    scale = tables.scale
    limit = min(XPOS_MAX_EXPONENT, 0.5 * math.log(torch.finfo(q.dtype).max) - 1.0)
    if limit < XPOS_MAX_EXPONENT:
        scale = scale.clamp(math.exp(-limit), math.exp(limit))
    return (
        old_rotate(q, tables.cos * scale, tables.sin * scale),
        old_rotate(k, tables.cos / scale, tables.sin / scale),
    )


def old_rms_norm(x, weight, eps=1e-6):
    x32 = x.to(torch.promote_types(x.dtype, torch.float32))
    return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype) * weight


# -- measuring ------------------------------------------------------------------------------------


class _CountOps(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func not in (torch.ops.aten.detach.default, torch.ops.aten.alias.default):
            self.count += 1
        return func(*args, **(kwargs or {}))


def count_ops(step: Callable[[], None]) -> int:
    with _CountOps() as mode:
        step()
    return mode.count


def best_interleaved(steps: dict[str, Callable[[], None]], rounds: int) -> dict[str, float]:
    for step in steps.values():  # warm-up
        step()
    best = dict.fromkeys(steps, math.inf)
    for _ in range(rounds):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def cases(n: int) -> dict[str, dict[str, Callable[[], None]]]:
    heads, d = 8, 64
    q = torch.randn(1, n, heads, d, requires_grad=True)
    k = torch.randn(1, n, heads, d, requires_grad=True)
    grad = torch.randn(1, n, heads, d)
    rotary = XPos(d)  # its cos/sin serve rotary; the xPos case uses its scale too
    xpos_tables = rotary.tables(n)
    rotary_tables = type(xpos_tables)(xpos_tables.cos, xpos_tables.sin)

    def positions(apply, tables_of, layers):
        def step():
            tables = tables_of()
            outputs = [t for _ in range(layers) for t in apply(q, k, tables)]
            torch.autograd.backward(outputs, [grad] * len(outputs))
            q.grad = k.grad = None

        return step

    def fresh_xpos():  # a new forward's tables: nothing derived yet
        return type(xpos_tables)(xpos_tables.cos, xpos_tables.sin, xpos_tables.scale)

    def fresh_rotary():
        return type(rotary_tables)(rotary_tables.cos, rotary_tables.sin)

    norm = RMSNorm(768)
    x = torch.randn(1, n, 768, requires_grad=True)
    dx = torch.randn(1, n, 768)

    def rms(fn):
        def step():
            fn(x).backward(dx)
            x.grad = norm.weight.grad = None

        return step

    return {
        "rotary": {
            "old": positions(old_apply_positions, fresh_rotary, 1),
            "new": positions(apply_positions, fresh_rotary, 1),
        },
        f"xpos x{LAYERS} layers": {
            "old": positions(old_apply_positions, fresh_xpos, LAYERS),
            "new": positions(apply_positions, fresh_xpos, LAYERS),
        },
        "rmsnorm": {
            "old": rms(lambda t: old_rms_norm(t, norm.weight, norm.eps)),
            "new": rms(norm),
        },
    }


def model_case(n: int) -> dict[str, Callable[[], None]]:
    from longnet_cli.model.transformer import LongNetTransformer

    torch.manual_seed(0)
    model = LongNetTransformer(
        256, dim=256, depth=4, heads=4, dim_head=64, segment_lengths=[512, 1024, 2048],
        dilation_rates=[1, 2, 4], positions="xpos",
    )  # fmt: skip
    tokens = torch.randint(0, 256, (1, n))
    new_norm = RMSNorm.forward

    def step():
        model.loss(tokens).backward()
        model.zero_grad(set_to_none=True)

    def old_step():
        layers.apply_positions = old_apply_positions
        RMSNorm.forward = lambda self, x: old_rms_norm(x, self.weight, self.eps)
        try:
            step()
        finally:
            layers.apply_positions, RMSNorm.forward = apply_positions, new_norm

    return {"old": old_step, "new": step}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=8192, help="positions (default 8192)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: as set)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--model", action="store_true", help="also a small model's train step")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    results = []
    all_cases = cases(args.n)
    if args.model:
        all_cases["model step"] = model_case(args.n)
    for name, steps in all_cases.items():
        ops = {side: count_ops(step) for side, step in steps.items()}
        seconds = best_interleaved(steps, args.rounds)
        results.append({"case": name, "ops": ops, "seconds": seconds})
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(f"N = {args.n}, {torch.get_num_threads()} threads, best of {args.rounds} interleaved")
    print(f"{'case':<16} {'ops old':>8} {'ops new':>8} {'ms old':>9} {'ms new':>9} {'new/old':>8}")
    for r in results:
        old, new = r["seconds"]["old"], r["seconds"]["new"]
        print(
            f"{r['case']:<16} {r['ops']['old']:>8} {r['ops']['new']:>8} {old * 1e3:>9.2f} "
            f"{new * 1e3:>9.2f} {new / old:>8.2f}"
        )


if __name__ == "__main__":
    main()
