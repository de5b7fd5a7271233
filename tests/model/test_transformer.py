"""LongNetTransformer: shapes, causality, the chunked loss against full logits, training, meta."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from longnet_cli.model.config import LongNetConfig
from longnet_cli.model.transformer import LongNetTransformer

VOCAB = 50


def tiny(**overrides) -> LongNetTransformer:
    """A two-block model small enough for many CPU tests; segments shorter than the sequences."""
    kwargs = dict(
        num_tokens=VOCAB, dim=32, depth=2, dim_head=8, heads=4, ff_mult=2,
        segment_lengths=(8, 16, 32), dilation_rates=(1, 2, 4),
    )  # fmt: skip
    kwargs.update(overrides)
    return LongNetTransformer(**kwargs)


def tokens(batch: int = 2, seq: int = 41) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, seq))


def grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.grad.clone() for name, p in model.named_parameters()}


def test_logits_shape_and_hidden_states():
    model = tiny()
    t = tokens()
    logits = model(t)
    assert logits.shape == (2, 41, VOCAB)
    hidden = model.hidden_states(t)
    assert hidden.shape == (2, 41, 32)
    torch.testing.assert_close(logits, hidden @ model.head.weight.T)


@pytest.mark.parametrize("positions", ["rotary", "xpos", "none"])
@pytest.mark.parametrize("parallel", [False, True], ids=["sequential", "parallel"])
def test_causal_future_tokens_do_not_change_earlier_logits(positions, parallel):
    model = tiny(positions=positions, parallel_blocks=parallel)
    t = tokens(1, 40)
    changed = t.clone()
    changed[0, 25] = (t[0, 25] + 1) % VOCAB
    before, after = model(t), model(changed)
    torch.testing.assert_close(before[:, :25], after[:, :25], atol=1e-6, rtol=0)
    assert not torch.allclose(before[:, 25:], after[:, 25:], atol=1e-4)


def test_loss_equals_cross_entropy_on_full_logits_with_same_gradients():
    model = tiny()
    t = tokens(2, 41)
    loss = model.loss(t, chunk_size=7)  # 40 predicted positions: chunks of 7 and a tail of 5
    loss.backward()
    chunked = grads(model)
    model.zero_grad()
    logits = model(t[:, :-1])
    want = F.cross_entropy(logits.reshape(-1, VOCAB), t[:, 1:].reshape(-1))
    want.backward()
    torch.testing.assert_close(loss, want, atol=1e-6, rtol=1e-6)
    for name, grad in grads(model).items():
        torch.testing.assert_close(chunked[name], grad, atol=1e-5, rtol=1e-5, msg=name)


def test_loss_with_targets_sum_and_ignore_index():
    model = tiny()
    t, targets = tokens(2, 20), tokens(2, 20)
    targets[0, :3] = -100
    logits = model(t).reshape(-1, VOCAB)
    want_sum = F.cross_entropy(logits, targets.reshape(-1), reduction="sum")
    want_mean = F.cross_entropy(logits, targets.reshape(-1))
    torch.testing.assert_close(model.loss(t, targets, chunk_size=6, reduction="sum"), want_sum)
    torch.testing.assert_close(model.loss(t, targets, chunk_size=6), want_mean)
    total, count = model.nll_sum(t, targets, chunk_size=6)
    torch.testing.assert_close(total, want_sum)
    assert int(count) == 40 - 3
    with pytest.raises(ValueError, match="shape"):
        model.loss(t, targets[:, :-1])
    with pytest.raises(ValueError, match="reduction"):
        model.loss(t, reduction="none")


def test_token_nll_matches_per_position_cross_entropy():
    model = tiny().eval()
    t = tokens(3, 30)
    with torch.no_grad():
        nll = model.token_nll(t, chunk_size=4)
        logits = model(t[:, :-1])
    want = F.cross_entropy(logits.transpose(1, 2), t[:, 1:], reduction="none")  # (B, N-1)
    assert nll.shape == (3, 29) and nll.dtype == torch.float32
    torch.testing.assert_close(nll, want, atol=1e-5, rtol=1e-5)


def test_loss_runs_the_head_one_chunk_at_a_time_and_recomputes_in_backward():
    model = tiny()
    seen = []
    model.head.register_forward_hook(lambda module, args, out: seen.append(args[0].shape[1]))
    model.loss(tokens(2, 41), chunk_size=16).backward()
    # 40 positions: chunks 16, 16, 8 in forward, recomputed once more each in backward
    assert sorted(seen) == [8, 8, 16, 16, 16, 16]


def test_tied_and_untied_embeddings():
    tied, untied = tiny(), tiny(tie_embeddings=False)
    assert tied.head.weight is tied.token_embedding.weight
    assert untied.head.weight is not untied.token_embedding.weight
    assert untied.num_parameters() - tied.num_parameters() == VOCAB * 32
    loss = tied.loss(tokens())
    loss.backward()
    assert tied.token_embedding.weight.grad is tied.head.weight.grad


def test_parallel_block_is_x_plus_attention_plus_feed_forward_of_one_norm():
    model = tiny(parallel_blocks=True, depth=1)
    block = model.blocks[0]
    assert block.ff_norm is None
    x = torch.randn(2, 20, 32)
    h = block.attn_norm(x)
    torch.testing.assert_close(block(x), x + block.attn(h) + block.ff(h))
    sequential = tiny(depth=1)
    assert model.num_parameters() == sequential.num_parameters() - 32  # one norm fewer
    assert model.loss(tokens()).isfinite()


def test_activation_checkpointing_gives_the_same_gradients():
    plain = tiny(positions="xpos", qk_norm=True)
    checkpointed = tiny(positions="xpos", qk_norm=True, activation_checkpointing=True)
    checkpointed.load_state_dict(plain.state_dict())
    t = tokens()
    plain.loss(t).backward()
    checkpointed.loss(t).backward()
    for name, grad in grads(checkpointed).items():
        torch.testing.assert_close(grad, plain.get_parameter(name).grad, msg=name)


def test_rotary_hidden_states_do_not_depend_on_offset():
    """Rotary scores depend on i - j only, so shifting every position changes nothing."""
    model = tiny()
    t = tokens()
    torch.testing.assert_close(
        model.hidden_states(t, offset=5000), model.hidden_states(t), atol=1e-4, rtol=1e-4
    )
    xpos = tiny(positions="xpos")  # xPos blocks are aligned: a whole-block shift changes nothing
    torch.testing.assert_close(
        xpos.hidden_states(t, offset=32 * 100), xpos.hidden_states(t), atol=1e-4, rtol=1e-4
    )
    assert not torch.allclose(xpos.hidden_states(t, offset=7), xpos.hidden_states(t), atol=1e-4)


def test_dropout_only_in_training():
    model = tiny(dropout=0.3)
    t = tokens()
    model.eval()
    torch.testing.assert_close(model(t), model(t))
    model.train()
    assert not torch.allclose(model(t), model(t))


def test_trains_on_a_repeating_sequence():
    model = tiny(dim=32, depth=2)
    pattern = torch.randint(0, VOCAB, (8,))
    t = pattern.repeat(2, 6)  # (2, 48): the same 8 tokens over and over
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    first = model.loss(t).item()
    for _ in range(40):
        optimizer.zero_grad()
        loss = model.loss(t)
        loss.backward()
        optimizer.step()
    assert first > 3.0  # about log(50) at init
    assert loss.item() < 0.2 * first


def expected_parameter_count(vocab, dim, depth, heads, dim_head, ff_mult, tied=True):
    """Count from the architecture: embedding, per block 4 projections + SwiGLU + 2 norms, norm."""
    inner = heads * dim_head
    attention = 3 * dim * inner + inner * dim
    feed_forward = 3 * dim * (ff_mult * dim)
    per_block = attention + feed_forward + 2 * dim
    head = 0 if tied else vocab * dim
    return vocab * dim + depth * per_block + dim + head


def test_builds_on_meta_device_at_paper_base_size():
    with torch.device("meta"):
        model = LongNetTransformer(
            num_tokens=32000, dim=768, depth=12, dim_head=64, heads=12,
            segment_lengths=(2048, 4096, 8192, 16384, 32768), dilation_rates=(1, 2, 4, 6, 12),
        )  # fmt: skip
    assert all(p.is_meta for p in model.parameters())
    count = model.num_parameters()
    assert count == expected_parameter_count(32000, 768, 12, 12, 64, 4)
    assert 130e6 < count < 145e6  # a "base" model: ~113M in blocks, ~25M embedding
    assert model.num_parameters(exclude_embeddings=True) == count - 32000 * 768


def test_parameter_count_formula_for_small_variants():
    assert tiny().num_parameters() == expected_parameter_count(VOCAB, 32, 2, 4, 8, 2)
    qk = tiny(qk_norm=True, tie_embeddings=False)
    want = expected_parameter_count(VOCAB, 32, 2, 4, 8, 2, tied=False) + 2 * 2 * 8
    assert qk.num_parameters() == want


def test_init_scales_residual_projections():
    model = tiny(dim=256, depth=8, dim_head=32, heads=8)
    std = model.blocks[0].attn.out_proj.weight.std().item()
    assert std == pytest.approx(0.02 / 4, rel=0.05)  # 0.02 / sqrt(2 * depth)
    assert model.blocks[0].attn.q_proj.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert model.blocks[3].ff.down_proj.weight.std().item() == pytest.approx(0.02 / 4, rel=0.05)


def test_config_round_trip_and_validation():
    model = tiny(positions="xpos", qk_norm=True)
    clone = LongNetTransformer.from_config(copy.deepcopy(model.config))
    assert clone.config == model.config
    with pytest.raises(ValueError, match="positions"):
        tiny(positions="alibi")
    with pytest.raises(ValueError, match="same length"):
        tiny(segment_lengths=(8, 16), dilation_rates=(1,))
    with pytest.raises(ValueError, match="depth"):
        LongNetConfig(num_tokens=10, dim=8, depth=0)


@pytest.mark.parametrize("parallel_blocks", [False, True])
@pytest.mark.parametrize("positions", ["rotary", "xpos", "none"])
def test_long_inference_in_chunks_equals_the_plain_forward(monkeypatch, parallel_blocks, positions):
    """At long N without autograd, blocks run per-position work in chunks, in place."""
    import longnet_cli.model.transformer as transformer

    model = LongNetTransformer(
        num_tokens=50,
        dim=32,
        depth=2,
        dim_head=8,
        heads=4,
        segment_lengths=[8, 16],
        dilation_rates=[1, 2],
        positions=positions,
        parallel_blocks=parallel_blocks,
        qk_norm=True,
    ).eval()
    tokens = torch.randint(0, 50, (2, 70))
    with torch.no_grad():
        plain = model(tokens)
        monkeypatch.setattr(transformer, "CHUNK", 16)  # 70 positions -> 5 chunks
        chunked = model(tokens)
    torch.testing.assert_close(chunked, plain, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("parallel_blocks", [False, True])
@pytest.mark.parametrize("positions", ["rotary", "xpos"])
def test_block_called_directly_at_long_n_equals_its_plain_forward(parallel_blocks, positions):
    """A Block called on its own past CHUNK positions without autograd (the chunked path)
    encodes positions from ``offset`` itself and leaves the caller's tensor alone."""
    from longnet_cli.model.config import LongNetConfig
    from longnet_cli.model.transformer import CHUNK, Block

    config = LongNetConfig(
        num_tokens=10, dim=8, depth=1, dim_head=4, heads=2, segment_lengths=(8, 16),
        dilation_rates=(1, 2), positions=positions, parallel_blocks=parallel_blocks,
    )  # fmt: skip
    block = Block(config).eval()
    x = torch.randn(1, CHUNK + 37, 8)
    before = x.clone()
    offset = 1000
    with torch.enable_grad():  # the plain, unchunked forward
        plain = block(x, offset).detach()
    with torch.no_grad():
        chunked = block(x, offset)
    assert torch.equal(x, before)  # the caller's tensor is unchanged
    torch.testing.assert_close(chunked, plain, atol=1e-5, rtol=1e-5)
    encoding, block.attn.position_encoding = block.attn.position_encoding, None
    with torch.no_grad():  # positions were applied (the chunked path once had no tables)
        assert not torch.allclose(block(x, offset), chunked, atol=1e-3, rtol=1e-3)
    block.attn.position_encoding = encoding
    if positions == "xpos":  # xPos scales depend on the offset (rotary's angles do not)
        with torch.no_grad():
            assert not torch.allclose(block(x, 0), chunked, atol=1e-5, rtol=1e-5)
