"""Compiled blocks: ``torch.compile`` over each transformer block (``train.compile``, ``longnet
eval/generate --compile``, ``longnet bench train --compare``).

Each block is compiled in place (``nn.Module.compile``): its ``__call__`` runs the compiled
forward while the module tree stays the eager one, so parameter names, ``state_dict`` keys and
checkpoints are those of the eager model (no ``_orig_mod.`` prefix) and a run may switch
compilation on or off between checkpoints. The dilated attention itself stays eager: its
custom autograd function plans kernel calls from Python values and builds strided views that
dynamo cannot trace without graph breaks and recompilations (measured: a one-block model took
56 s to compile, against seconds with the attention left out); around it inductor fuses the
norms, the projections' epilogues, the positions and the feed-forward. Sequence parallelism's
collectives live inside that eager attention too.
"""

from __future__ import annotations

import time
import types

import torch
from torch import nn


def compile_unavailable(device: torch.device | str) -> str | None:
    """Why ``torch.compile`` cannot run on ``device`` on this machine, or None when it can.

    Inductor needs a C++ compiler for a CPU (``g++``, or ``$CXX``) and triton for CUDA. Asked
    before compiling, so that ``train.compile: true`` (or ``--compile``) on a machine without
    them runs eager with a warning instead of failing at the first step. Where torch's own
    probe is missing (another torch version), None: compiling is tried as asked.
    """
    kind = torch.device(device).type
    if kind == "cpu":
        try:
            from torch._inductor.cpp_builder import get_cpp_compiler
        except ImportError:
            return None
        try:
            get_cpp_compiler()
        except Exception:  # torch's InvalidCxxCompiler: none of its candidates runs
            return "no C++ compiler runs here (inductor's CPU backend needs g++, or $CXX)"
        return None
    if kind == "cuda":
        try:
            from torch.utils._triton import has_triton
        except ImportError:
            return None
        return None if has_triton() else "triton is not installed (inductor's CUDA backend)"
    return None


def eager_instead(device: torch.device | str, asked: str) -> str | None:
    """The warning to print when ``asked`` (``train.compile``, ``--compile``) cannot compile on
    ``device`` here (``compile_unavailable``), or None when compiling can go ahead."""
    reason = compile_unavailable(device)
    if reason is None:
        return None
    return f"warning: {asked}: torch.compile cannot run here ({reason}); running eager"


def compile_blocks(model: nn.Module) -> nn.Module:
    """Compile every block of ``model`` (a ``LongNetTransformer``) in place; returns it.

    Idempotent: a block compiled already is left as it is.
    """
    from longnet_cli.model.layers import DilatedAttention

    for block in model.blocks:
        if getattr(block, "_compiled_call_impl", None) is not None:
            continue
        for module in block.modules():
            if isinstance(module, DilatedAttention) and "attend" not in vars(module):
                eager = torch.compiler.disable(DilatedAttention.attend)  # see above
                module.attend = types.MethodType(eager, module)
        block.compile()
    return model


def compile_for_decoding(model: nn.Module) -> nn.Module:
    """Compile what generation runs (``longnet generate --compile``), in place: the prefill and
    decode paths call each block's norms and feed-forward as modules, not the block's
    ``forward``, so those are compiled (one new position at a time: one shape, compiled once);
    the attention over the decoding cache stays eager. Returns ``model``."""
    for block in model.blocks:
        for module in (block.attn_norm, block.ff_norm, block.ff):
            if module is not None and getattr(module, "_compiled_call_impl", None) is None:
                module.compile()
    return model


def warm_up(loss_module: nn.Module, shape: tuple[int, int], vocab_size: int, device) -> float:
    """Compile by running one forward and backward of ``loss_module`` on random tokens of the
    training windows' ``shape`` (B, N+1); the seconds it took (``compile_s``).

    Done before the first step, so that compilation is reported once and never counted in
    tokens/s: every RNG state is restored afterwards and the gradients it left are dropped,
    so the run's steps, losses and checkpoints are what they would have been without it.
    """
    devices = [device] if torch.device(device).type == "cuda" else []
    started = time.perf_counter()
    with torch.random.fork_rng(devices=devices):
        generator = torch.Generator().manual_seed(0)
        tokens = torch.randint(0, vocab_size, shape, generator=generator).to(device)
        loss_module(tokens).backward()
    loss_module.zero_grad(set_to_none=True)
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - started
