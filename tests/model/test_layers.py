"""Positions (rotary, xPos) and layers (RMSNorm, SwiGLU, DilatedAttention) against references.

The references here are written independently from the formulas: float64 pairwise rotations,
the paper's xPos decay, a hand-written RMS norm and the dense dilated-attention reference.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from reference import dense_dilated_attention

from longnet_cli.model.layers import DilatedAttention, RMSNorm, SwiGLU
from longnet_cli.model.positions import RotaryEmbedding, XPos, apply_positions

THETA = 10000.0
XPOS_BASE = 512.0

# --------------------------------------------------------------------------- references


def ref_angles(positions: torch.Tensor, head_dim: int) -> torch.Tensor:
    """(N,) positions -> (N, D/2) float64 rotation angles, pair c at frequency theta^(-2c/D)."""
    freqs = torch.tensor([THETA ** (-2 * c / head_dim) for c in range(head_dim // 2)])
    return positions.double()[:, None] * freqs.double()[None, :]


def ref_xpos_log_scale(positions: torch.Tensor, head_dim: int, block: int | None) -> torch.Tensor:
    """(N,) -> (N, D/2) float64 log of xPos's q scale zeta_c^(t/base), t centred in its block."""
    t = positions.double()
    if block is not None:
        t = t - (torch.div(positions, block, rounding_mode="floor") * block + block / 2)
    zeta = torch.tensor([(2 * c / head_dim + 0.4) / 1.4 for c in range(head_dim // 2)])
    return t[:, None] * torch.log(zeta.double())[None, :] / XPOS_BASE


def ref_rotate(x: torch.Tensor, angles: torch.Tensor, log_scale=None) -> torch.Tensor:
    """Rotate pairs (c, c + D/2) of x (B, N, H, D) by angles (N, D/2), optionally scaled."""
    x = x.double()
    half = x.shape[-1] // 2
    cos, sin = angles.cos()[:, None, :], angles.sin()[:, None, :]
    a, b = x[..., :half], x[..., half:]
    out = torch.cat([a * cos - b * sin, a * sin + b * cos], dim=-1)
    if log_scale is not None:
        out = out * torch.exp(log_scale).repeat(1, 2)[:, None, :]
    return out


def ref_rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    x = x.double()
    return x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps) * weight.double()


def ref_score(q, k, i, j, head_dim, xpos_log_q=None, xpos_log_k=None) -> float:
    """Score of q at position i and k at j from the closed form of rotary (and xPos) attention."""
    half = head_dim // 2
    q, k = q.double(), k.double()
    total = 0.0
    for c in range(half):
        angle = (i - j) * THETA ** (-2 * c / head_dim)
        q1, q2, k1, k2 = q[c], q[c + half], k[c], k[c + half]
        term = (q1 * k1 + q2 * k2) * math.cos(angle) + (q1 * k2 - q2 * k1) * math.sin(angle)
        if xpos_log_q is not None:
            term = term * math.exp(xpos_log_q[c] - xpos_log_k[c])
        total += float(term)
    return total


def encode_at(encoding, q, k, i, j):
    """q encoded at global position i and k at j; q, k are (D,) vectors."""
    q4, k4 = q.view(1, 1, 1, -1), k.view(1, 1, 1, -1)
    q_enc = encoding(q4, q4, offset=i)[0]
    k_enc = encoding(k4, k4, offset=j)[1]
    return q_enc.flatten(), k_enc.flatten()


# --------------------------------------------------------------------------- rotary


def test_rotary_matches_pairwise_rotation():
    x = torch.randn(2, 50, 3, 16)
    positions = torch.arange(123, 173)
    got_q, got_k = RotaryEmbedding(16)(x, x, offset=123)
    want = ref_rotate(x, ref_angles(positions, 16))
    torch.testing.assert_close(got_q.double(), want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got_k.double(), want, atol=1e-5, rtol=1e-5)


def test_rotary_score_depends_only_on_distance():
    rotary = RotaryEmbedding(32)
    q, k = torch.randn(32), torch.randn(32)
    for i, j in [(5, 0), (300, 17), (40, 40), (1000, 999)]:
        want = ref_score(q, k, i, j, 32)
        for shift in (0, 12_345, 999_000):
            qe, ke = encode_at(rotary, q, k, i + shift, j + shift)
            assert float(qe @ ke) == pytest.approx(want, abs=1e-3, rel=1e-4), (i, j, shift)


@pytest.mark.parametrize("encoding", [RotaryEmbedding(16), XPos(16), XPos(16, block_size=64)])
def test_offset_encodes_a_chunk_like_its_slice_of_the_whole(encoding):
    q, k = torch.randn(2, 300, 2, 16), torch.randn(2, 300, 2, 16)
    full_q, full_k = encoding(q, k)
    for start, stop in [(0, 100), (37, 137), (250, 300)]:
        part_q, part_k = encoding(q[:, start:stop], k[:, start:stop], offset=start)
        torch.testing.assert_close(part_q, full_q[:, start:stop], atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(part_k, full_k[:, start:stop], atol=1e-6, rtol=1e-6)


def test_rotary_rejects_odd_head_dim():
    with pytest.raises(ValueError, match="even"):
        RotaryEmbedding(15)


# --------------------------------------------------------------------------- xPos


@pytest.mark.parametrize("block", [None, 32768])
def test_xpos_finite_at_one_million_positions(block):
    n = 1_000_000
    xpos = XPos(64, block_size=block)
    tables = xpos.tables(n)
    for table in (tables.cos, tables.sin, tables.scale):
        assert table.shape == (n, 32) and table.dtype == torch.float32
        assert torch.isfinite(table).all()
    assert (tables.scale > 0).all()
    # the end of the sequence, encoded as a chunk, matches the slice of the whole
    tail = xpos.tables(64, offset=n - 64)
    torch.testing.assert_close(tail.scale, tables.scale[-64:], atol=0, rtol=1e-6)
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        q = torch.randn(1, 64, 2, 64).to(dtype)
        q_enc, k_enc = apply_positions(q, q, tail)
        assert torch.isfinite(q_enc).all() and torch.isfinite(k_enc).all(), dtype
        scores = torch.einsum("bihd,bjhd->bhij", q_enc.float(), k_enc.float())
        assert torch.isfinite(scores).all(), dtype


@pytest.mark.parametrize(
    ("block", "pairs"),
    [
        # in-block positions away from the block edges, where the exponent clamp does not act
        (32768, [(500, 400), (20_000, 19_000), (32_768 + 9000, 32_768 + 8000), (999_000, 998_500)]),
        (None, [(5, 0), (300, 17), (3000, 1000)]),
    ],
)
def test_xpos_score_is_rotary_times_distance_decay(block, pairs):
    xpos = XPos(32, block_size=block)
    q, k = torch.randn(32), torch.randn(32)
    for i, j in pairs:
        log_scale = ref_xpos_log_scale(torch.tensor([i, j]), 32, block)
        want = ref_score(q, k, i, j, 32, log_scale[0], log_scale[1])
        qe, ke = encode_at(xpos, q, k, i, j)
        assert float(qe @ ke) == pytest.approx(want, abs=1e-4, rel=1e-4), (i, j)


def test_xpos_relative_within_blocks_and_decays_with_distance():
    block = 4096
    xpos = XPos(32, block_size=block)
    q = k = torch.randn(32)
    for distance in (0, 100, 1000):
        scores = []
        for block_index in (0, 3, 200):  # the same pair of in-block positions, other blocks
            i = block_index * block + 2500
            qe, ke = encode_at(xpos, q, k, i, i - distance)
            scores.append(float(qe @ ke))
        assert scores == pytest.approx([scores[0]] * 3, rel=1e-4, abs=1e-4)
    # only the fastest-decaying pair (c = 0, zeta = 0.4/1.4): its score shrinks with distance
    q = torch.zeros(32)
    q[0] = q[16] = 1.0
    near = encode_at(xpos, q, q, 2100, 2099)
    far = encode_at(xpos, q, q, 3900, 100)
    decay = (0.4 / 1.4) ** (3800 / XPOS_BASE)
    want_near = 2 * math.cos(1.0) * (0.4 / 1.4) ** (1 / XPOS_BASE)  # pair 0 turns 1 rad/token
    assert float(near[0] @ near[1]) == pytest.approx(want_near, rel=1e-4)
    assert abs(float(far[0] @ far[1])) <= 2 * decay * 1.001


def six_pass_positions(q, k, tables):
    """Positions as computed before the launch cuts: widen to float32, rotate each half with
    four multiplies, a subtraction, an addition and a concatenation, the xPos scale folded into
    the tables of every layer. The launch-cut code must give these values."""

    def rotate(x, cos, sin):
        x1, x2 = x.to(torch.promote_types(x.dtype, torch.float32)).chunk(2, dim=-1)
        cos, sin = cos[:, None], sin[:, None]
        return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).to(x.dtype)

    if tables.scale is None:
        return rotate(q, tables.cos, tables.sin), rotate(k, tables.cos, tables.sin)
    scale = tables.scale
    limit = min(40.0, 0.5 * math.log(torch.finfo(q.dtype).max) - 1.0)
    if limit < 40.0:
        scale = scale.clamp(math.exp(-limit), math.exp(limit))
    return (
        rotate(q, tables.cos * scale, tables.sin * scale),
        rotate(k, tables.cos / scale, tables.sin / scale),
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("encoding", [RotaryEmbedding(32), XPos(32), XPos(32, block_size=256)])
def test_positions_equal_the_six_pass_formula(encoding, dtype):
    """One rotate-half and two passes (a multiply, a multiply-add) per tensor: the same values
    as before within one rounding of the result (the multiply-add rounds once, not twice)."""
    q, k = torch.randn(2, 300, 3, 32).to(dtype), torch.randn(2, 300, 3, 32).to(dtype)
    tables = encoding.tables(300, 700)
    got, want = apply_positions(q, k, tables), six_pass_positions(q, k, tables)
    tolerance = {torch.float32: 1e-6, torch.float64: 1e-6}.get(dtype, 1e-2)  # bf16 / fp16 ulp
    for g, w in zip(got, want):
        assert g.dtype == dtype
        torch.testing.assert_close(g.double(), w.double(), atol=tolerance, rtol=tolerance)


def test_position_tables_applied_once_per_forward_and_shared_by_slices(monkeypatch):
    from longnet_cli.model import positions as positions_module
    from longnet_cli.model.transformer import LongNetTransformer

    computed = []
    full_width = positions_module._full_width

    def counting(*args):
        computed.append(args[0].shape)
        return full_width(*args)

    monkeypatch.setattr(positions_module, "_full_width", counting)
    model = LongNetTransformer(
        64, dim=32, depth=3, heads=2, segment_lengths=[8, 16], dilation_rates=[1, 2],
        positions="xpos",
    )  # fmt: skip
    model.loss(torch.randint(0, 64, (1, 40)))
    half = model.config.dim_head // 2
    assert computed == [(39, half)]  # one set of tables for three layers, not one per layer
    tables = model.position_encoding.tables(39, 0, "cpu")
    part = tables.slice(10, 20).slice(2, 5)  # positions 12..14
    for whole, piece in zip(tables.applied(), part.applied()):
        assert piece.data_ptr() == whole[12:15].data_ptr() and piece.shape == whole[12:15].shape
    assert len(computed) == 1
    tables.applied(4.0)  # float16's clamp: its own tables, computed once
    tables.applied(4.0)
    assert len(computed) == 2
    # a slice of tables that have none computed (chunked inference) computes its own, for its
    # positions only, with the values of the whole's
    fresh = model.position_encoding.tables(39, 1, "cpu")
    own = fresh.slice(10, 20).applied()
    assert computed[-1] == (10, half) and not fresh._applied
    for whole, piece in zip(fresh.applied(), own):
        torch.testing.assert_close(piece, whole[10:20], atol=0, rtol=0)


def test_rms_norm_without_torchs_rms_norm_is_the_formula(monkeypatch):
    """torch < 2.4 (which pyproject still allows) has no F.rms_norm: the formula runs."""
    norm = RMSNorm(12)
    x = torch.randn(3, 5, 12)
    want = norm(x)
    monkeypatch.delattr(F, "rms_norm")
    torch.testing.assert_close(norm(x), want, atol=1e-6, rtol=1e-6)


def old_rms_norm(x, weight, eps=1e-6):
    """RMSNorm as computed before the launch cuts (five kernels)."""
    x32 = x.to(torch.promote_types(x.dtype, torch.float32))
    return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype) * weight


@pytest.mark.parametrize(
    ("dtype", "weight_dtype"),
    [(torch.float32, torch.float32), (torch.bfloat16, torch.float32),
     (torch.bfloat16, torch.bfloat16), (torch.float64, torch.float64)],
)  # fmt: skip
def test_rms_norm_equals_the_unfused_formula_with_its_gradients(dtype, weight_dtype):
    """torch's rms_norm (one fused kernel where x and the gain share a dtype) gives the values,
    dtype and gradients of the five-op formula it replaced (bf16 q of qk_norm under autocast
    with float32 gains: the output is promoted to float32, as before)."""
    norm = RMSNorm(48, dtype=weight_dtype)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(48))
    x = torch.randn(3, 7, 48).to(dtype).requires_grad_()
    x_old = x.detach().clone().requires_grad_()
    w_old = norm.weight.detach().clone().requires_grad_()
    got, want = norm(x), old_rms_norm(x_old, w_old)
    assert got.dtype == want.dtype
    grad = torch.randn(got.shape).to(got.dtype)
    got.backward(grad)
    want.backward(grad)
    tolerance = 1e-6 if dtype != torch.bfloat16 else 1e-2
    for g, w in [(got, want), (x.grad, x_old.grad), (norm.weight.grad, w_old.grad)]:
        torch.testing.assert_close(g.double(), w.double(), atol=tolerance, rtol=tolerance)


# --------------------------------------------------------------------------- norms, ff


def test_rms_norm_matches_formula():
    norm = RMSNorm(12)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(12))
    x = torch.randn(3, 5, 12)
    torch.testing.assert_close(norm(x).double(), ref_rms_norm(x, norm.weight), atol=1e-5, rtol=0)


def test_swiglu_matches_formula():
    ff = SwiGLU(8, 20)
    x = torch.randn(2, 3, 8)
    gate = x.double() @ ff.gate_proj.weight.double().T
    up = x.double() @ ff.up_proj.weight.double().T
    want = (gate * torch.sigmoid(gate) * up) @ ff.down_proj.weight.double().T
    torch.testing.assert_close(ff(x).double(), want, atol=1e-5, rtol=0)


# --------------------------------------------------------------------------- DilatedAttention


def manual_attention(module: DilatedAttention, x: torch.Tensor, offset: int = 0, project=True):
    """Module output computed from its weights and the dense float64 reference.

    With ``project=False``: the attention output before the out projection, (B, N, H*Dh).
    """
    b, n, _ = x.shape
    h, d = module.heads, module.dim_head
    x = x.double()
    q, k, v = (x @ p.weight.double().T for p in (module.q_proj, module.k_proj, module.v_proj))
    q, k, v = (t.view(b, n, h, d) for t in (q, k, v))
    if module.q_norm is not None:
        q, k = ref_rms_norm(q, module.q_norm.weight), ref_rms_norm(k, module.k_norm.weight)
    positions = torch.arange(offset, offset + n)
    if module.position_kind != "none":
        angles = ref_angles(positions, d)
        log_scale = None
        if module.position_kind == "xpos":
            log_scale = ref_xpos_log_scale(positions, d, module.position_encoding.block_size)
        q = ref_rotate(q, angles, log_scale)
        k = ref_rotate(k, angles, -log_scale if log_scale is not None else None)
    out = dense_dilated_attention(
        q, k, v, module.segment_lengths, module.dilation_rates, module.causal
    )
    out = out.reshape(b, n, h * d)
    return out @ module.out_proj.weight.double().T if project else out


CASES = {
    "one-branch": dict(segment_lengths=[16], dilation_rates=[2]),
    "branches": dict(segment_lengths=[8, 16, 32], dilation_rates=[1, 2, 4]),
    "rotary": dict(segment_lengths=[8, 32], dilation_rates=[1, 3], rotary=True),
    "xpos": dict(segment_lengths=[8, 16], dilation_rates=[1, 2], use_xpos=True),
    "qk-norm": dict(segment_lengths=[8, 16], dilation_rates=[1, 2], qk_norm=True),
    "dim-head": dict(segment_lengths=[12, 24], dilation_rates=[1, 2], dim_head=6, rotary=True),
}


@pytest.mark.parametrize("offset", [0, 1000])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("case", list(CASES))
def test_dilated_attention_matches_manual_reference(case, causal, offset):
    attn = DilatedAttention(32, 4, causal=causal, **CASES[case])
    if attn.q_norm is not None:  # non-trivial gains, different for q and k
        with torch.no_grad():
            attn.q_norm.weight.copy_(torch.rand(attn.dim_head) + 0.5)
            attn.k_norm.weight.copy_(torch.rand(attn.dim_head) + 0.5)
    x = torch.randn(2, 37, 32)
    want = manual_attention(attn, x, offset)
    torch.testing.assert_close(attn(x, offset=offset).double(), want, atol=1e-4, rtol=1e-4)


def test_dilated_attention_gradients_match_reference():
    attn = DilatedAttention(
        16, 2, causal=True, segment_lengths=[8, 16], dilation_rates=[1, 2], rotary=True
    )
    x = torch.randn(1, 30, 16, requires_grad=True)
    x64 = x.detach().double().requires_grad_()
    grad_out = torch.randn(1, 30, 16)
    got = torch.autograd.grad(attn(x), (x, attn.q_proj.weight), grad_out)
    ref_out = manual_attention(attn, x64)
    want_dx = torch.autograd.grad(ref_out, x64, grad_out.double())[0]
    torch.testing.assert_close(got[0].double(), want_dx, atol=1e-4, rtol=1e-4)
    assert torch.isfinite(got[1]).all() and got[1].abs().sum() > 0


def test_qk_norm_normalises_q_and_k_only():
    attn = DilatedAttention(32, 4, 1, 16, qk_norm=True)
    shapes = {name: tuple(p.shape) for name, p in attn.named_parameters() if "norm" in name}
    assert shapes == {"q_norm.weight": (8,), "k_norm.weight": (8,)}
    # scaling v's projection scales the output linearly: v is not normalised
    x = torch.randn(1, 20, 32)
    before = attn(x)
    with torch.no_grad():
        attn.v_proj.weight.mul_(3.0)
        attn.q_proj.weight.mul_(5.0)  # q is normalised per head: no effect
    torch.testing.assert_close(attn(x), 3.0 * before, atol=1e-5, rtol=1e-4)


def test_community_signature_is_one_branch():
    torch.manual_seed(1)
    positional = DilatedAttention(32, 4, 2, 16, 0.0, True)  # dilation_rate, segment_size, ...
    torch.manual_seed(1)
    keyword = DilatedAttention(32, 4, causal=True, segment_lengths=[16], dilation_rates=[2])
    assert positional.segment_lengths == (16,) and positional.dilation_rates == (2,)
    x = torch.randn(2, 40, 32)
    torch.testing.assert_close(positional(x), keyword(x), atol=0, rtol=0)
    named = DilatedAttention(dim=32, heads=4, dilation_rate=2, segment_size=16, causal=True)
    named.load_state_dict(keyword.state_dict())
    torch.testing.assert_close(named(x), keyword(x), atol=0, rtol=0)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(dilation_rate=2, segment_size=16, segment_lengths=[16], dilation_rates=[2]),
         ValueError, "not both"),
        ({}, ValueError, "needs branches"),
        (dict(dilation_rate=2), ValueError, "together"),
        (dict(segment_lengths=[16]), ValueError, "together"),
        (dict(segment_lengths=[16, 32], dilation_rates=[1]), ValueError, "same length"),
        (dict(dilation_rate=[1, 2], segment_size=[8, 16]), ValueError, "segment_lengths="),
        (dict(dilation_rate=2, segment_size=16, use_rel_pos_bias=True),
         NotImplementedError, "use_xpos"),
        (dict(dilation_rate=2, segment_size=16, use_xpos=True, rotary=True), ValueError, "one"),
    ],
)  # fmt: skip
def test_invalid_arguments_raise(kwargs, error, match):
    with pytest.raises(error, match=match):
        DilatedAttention(32, 4, **kwargs)


def test_dim_not_divisible_by_heads_needs_dim_head():
    with pytest.raises(ValueError, match="dim_head"):
        DilatedAttention(30, 4, 1, 8)
    attn = DilatedAttention(30, 4, 1, 8, dim_head=6)
    assert attn(torch.randn(1, 10, 30)).shape == (1, 10, 30)


def test_dropout_applies_to_attention_output_in_training_only():
    attn = DilatedAttention(16, 2, 1, 8, dropout=0.5)
    x = torch.randn(2, 20, 16)
    attn.eval()
    clean = attn(x)
    torch.testing.assert_close(clean.double(), manual_attention(attn, x), atol=1e-4, rtol=1e-4)
    attn.train()
    torch.manual_seed(7)
    dropped = attn(x)
    torch.manual_seed(7)
    keep = F.dropout(torch.ones(2, 20, 16), 0.5, training=True)  # the same draw, as a mask
    attn_out = manual_attention(attn, x, project=False)
    want = (attn_out * keep.double()) @ attn.out_proj.weight.double().T
    torch.testing.assert_close(dropped.double(), want, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(dropped, clean)


def test_dtype_and_device_apply_to_parameters():
    attn = DilatedAttention(16, 2, 1, 8, qk_norm=True, dtype=torch.float64, device="cpu")
    assert {p.dtype for p in attn.parameters()} == {torch.float64}
    x = torch.randn(1, 12, 16, dtype=torch.float64)
    out = attn(x)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, manual_attention(attn, x), atol=1e-5, rtol=1e-5)


def test_builds_on_meta_device():
    with torch.device("meta"):
        attn = DilatedAttention(768, 12, segment_lengths=[2048, 4096], dilation_rates=[1, 2])
    assert all(p.is_meta for p in attn.parameters())
    assert sum(p.numel() for p in attn.parameters()) == 4 * 768 * 768
