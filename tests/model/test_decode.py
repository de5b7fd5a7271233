"""Decoding with a branch-bounded key/value cache: every decoded position's logits equal a full
forward pass over prompt + generated tokens; the cache never holds more than
sum_i heads * ceil(w_i / r_i) keys per layer; prefill runs only the prompt's readable tail."""

from __future__ import annotations

import math

import pytest
import torch

from longnet_cli.model import transformer
from longnet_cli.model.decode import prefill_start
from longnet_cli.model.transformer import LongNetTransformer

VOCAB = 97
TOLERANCE = 1e-4

# (name, model kwargs): dividing and non-dividing segments, rates that do and do not divide each
# other, heads fewer than a rate, rotary and xPos (per-block and global), parallel blocks,
# qk norm, untied head.
CONFIGS = {
    "rotary-geometric": dict(heads=3, segment_lengths=(4, 8, 16), dilation_rates=(1, 2, 4)),
    "xpos-coprime": dict(
        heads=2, segment_lengths=(6, 10, 16), dilation_rates=(1, 3, 4), positions="xpos"
    ),
    "xpos-block-parallel": dict(
        heads=4,
        segment_lengths=(4, 12),
        dilation_rates=(2, 3),
        positions="xpos",
        parallel_blocks=True,
        qk_norm=True,
        tie_embeddings=False,
    ),
    "no-positions-rate-5": dict(
        heads=3, segment_lengths=(5, 9), dilation_rates=(1, 5), positions="none"
    ),
}


def _model(seed: int = 0, **kwargs) -> LongNetTransformer:
    torch.manual_seed(seed)
    model = LongNetTransformer(VOCAB, dim=24, depth=2, dim_head=8, ff_mult=2, **kwargs)
    with torch.no_grad():  # larger than the init so that attention patterns are far from uniform
        for param in model.parameters():
            if param.dim() > 1:
                param.mul_(8.0)
    return model.eval()


def _prompt_lengths(segment_lengths) -> list[int]:
    shortest, longest = min(segment_lengths), max(segment_lengths)
    lengths = {1, shortest - 1, shortest, shortest + 1, longest - 1, longest, longest + 1}
    return sorted(n for n in lengths if n >= 1)


def _decoded_logits(model, tokens: torch.Tensor, prompt: int) -> tuple[torch.Tensor, list]:
    """Logits of positions prompt-1 .. N-1 by prefill + one decode step per token, and the
    cache's (keys held, slots) per layer after every step."""
    logits, cache = model.prefill(tokens[:, :prompt])
    steps, sizes = [logits], [(cache.keys_per_layer(), cache.slots_per_layer())]
    for position in range(prompt, tokens.shape[1]):
        steps.append(model.decode(tokens[:, position], cache))
        sizes.append((cache.keys_per_layer(), cache.slots_per_layer()))
    return torch.stack(steps, dim=1), sizes  # (B, N - prompt + 1, V)


@pytest.mark.parametrize("name", CONFIGS)
def test_decoded_logits_equal_full_forward(name):
    kwargs = CONFIGS[name]
    model = _model(**kwargs)
    total = 3 * max(kwargs["segment_lengths"]) + 5  # across several boundaries of every branch
    tokens = torch.randint(0, VOCAB, (2, total), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model(tokens)  # (B, N, V)
    bound = sum(
        kwargs["heads"] * math.ceil(w / r)
        for w, r in zip(kwargs["segment_lengths"], kwargs["dilation_rates"])
    )
    for prompt in _prompt_lengths(kwargs["segment_lengths"]):
        decoded, sizes = _decoded_logits(model, tokens, prompt)
        torch.testing.assert_close(
            decoded, expected[:, prompt - 1 :], atol=TOLERANCE, rtol=0,
            msg=lambda m, prompt=prompt: f"prompt {prompt}: {m}",
        )  # fmt: skip
        assert all(held <= slots <= bound for held, slots in sizes), (prompt, sizes, bound)


def test_generate_greedy_matches_full_forward_argmax():
    model = _model(**CONFIGS["rotary-geometric"])
    prompt = torch.randint(0, VOCAB, (1, 7), generator=torch.Generator().manual_seed(2))
    new, cache = model.generate(prompt[0], 40, temperature=0, return_cache=True)
    assert new.shape == (40,) and cache.position == 7 + 39
    sequence = torch.cat([prompt[0], new])
    with torch.no_grad():
        logits = model(sequence[None])[0]
    assert torch.equal(logits[6:-1].argmax(-1), new)


def test_generate_is_reproducible_for_a_seed_and_stops_at_eos():
    model = _model(**CONFIGS["xpos-coprime"])
    prompt = torch.randint(0, VOCAB, (2, 5), generator=torch.Generator().manual_seed(3))
    first = model.generate(prompt, 20, temperature=0.8, top_k=20, top_p=0.9, seed=7)
    again = model.generate(prompt, 20, temperature=0.8, top_k=20, top_p=0.9, seed=7)
    assert first.shape == (2, 20) and torch.equal(first, again)
    single = model.generate(prompt[:1], 20, temperature=0.8, top_k=20, top_p=0.9, seed=7)
    eos = int(single[0, 3])
    stopped = model.generate(prompt[:1], 20, temperature=0.8, top_k=20, top_p=0.9, seed=7,
                             eos_id=eos)  # fmt: skip
    assert stopped[0, -1] == eos and stopped.shape[1] <= 4
    assert torch.equal(stopped[0], single[0, : stopped.shape[1]])


def test_top_k_one_is_greedy():
    model = _model(**CONFIGS["rotary-geometric"])
    prompt = torch.randint(0, VOCAB, (1, 9), generator=torch.Generator().manual_seed(4))
    greedy = model.generate(prompt, 12, temperature=0)
    assert torch.equal(model.generate(prompt, 12, temperature=1.5, top_k=1, seed=0), greedy)
    assert torch.equal(model.generate(prompt, 12, temperature=1.5, top_p=1e-6, seed=0), greedy)


def test_cache_bounded_after_prompts_of_very_different_lengths(monkeypatch):
    """Long prompts go through the chunked long inference (CHUNK made small here); the cache
    stays within the bound and prefill starts at the block of the longest segment."""
    monkeypatch.setattr(transformer, "CHUNK", 16)
    kwargs = dict(heads=3, segment_lengths=(8, 16, 32), dilation_rates=(1, 2, 4))
    model = _model(**kwargs)
    bound = 3 * (8 + 8 + 8)
    tokens = torch.randint(0, VOCAB, (1, 700), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        tail = model(tokens[:, 576:], offset=576)  # positions >= 576 never read before 576
        reference = model(tokens)
    torch.testing.assert_close(tail, reference[:, 576:], atol=TOLERANCE, rtol=0)
    for prompt in (2, 31, 33, 300, 650):
        decoded, sizes = _decoded_logits(model, tokens[:, : prompt + 40], prompt)
        torch.testing.assert_close(
            decoded, reference[:, prompt - 1 : prompt + 40], atol=TOLERANCE, rtol=0
        )
        assert max(slots for _, slots in sizes) <= bound
        assert max(held for held, _ in sizes) <= bound


def test_prefill_start_is_the_block_of_the_lcm():
    assert prefill_start((8, 16, 32), 1) == 0
    assert prefill_start((8, 16, 32), 32) == 0
    assert prefill_start((8, 16, 32), 33) == 32
    assert prefill_start((8, 16, 32), 1000) == 992
    assert prefill_start((6, 10), 31) == 30  # lcm 30
    assert prefill_start((6, 10), 30) == 0
