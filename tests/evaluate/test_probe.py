"""The copy probe (``longnet_cli.evaluate.probe``): which targets it compares, documents too
short for a distance, the reach note, and a real model against an independent computation.
The CLI side (``longnet eval --probe copy``) is in tests/evaluate/test_stage.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from longnet_cli.evaluate.probe import copy_probe
from longnet_cli.model.transformer import LongNetTransformer


def _positions_nll(sequence: np.ndarray) -> np.ndarray:
    """A stand-in model whose loss at target position p is p: shows which positions count."""
    return np.arange(1, len(sequence), dtype=np.float64)


def test_compares_the_same_tokens_of_both_copies():
    documents = [np.arange(10), np.arange(3)]  # the second is too short for d = 4
    (figure,) = copy_probe(_positions_nll, documents, [4], reach=8)
    # first copy: positions 1, 2, 3; second copy: positions 5, 6, 7 (position 4 left out)
    assert (figure.documents, figure.tokens) == (1, 3)
    assert (figure.first_nll, figure.second_nll) == (1 + 2 + 3, 5 + 6 + 7)
    assert figure.ratio == pytest.approx(18 / 6)
    assert figure.first_loss == 2 and figure.second_loss == 6
    assert figure.within_reach is True  # 2 x 4 <= 8


def test_sums_over_documents_and_notes_distances_beyond_reach():
    seen = []

    def nll(sequence):
        seen.append(sequence.copy())
        return np.ones(len(sequence) - 1)

    documents = [np.arange(100, 108), np.arange(200, 205)]
    short, long = copy_probe(nll, documents, [8, 2, 2], reach=8)
    assert (short.distance, short.documents, short.tokens) == (2, 2, 2)
    assert (long.distance, long.documents, long.tokens) == (8, 1, 7)
    assert short.within_reach and not long.within_reach  # 2 x 8 > 8
    assert long.ratio == pytest.approx(1.0)
    assert seen[0].tolist() == [100, 101, 100, 101]  # span + span, from position 0
    assert seen[1].tolist() == [*range(100, 108), *range(100, 108)]
    (empty,) = copy_probe(nll, documents, [64], reach=8)
    assert (empty.documents, empty.ratio, empty.first_loss) == (0, None, None)
    assert set(empty.to_json()) == {
        "distance", "documents", "tokens", "first_loss", "second_loss", "ratio", "within_reach",
    }  # fmt: skip


def test_a_real_model_against_an_independent_computation():
    torch.manual_seed(0)
    model = LongNetTransformer(50, 16, 1, dim_head=8, heads=2, segment_lengths=[8, 16],
                               dilation_rates=[1, 2]).eval()  # fmt: skip
    rng = np.random.default_rng(0)
    documents = [rng.integers(0, 50, size=n) for n in (20, 9, 40)]

    def token_nll(sequence):
        ids = torch.from_numpy(np.asarray(sequence, dtype=np.int64))[None]
        with torch.inference_mode():
            return model.token_nll(ids)[0].double().numpy()

    figures = copy_probe(token_nll, documents, [4, 10], reach=16)
    for figure in figures:
        d = figure.distance
        first = second = 0.0
        count = 0
        for tokens in documents:
            if len(tokens) < d:
                continue
            doubled = torch.tensor(np.concatenate([tokens[:d], tokens[:d]]), dtype=torch.long)
            with torch.inference_mode():
                logits = model(doubled[None])[0].double()  # (2d, V)
            nll = torch.nn.functional.cross_entropy(logits[:-1], doubled[1:], reduction="none")
            first += float(nll[: d - 1].sum())  # targets 1 .. d-1
            second += float(nll[d:].sum())  # targets d+1 .. 2d-1
            count += 1
        assert figure.documents == count
        assert figure.ratio == pytest.approx(second / first, rel=1e-4)
    assert [f.within_reach for f in figures] == [True, False]  # 2 x 10 > 16


def test_default_distances_start_where_copying_first_shows():
    """128 and 512 come first (copying from context appears at short distances first); the
    ``longnet eval --distances`` default is the same list."""
    from longnet_cli.cli.eval import eval_command
    from longnet_cli.core.lengths import parse_lengths
    from longnet_cli.evaluate.probe import DEFAULT_DISTANCES

    assert DEFAULT_DISTANCES == (128, 512, 2048, 8192, 16384)
    (option,) = [param for param in eval_command.params if param.name == "distances"]
    assert tuple(parse_lengths(option.default)) == DEFAULT_DISTANCES
