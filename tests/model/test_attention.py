"""dilated_attention against the dense float64 reference: forward and gradients."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from reference import dense_dilated_attention, multiplicity

from longnet_cli.model.attention import dilated_attention, plan_calls
from longnet_cli.model.kernels import available_backends, flash_attn_available

CPU_BACKENDS = available_backends("cpu")
NEEDS_FLASH_ATTN = pytest.mark.skipif(
    not flash_attn_available(), reason="flash-attn is not installed (the gpu extra)"
)
BACKEND_PARAMS = [pytest.param("cpu", b, id=f"cpu-{b}") for b in CPU_BACKENDS] + [
    pytest.param("cuda", "torch", id="cuda-torch", marks=pytest.mark.gpu),
    pytest.param("cuda", "efficient", id="cuda-efficient", marks=pytest.mark.gpu),
    pytest.param(
        "cuda", "flash-attn", id="cuda-flash-attn", marks=[pytest.mark.gpu, NEEDS_FLASH_ATTN]
    ),
    pytest.param("cuda", "auto", id="cuda-auto", marks=pytest.mark.gpu),
]

# (batch, seq, heads, head_dim, segment_lengths, dilation_rates)
SHAPES = {
    "seq-not-multiple": (1, 37, 3, 8, [8, 16], [1, 2]),
    "segment-longer-than-seq": (1, 20, 4, 8, [8, 64], [1, 4]),
    "heads-fewer-than-rate": (1, 40, 2, 8, [8, 32], [1, 4]),
    "batch-2": (2, 48, 4, 8, [16, 48], [1, 2]),
    "no-rate-1-branch": (1, 45, 3, 8, [9, 20], [2, 3]),
    "rate-not-dividing-segment": (2, 50, 5, 4, [6, 10, 50], [4, 3, 7]),
    "paper-like-geometric": (1, 96, 6, 8, [8, 16, 32, 64], [1, 2, 4, 6]),
    "same-branch-twice": (1, 24, 2, 4, [8, 8], [2, 2]),
    "heads-not-multiple-of-rate": (1, 64, 6, 4, [16, 64], [1, 4]),
    "tail-shorter-than-rate": (2, 37, 8, 4, [16, 32], [1, 8]),
}


def _skip_unsupported(backend: str, dtype: torch.dtype, head_dim: int) -> None:
    """flash-attn runs float16/bfloat16 with head_dim a multiple of 8 only (by design)."""
    if backend == "flash-attn" and (dtype == torch.float32 or head_dim % 8):
        pytest.skip("flash-attn needs float16/bfloat16 and head_dim % 8 == 0")


def _inputs(shape, device="cpu", dtype=torch.float32):
    b, n, h, d = shape
    return [torch.randn(b, n, h, d, device=device, dtype=dtype, requires_grad=True) for _ in "qkv"]


def _check_against_reference(shape, segments, rates, causal, device, backend, dtype, tol):
    _skip_unsupported(backend, dtype, shape[-1])
    q, k, v = _inputs(shape, device, dtype)
    out = dilated_attention(q, k, v, segments, rates, causal=causal, backend=backend)
    ref = dense_dilated_attention(q.cpu(), k.cpu(), v.cpu(), segments, rates, causal)
    assert out.shape == q.shape and out.dtype == q.dtype
    torch.testing.assert_close(out.double().cpu(), ref, atol=tol, rtol=tol)
    grad = torch.randn(shape, dtype=torch.float64)
    got = torch.autograd.grad(out, (q, k, v), grad.to(device=device, dtype=dtype))
    want = torch.autograd.grad(ref, (q, k, v), grad)
    for name, g, w in zip("qkv", got, want):
        torch.testing.assert_close(
            g.double().cpu(),
            w.double(),
            atol=tol,
            rtol=tol,
            msg=lambda m, name=name: f"d{name}: {m}",
        )


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("case", list(SHAPES))
@pytest.mark.parametrize(("device", "backend"), BACKEND_PARAMS)
def test_matches_dense_reference_float32(case, causal, device, backend):
    b, n, h, d, segments, rates = SHAPES[case]
    _check_against_reference((b, n, h, d), segments, rates, causal, device, backend,
                             torch.float32, 1e-4)  # fmt: skip


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize(("device", "backend"), BACKEND_PARAMS)
def test_matches_dense_reference_bfloat16(causal, device, backend):
    shape, segments, rates = (2, 50, 5, 16), [6, 10, 50], [4, 3, 7]
    _check_against_reference(shape, segments, rates, causal, device, backend, torch.bfloat16, 5e-2)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize(("device", "backend"), BACKEND_PARAMS)
def test_single_full_branch_equals_sdpa(causal, device, backend):
    _skip_unsupported(backend, torch.float32, 16)
    q, k, v = _inputs((2, 33, 4, 16), device)
    out = dilated_attention(q, k, v, [64], [1], causal=causal, backend=backend)
    sdpa = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=causal
    ).transpose(1, 2)
    torch.testing.assert_close(out, sdpa, atol=1e-5, rtol=1e-5)
    grads = torch.autograd.grad(out.square().sum(), (q, k, v))
    sdpa_grads = torch.autograd.grad(sdpa.square().sum(), (q, k, v))
    for g, w in zip(grads, sdpa_grads):
        torch.testing.assert_close(g, w, atol=1e-4, rtol=1e-4)


def test_uncovered_positions_are_zero_and_get_no_gradient():
    # rates 2 and 4 from offset h mod r: head 0 never sees odd positions.
    q, k, v = _inputs((1, 32, 1, 8))
    out = dilated_attention(q, k, v, [8, 16], [2, 4], causal=True)
    uncovered = multiplicity(32, 0, [8, 16], [2, 4], causal=True).sum(-1) == 0
    assert uncovered.sum() == 16
    assert torch.all(out[0, uncovered] == 0) and torch.all(out[0, ~uncovered] != 0)
    (dq,) = torch.autograd.grad(out.sum(), (q,))
    assert torch.all(dq[0, uncovered] == 0)


def test_merge_weight_gradient_matters():
    """The reference check is strong enough to catch detached merge weights (a known bug)."""
    segments, rates = [8, 32], [1, 2]
    q, k, v = _inputs((1, 32, 2, 8))
    out = dilated_attention(q, k, v, segments, rates, causal=True)
    # Merge with the weights exp(lse_i - lse) treated as constants, as some public code does.
    branch_outs, branch_lses = [], []
    for w, r in zip(segments, rates):
        o = dilated_attention(q, k, v, [w], [r], causal=True)
        lse = torch.stack([_branch_lse(q, k, w, r, h) for h in range(2)], dim=-1)
        branch_outs.append(o)
        branch_lses.append(lse)
    lse_all = torch.logsumexp(torch.stack(branch_lses), dim=0)
    detached = sum(
        o * torch.exp(lse - lse_all).detach().unsqueeze(-1)
        for o, lse in zip(branch_outs, branch_lses)
    )
    torch.testing.assert_close(detached, out, atol=1e-5, rtol=1e-5)  # same forward ...
    (good,) = torch.autograd.grad(out.square().sum(), (q,))
    (bad,) = torch.autograd.grad(detached.square().sum(), (q,))
    assert (good - bad).abs().max() > 1e-3  # ... different gradients


def _branch_lse(q, k, w, r, head):
    """Log-sum-exp of one branch for one head, (1, N), -inf where the branch selects nothing."""
    n, d = q.shape[1], q.shape[-1]
    m = multiplicity(n, head, [w], [r], causal=True)
    s = (q[0, :, head] @ k[0, :, head].T) * d**-0.5
    return torch.logsumexp(s.masked_fill(m == 0, float("-inf")), dim=-1)[None]


def test_explicit_scale():
    q, k, v = _inputs((1, 20, 2, 4))
    out = dilated_attention(q, k, v, [8, 20], [1, 2], scale=0.3)
    ref = dense_dilated_attention(q, k, v, [8, 20], [1, 2], scale=0.3)
    torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=1e-5)


def test_inference_mode_and_no_grad():
    q, k, v = (x.detach() for x in _inputs((1, 40, 2, 8)))
    ref = dense_dilated_attention(q, k, v, [16, 32], [1, 2], causal=True)
    with torch.inference_mode():
        out = dilated_attention(q, k, v, [16, 32], [1, 2], causal=True)
    torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=1e-5)


def test_chunked_calls_match_one_call(monkeypatch):
    """Splitting segments over many kernel calls (as at long N) changes nothing."""
    q, k, v = _inputs((2, 64, 3, 8))
    whole = dilated_attention(q, k, v, [8, 16], [1, 2], causal=True)
    monkeypatch.setattr("longnet_cli.model.attention.ROWS_PER_CALL", 1)
    assert len(plan_calls(64, 3, [8, 16], [1, 2], batch=2, rows_per_call=1)) > 8
    chunked = dilated_attention(q, k, v, [8, 16], [1, 2], causal=True)
    torch.testing.assert_close(chunked, whole, atol=1e-6, rtol=1e-6)


def test_plan_covers_each_selected_position_once():
    n, h, segments, rates = 50, 5, [6, 10, 50], [4, 3, 7]
    seen = torch.zeros(len(segments), n, h, dtype=torch.long)
    for g in plan_calls(n, h, segments, rates, rows_per_call=7):
        for i in range(g.offsets):
            heads = [g.offset + i + j * g.step for j in range(g.heads)]
            assert max(heads) < h
            for s in range(g.segments):
                for t in range(g.length):
                    pos = g.start + i + s * g.segment_stride + t * g.step
                    assert pos < n
                    seen[g.branch, pos, heads] += 1
    for i, (w, r) in enumerate(zip(segments, rates)):
        want = torch.tensor([[(p % w) % r == head % r for head in range(h)] for p in range(n)])
        assert torch.equal(seen[i], want.long())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"segment_lengths": [8, 16], "dilation_rates": [1]}, "same length"),
        ({"segment_lengths": [], "dilation_rates": []}, "at least one"),
        ({"segment_lengths": [0], "dilation_rates": [1]}, "positive"),
        ({"segment_lengths": [8], "dilation_rates": [1.5]}, "positive integers"),
    ],
)
def test_bad_branches_raise(kwargs, message):
    q, k, v = _inputs((1, 8, 1, 4))
    with pytest.raises(ValueError, match=message):
        dilated_attention(q, k, v, **kwargs)


def test_bad_shapes_and_backend_raise():
    q, k, v = _inputs((1, 8, 2, 4))
    with pytest.raises(ValueError, match="same shape"):
        dilated_attention(q, k[:, :4], v, [4], [1])
    with pytest.raises(ValueError, match="unknown attention backend"):
        dilated_attention(q, k, v, [4], [1], backend="cudnn")


def test_kernel_selection():
    from longnet_cli.model.kernels import flash_attn_available, select_kernel

    q = torch.empty(1, 8, 2, 16)
    assert select_kernel("auto", q).name == "torch-cpu"
    assert select_kernel("math", q).name == "math"
    with pytest.raises(ValueError, match="flash-attn"):
        select_kernel("flash-attn", q)  # not installed here, or not on a CPU
    with pytest.raises(ValueError, match="does not run on device 'meta'"):
        select_kernel("torch", torch.empty(1, 8, 2, 16, device="meta"))
    assert select_kernel("auto", torch.empty(1, 8, 2, 16, device="meta")).name == "math"
    assert ("flash-attn" in available_backends("cuda")) == flash_attn_available()


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize(
    ("segments", "rates", "causal"),
    [([4, 8], [1, 2], True), ([6, 12], [2, 3], False), ([5, 12], [1, 4], False)],
)
def test_float64_gradcheck(backend, segments, rates, causal):
    """Users check gradients in float64: the merged lse stays float64 for the CPU kernel."""
    q, k, v = _inputs((1, 12, 3, 4), dtype=torch.float64)

    def fn(q, k, v):
        return dilated_attention(q, k, v, segments, rates, causal=causal, backend=backend)

    assert fn(q, k, v).dtype == torch.float64
    assert torch.autograd.gradcheck(fn, (q, k, v))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_float64_transformer_backward(backend):
    from longnet_cli.model.transformer import LongNetTransformer

    torch.manual_seed(0)
    model = LongNetTransformer(
        num_tokens=20, dim=16, depth=1, dim_head=4, heads=4, ff_mult=2,
        segment_lengths=(8, 16), dilation_rates=(1, 2), backend=backend,
    ).double()  # fmt: skip
    tokens = torch.randint(0, 20, (2, 19))
    model.loss(tokens).backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and g.dtype == torch.float64 for g in grads)
    assert all(torch.isfinite(g).all() for g in grads)
    # the same model in float32 gives the same gradients to float32 precision
    single = copy.deepcopy(model).float()
    single.zero_grad()
    single.loss(tokens).backward()
    for p, s in zip(model.parameters(), single.parameters()):
        torch.testing.assert_close(s.grad.double(), p.grad, atol=1e-4, rtol=1e-3)


def test_merge_into_matches_the_log_sum_exp_formula():
    """The one-pass merge (lerp by sigmoid of the lse difference) against the textbook
    formula, for float32 and a bfloat16 call output, with a never-merged (-inf) row."""
    from longnet_cli.model.attention import merge_into

    torch.manual_seed(0)
    out_acc, out_g = torch.randn(2, 5, 3, 8), torch.randn(2, 5, 3, 8)
    lse_acc, lse_g = torch.randn(2, 5, 3) * 4, torch.randn(2, 5, 3) * 4
    lse_acc[0, 0, 0] = float("-inf")
    out_acc[0, 0, 0] = 0
    for dtype in (torch.float32, torch.bfloat16):
        g = out_g.to(dtype)
        new = torch.logaddexp(lse_acc, lse_g)
        want = (
            out_acc * torch.exp(lse_acc - new)[..., None]
            + g.float() * torch.exp(lse_g - new)[..., None]
        )
        got_out, got_lse = out_acc.clone(), lse_acc.clone()
        merge_into(got_out, got_lse, g, lse_g)
        torch.testing.assert_close(got_out, want, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(got_lse, new)
        assert torch.equal(got_out[0, 0, 0], g[0, 0, 0].float())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(
    ("n", "segments", "rates"), [(48, [16, 48], [1, 2]), (37, [8, 16], [1, 2]), (32, [32], [1])]
)
def test_reused_first_branch_results_change_nothing(monkeypatch, dtype, n, segments, rates):
    """Branch 0's results taken as the accumulators (one whole rate-1 call), unfilled buffers
    (rate-1 branch 0) and the filled ones give bit-identical outputs and gradients."""
    import longnet_cli.model.attention as attention

    q, k, v = _inputs((2, n, 4, 8), dtype=dtype)
    grad = torch.randn(2, n, 4, 8, dtype=dtype)

    def run():
        out = dilated_attention(q, k, v, segments, rates, causal=True)
        return out, torch.autograd.grad(out, (q, k, v), grad)

    fast = run()
    monkeypatch.setattr(attention, "whole_first_call", lambda calls, shape: None)
    unfilled = run()
    monkeypatch.setattr(attention, "first_branch_covers", lambda calls: False)
    filled = run()
    for a, b, c in zip([fast[0], *fast[1]], [unfilled[0], *unfilled[1]], [filled[0], *filled[1]]):
        assert torch.equal(a, b) and torch.equal(b, c)
