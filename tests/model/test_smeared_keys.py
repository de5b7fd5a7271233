"""Smeared keys, exact on every path: the formula, chunked long inference, decoding, and sequence
parallelism on real gloo process groups (2 and 4), against the full-sequence computation."""

from __future__ import annotations

import os
import traceback

import pytest
import torch
import torch.distributed as dist
from helpers import spawn_workers

from longnet_cli.model import transformer as transformer_module
from longnet_cli.model.layers import DilatedAttention
from longnet_cli.model.smeared_keys import smear_keys
from longnet_cli.model.transformer import LongNetTransformer

SEGMENTS, RATES = (8, 16, 32), (1, 2, 4)


def _model(seed: int = 0, **options) -> LongNetTransformer:
    torch.manual_seed(seed)
    model = LongNetTransformer(
        50, dim=32, depth=2, dim_head=8, heads=4, segment_lengths=SEGMENTS,
        dilation_rates=RATES, smeared_keys=True, **options,
    )  # fmt: skip
    with torch.no_grad():  # gates away from their 0.5 start, different per head and layer
        for block in model.blocks:
            block.attn.key_smear.uniform_(-2.0, 2.0)
    return model.eval()


def test_smear_matches_the_definition():
    """k_j <- s_h k_j + (1 - s_h) k_{j-1}, k_{-1} = 0 (or the carried previous key)."""
    k = torch.randn(2, 7, 3, 4, dtype=torch.float64)
    logit = torch.randn(3, dtype=torch.float64)
    previous = torch.randn(2, 3, 4, dtype=torch.float64)
    s = torch.sigmoid(logit)[None, :, None]
    for prev, first in ((None, torch.zeros(2, 3, 4, dtype=torch.float64)), (previous, previous)):
        want = torch.stack(
            [s * k[:, j] + (1 - s) * (k[:, j - 1] if j else first) for j in range(7)], dim=1
        )
        torch.testing.assert_close(smear_keys(k, logit, prev), want)


def test_gates_start_at_one_half_and_learn():
    model = LongNetTransformer(50, dim=16, depth=1, dim_head=4, heads=4, segment_lengths=(8,),
                               dilation_rates=(1,), smeared_keys=True)  # fmt: skip
    gate = model.blocks[0].attn.key_smear
    assert torch.equal(torch.sigmoid(gate), torch.full((4,), 0.5))
    model.loss(torch.randint(0, 50, (1, 17))).backward()
    assert gate.grad is not None and gate.grad.abs().sum() > 0


def test_off_by_default_and_changes_the_model_when_on():
    torch.manual_seed(0)
    plain = LongNetTransformer(50, dim=32, depth=2, dim_head=8, heads=4, segment_lengths=SEGMENTS,
                               dilation_rates=RATES)  # fmt: skip
    assert all(block.attn.key_smear is None for block in plain.blocks)
    assert not any("key_smear" in name for name in plain.state_dict())
    smeared = _model()
    missing, unexpected = smeared.load_state_dict(plain.state_dict(), strict=False)
    assert sorted(missing) == ["blocks.0.attn.key_smear", "blocks.1.attn.key_smear"]
    assert not unexpected
    tokens = torch.randint(0, 50, (1, 40))
    with torch.no_grad():
        assert not torch.allclose(smeared(tokens), plain.eval()(tokens), atol=1e-3)


def test_projection_in_pieces_with_the_carried_key_equals_the_whole():
    attn = DilatedAttention(16, 4, segment_lengths=[8], dilation_rates=[1], smeared_keys=True,
                            dim_head=4, rotary=True)  # fmt: skip
    with torch.no_grad():
        attn.key_smear.uniform_(-2, 2)
    x = torch.randn(2, 20, 16)
    tables = attn.position_encoding.tables(20, 0, x.device)
    q, k, v = attn.project(x, tables)
    *first, last = attn.project(x[:, :9], tables.slice(0, 9), return_last_key=True)
    second = attn.project(x[:, 9:], tables.slice(9, 20), last)
    for whole, a, b in zip((q, k, v), first, second):
        torch.testing.assert_close(torch.cat([a, b], dim=1), whole)


def test_chunked_long_inference_equals_the_full_forward(monkeypatch):
    """forward_in_chunks (16K-position chunks, here 16) carries the last key across chunks."""
    model = _model()
    tokens = torch.randint(0, 50, (2, 70))
    with torch.enable_grad():  # grad mode: one piece, no chunks
        full = model(tokens).detach()
    monkeypatch.setattr(transformer_module, "CHUNK", 16)
    with torch.no_grad():
        chunked = model(tokens)
    torch.testing.assert_close(chunked, full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("prompt", [31, 32, 33, 47, 64, 65])
def test_decoding_equals_the_full_forward(prompt):
    """Prompts ending before, on and after segment boundaries (8, 16, 32), then 12 decoded
    positions: each step's logits equal the full forward's within 1e-4."""
    model = _model(seed=prompt)
    tokens = torch.randint(0, 50, (2, prompt + 12))
    with torch.no_grad():
        full = model(tokens)  # (B, N, V)
        logits, cache = model.prefill(tokens[:, :prompt])
        steps = [logits]
        for position in range(prompt, prompt + 11):
            steps.append(model.decode(tokens[:, position], cache))
    torch.testing.assert_close(torch.stack(steps, 1), full[:, prompt - 1 : prompt + 11],
                               atol=1e-4, rtol=1e-4)  # fmt: skip
    assert cache.previous_keys[0].shape == (2, 4, 8)


def _sp_worker(rank: int, world: int, port: int, results) -> None:
    """This rank's chunk of the sequence through the smeared-keys model under sequence
    parallelism: its logits and its share of the loss gradient, against one process."""
    try:
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        torch.set_num_threads(1)
        dist.init_process_group(
            "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
        )
        model = _model(seed=3).train()
        tokens = torch.randint(0, 50, (2, 65), generator=torch.Generator().manual_seed(4))
        whole_loss = model.loss(tokens[:, :-1], tokens[:, 1:])
        whole_grads = torch.autograd.grad(whole_loss, list(model.parameters()))
        with torch.no_grad():
            whole_logits = model(tokens[:, :-1])
        n = 64 // world
        part = slice(rank * n, (rank + 1) * n)
        model.use_sequence_parallel(dist.group.WORLD)
        # the mean of the ranks' chunk means is the window's mean (as LanguageModelLoss does)
        loss = model.loss(tokens[:, part], tokens[:, 1:][:, part], offset=rank * n) / world
        grads = torch.autograd.grad(loss, list(model.parameters()))
        for grad in grads:
            dist.all_reduce(grad)
        with torch.no_grad():
            logits = model(tokens[:, part], offset=rank * n)
        error = max(
            (logits - whole_logits[:, part]).abs().max().item(),
            *((a - b).abs().max().item() for a, b in zip(grads, whole_grads)),
        )
        gate_grad = grads[[n for n, _ in model.named_parameters()].index("blocks.0.attn.key_smear")]
        results.put((rank, (error, gate_grad.abs().sum().item())))
        dist.destroy_process_group()
    except Exception:  # report, so the parent fails with the worker's traceback
        results.put((rank, traceback.format_exc()))


@pytest.mark.parametrize("world", [2, 4])
def test_sequence_parallel_equals_one_process(world):
    reports = spawn_workers(_sp_worker, world)
    for rank, report in sorted(reports.items()):
        assert isinstance(report, tuple), f"rank {rank} failed:\n{report}"
        error, gate_grad = report
        assert error <= 1e-5, f"rank {rank}: logits or gradients differ by {error:.2e}"
        assert gate_grad > 0
