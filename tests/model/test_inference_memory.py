"""Long inference memory: besides x only q, k, v and the attention output span the sequence.

Each measurement runs in a fresh interpreter so that its peak RSS is its own.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

_SCRIPT = textwrap.dedent(
    """
    import json, resource, sys, torch
    from longnet_cli.model.transformer import LongNetTransformer
    n, dim, depth, vocab = (int(a) for a in sys.argv[1:5])
    torch.manual_seed(0)
    model = LongNetTransformer(vocab, dim, depth, dim_head=64, heads=dim // 64,
                               segment_lengths=[2048, 4096], dilation_rates=[1, 2]).eval()
    tokens = torch.randint(0, vocab, (1, n + 1))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    with torch.inference_mode():
        nll = model.token_nll(tokens)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    assert nll.shape == (1, n) and bool(torch.isfinite(nll).all())
    print(json.dumps({"before": before, "peak": peak}))
    """
)


def _peak(n: int, dim: int, depth: int, vocab: int) -> dict:
    args = [str(n), str(dim), str(depth), str(vocab)]
    result = subprocess.run(
        [sys.executable, "-c", _SCRIPT, *args], capture_output=True, text=True, check=True
    )
    return json.loads(result.stdout)


def test_long_sequence_forward_holds_few_full_length_tensors():
    """512K tokens, dim 64: each (N, C) float32 tensor is 128 MiB. A plain forward keeps about
    20 of them alive at once (normed copies, rotary temporaries, a 4x-wide SwiGLU hidden
    layer); the chunked one x, q, k, v, the attention output and small chunk temporaries."""
    n, dim = 1 << 19, 64
    tensor = n * dim * 4
    stats = _peak(n, dim, depth=2, vocab=512)
    assert stats["peak"] - stats["before"] < 9 * tensor, stats


@pytest.mark.slow
def test_quickstart_model_scores_one_million_tokens_under_8_gib():
    """The issue's figure: the quickstart architecture, one 1M-token document, < 8 GiB."""
    stats = _peak(1 << 20, 256, depth=4, vocab=8192)
    assert stats["peak"] < 8 * 1024**3, stats
