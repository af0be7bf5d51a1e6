"""Values and gradients of every entry point against the float64 math SDPA."""
import pytest
import torch

import flashattn
from conftest import assert_close, f32_scale, grads_of, rand_qkv, sdpa_reference, visible

# (batch, seqlen_q, seqlen_k, heads_q, heads_k, head_dim)
SHAPES = [
    (2, 33, 33, 2, 2, 32),   # square, sizes off the tile grid
    (1, 17, 70, 4, 2, 64),   # seqlen_q < seqlen_k, GQA
    (2, 70, 17, 4, 1, 16),   # seqlen_q > seqlen_k (causal: empty rows), MQA
]
MASKS = {
    "none": dict(causal=False, window_size=(-1, -1)),
    "causal": dict(causal=True, window_size=(-1, -1)),
    "window": dict(causal=False, window_size=(8, 3)),
    "causal-window": dict(causal=True, window_size=(5, -1)),
}


def check_against_reference(q, k, v, out, lse, mask, atol_o, atol_g, scale=None):
    d = q.shape[-1]
    scale = f32_scale(d, scale)
    ref = sdpa_reference(q, k, v, mask, scale=scale)
    assert out.shape == q.shape and out.dtype == q.dtype
    assert_close(out, ref, atol_o, "out")
    # LSE of the scaled, masked scores; -inf where a row sees no key.
    group = q.shape[2] // k.shape[2]
    s = torch.einsum("bihd,bjhd->bhij", q.double(), k.double().repeat_interleave(group, 2)) * scale
    ref_lse = s.masked_fill(~mask.expand_as(s), float("-inf")).logsumexp(-1)
    assert lse.dtype == torch.float32 and lse.shape == ref_lse.shape
    assert torch.equal(torch.isinf(lse), torch.isinf(ref_lse)), "lse: -inf rows differ"
    fin = torch.isfinite(ref_lse)
    assert_close(lse[fin], ref_lse[fin], max(atol_o, 1e-6), "lse")
    dout = torch.randn(out.shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    got = grads_of(out, (q, k, v), dout.to(out.dtype))
    want = grads_of(ref, (q, k, v), dout)
    for name, g, w in zip(("dq", "dk", "dv"), got, want):
        assert g.shape == w.shape
        assert_close(g, w, atol_g, name)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("mask_name", list(MASKS))
def test_dense(config, shape, mask_name):
    dtype, algorithm, atol_o, atol_g = config
    b, sq, sk, hq, hk, d = shape
    q, k, v = rand_qkv(b, sq, sk, hq, hk, d, dtype)
    opts = MASKS[mask_name]
    out, lse, rng = flashattn.flash_attn_func(q, k, v, return_attn_probs=True, algorithm=algorithm, **opts)
    assert rng is None
    check_against_reference(q, k, v, out, lse, visible(sq, sk, **opts), atol_o, atol_g)


def test_softmax_scale_and_default(config):
    dtype, algorithm, atol_o, atol_g = config
    q, k, v = rand_qkv(1, 20, 24, 2, 2, 32, dtype, seed=3)
    out, lse, _ = flashattn.flash_attn_func(q, k, v, softmax_scale=0.3, return_attn_probs=True, algorithm=algorithm)
    check_against_reference(q, k, v, out, lse, visible(20, 24), atol_o, atol_g, scale=0.3)


def test_packed_and_strided_inputs_match():
    # qkvpacked passes strided views; the result must equal contiguous inputs.
    qkv = torch.randn(2, 40, 3, 4, 32, dtype=torch.float32, requires_grad=True)
    out = flashattn.flash_attn_qkvpacked_func(qkv, causal=True)
    q, k, v = (t.detach().contiguous().requires_grad_() for t in qkv.unbind(2))
    ref = flashattn.flash_attn_func(q, k, v, causal=True)
    assert torch.equal(out, ref)
    dout = torch.randn_like(out)
    (dqkv,) = torch.autograd.grad(out, qkv, dout)
    dq, dk, dv = torch.autograd.grad(ref, (q, k, v), dout)
    assert torch.equal(dqkv, torch.stack((dq, dk, dv), 2))
    # kvpacked, and a last dimension that is not contiguous (copied).
    kv = torch.stack((k, v), 2).detach()
    assert torch.equal(flashattn.flash_attn_kvpacked_func(q, kv, causal=True), ref)
    qt = q.detach().transpose(1, 3).contiguous().transpose(1, 3)
    assert qt.stride(-1) != 1
    assert torch.equal(flashattn.flash_attn_func(qt, k, v, causal=True), ref)


def test_gradient_recorded_only_when_needed():
    # Without inputs that need a gradient (or under no_grad) the operator
    # skips the autograd node; with any one that does, the gradient reaches
    # exactly the inputs that require it, with the values of a full call.
    q, k, v = rand_qkv(1, 24, 24, 2, 2, 32, torch.float32, seed=7, requires_grad=False)
    out = flashattn.flash_attn_func(q, k, v, causal=True)
    assert not out.requires_grad and out.grad_fn is None
    qg, kg, vg = (t.clone().requires_grad_() for t in (q, k, v))
    with torch.no_grad():
        out_ng = flashattn.flash_attn_func(qg, kg, vg, causal=True)
    assert not out_ng.requires_grad and torch.equal(out_ng, out)
    full = flashattn.flash_attn_func(qg, kg, vg, causal=True)
    assert full.requires_grad and torch.equal(full, out)
    dout = torch.randn(out.shape, generator=torch.Generator().manual_seed(8))
    dq, dk, dv = torch.autograd.grad(full, (qg, kg, vg), dout)
    only_v = flashattn.flash_attn_func(q, k, vg, causal=True)
    assert only_v.requires_grad and torch.equal(only_v, out)
    (dv_only,) = torch.autograd.grad(only_v, (vg,), dout)
    assert torch.equal(dv_only, dv)


def test_deterministic_backward_is_bit_identical():
    q, k, v = rand_qkv(2, 64, 64, 4, 2, 32, torch.float32, seed=5)
    dout = torch.randn(q.shape)
    runs = [grads_of(flashattn.flash_attn_func(q, k, v, causal=True, deterministic=True), (q, k, v), dout)
            for _ in range(2)]
    for a, b in zip(*runs):
        assert torch.equal(a, b)


@pytest.mark.parametrize("causal", [False, True])
def test_varlen_matches_per_sequence_dense(config, causal):
    dtype, algorithm, atol_o, atol_g = config
    lens_q, lens_k = [5, 0, 19, 33], [7, 4, 19, 20]
    hq, hk, d = 4, 2, 32
    cu_q = torch.tensor([0] + torch.tensor(lens_q).cumsum(0).tolist(), dtype=torch.int32)
    cu_k = torch.tensor([0] + torch.tensor(lens_k).cumsum(0).tolist(), dtype=torch.int32)
    g = torch.Generator().manual_seed(11)
    mk = lambda n, h: torch.randn(n, h, d, generator=g, dtype=torch.float64).to(dtype).requires_grad_()
    q, k, v = mk(sum(lens_q), hq), mk(sum(lens_k), hk), mk(sum(lens_k), hk)
    out, lse, _ = flashattn.flash_attn_varlen_func(q, k, v, cu_q, cu_k, max(lens_q), max(lens_k), causal=causal,
                                                   return_attn_probs=True, algorithm=algorithm)
    assert out.shape == q.shape and lse.shape == (hq, q.shape[0])
    dout = torch.randn(out.shape, generator=g, dtype=torch.float64).to(dtype)
    dq, dk, dv = grads_of(out, (q, k, v), dout)
    for s in range(len(lens_q)):
        rq, rk = slice(cu_q[s], cu_q[s + 1]), slice(cu_k[s], cu_k[s + 1])
        qs, ks, vs = (t.detach()[r].unsqueeze(0).requires_grad_() for t, r in ((q, rq), (k, rk), (v, rk)))
        ref, ref_lse, _ = flashattn.flash_attn_func(qs, ks, vs, causal=causal, return_attn_probs=True,
                                                    algorithm=algorithm)
        assert_close(out[rq], ref[0], atol_o, f"out of sequence {s}")
        assert torch.equal(torch.isinf(lse[:, rq]), torch.isinf(ref_lse[0]))
        if qs.shape[1] and ks.shape[1]:
            gq, gk, gv = grads_of(ref, (qs, ks, vs), dout[rq].unsqueeze(0))
            assert_close(dq[rq], gq[0], atol_g, f"dq of sequence {s}")
            assert_close(dk[rk], gk[0], atol_g, f"dk of sequence {s}")
            assert_close(dv[rk], gv[0], atol_g, f"dv of sequence {s}")
        if s == 2:  # and the dense result itself against the reference
            ref, ref_lse, _ = flashattn.flash_attn_func(qs, ks, vs, causal=causal, return_attn_probs=True,
                                                        algorithm=algorithm)
            check_against_reference(qs, ks, vs, ref, ref_lse, visible(qs.shape[1], ks.shape[1], causal=causal),
                                    atol_o, atol_g)
