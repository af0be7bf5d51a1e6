"""The FP8 (float8_e4m3fn) forward of flash_attn_func / flash_attn_varlen_func
against a PyTorch emulation: the inputs dequantised in float64 (e4m3 value
times the descale of the sequence and KV head, a query head taking its KV
head's factor, as flash-attn 3) through the float64 math SDPA.

Rule (CPU): the CPU computes in float32 from the exactly dequantised inputs
(P is not rounded to e4m3) and rounds O to bfloat16, so its max abs error
is at most 2x that of the same emulation computed in float32 and rounded to
bfloat16, plus 2^-12 max|O|; the LSE within 2x the float32 emulation's
error plus 1e-5.

Rule (CUDA, compute capability 9.0; tests/gpu/test_gpu_fp8.cpp's): the
kernel rounds P to e4m3 for the PV product (as flash-attn 3), so its
yardstick emulates that (p_rounded_emulation): max abs error at most 2x the
yardstick's plus 2^-10 max|O|, the LSE within 2x plus 1e-4 plus 2^-13 A,
where A is the largest scale * sum_c |q_c k_c| of a visible pair (the FP8
tensor cores keep about 14 bits of a dot product's running sum, an error
float32 emulation does not have), the yardstick itself within a norm-wise
relative error of 0.1 of the reference. Other GPUs raise the library's
ValueError naming ctx.device."""
import pytest
import torch

import flashattn
from conftest import block_visible, f32_scale, random_block_mask, sdpa_reference, visible

FP8 = torch.float8_e4m3fn


def quantise(x, heads_k, seed):
    """x (batch, seqlen, heads, d) float64 -> (e4m3 tensor, descale
    float32 (batch, heads_k)): each (sequence, KV head) slice's largest
    magnitude maps to 448 / u, u in [1, 2)."""
    b, s, h, d = x.shape
    g = torch.Generator().manual_seed(seed)
    amax = x.abs().reshape(b, s, heads_k, h // heads_k, d).amax(dim=(1, 3, 4)) if s else torch.zeros(b, heads_k)
    descale = (amax * (1 + torch.rand(b, heads_k, generator=g, dtype=torch.float64)) / 448).to(torch.float32)
    descale = torch.where(amax > 0, descale, 1.0)  # an empty slice: any factor
    per_head = descale.double().repeat_interleave(h // heads_k, dim=1)  # (b, h)
    return (x / per_head[:, None, :, None]).to(FP8), descale


def dequantise(t, descale, heads_k):
    """The API's rule, in float64 (exact). descale None = 1."""
    x = t.to(torch.float64)
    if descale is None:
        return x
    d = torch.broadcast_to(descale, (t.shape[0], heads_k)).double().repeat_interleave(t.shape[2] // heads_k, dim=1)
    return x * d[:, None, :, None]


def fp8_problem(b, sq, sk, hq, hk, d, seed=0, amp=2.0):
    g = torch.Generator().manual_seed(seed)
    real = [(torch.rand(b, s, h, d, generator=g, dtype=torch.float64) * 2 - 1) * amp
            for s, h in ((sq, hq), (sk, hk), (sk, hk))]
    (q, qs), (k, ks), (v, vs) = (quantise(x, hk, seed + i) for i, x in enumerate(real))
    return q, k, v, qs, ks, vs


def emulation(q, k, v, qs, ks, vs, causal, dtype, window_size=(-1, -1), mask=None):
    """Standard attention on the dequantised inputs through the math SDPA,
    in float64 (the reference) or in float32 with O rounded to bf16 (the
    yardstick). mask (broadcasting to [b, h, sq, sk]) replaces the causal /
    window rule when given."""
    hk = k.shape[2]
    qd, kd, vd = dequantise(q, qs, hk), dequantise(k, ks, hk), dequantise(v, vs, hk)
    if mask is None:
        mask = visible(q.shape[1], k.shape[1], causal, window_size)
    scale = f32_scale(q.shape[-1])
    if dtype == torch.float64:
        out = sdpa_reference(qd, kd, vd, mask, scale=scale)
    else:
        group = q.shape[2] // hk
        qt = qd.float().transpose(1, 2)
        kt = kd.float().repeat_interleave(group, 2).transpose(1, 2)
        vt = vd.float().repeat_interleave(group, 2).transpose(1, 2)
        out = torch.nn.functional.scaled_dot_product_attention(qt, kt, vt, attn_mask=mask, scale=scale)
        # SDPA gives NaN where a row sees no key; the library's O is 0 there.
        out = torch.where(mask.any(-1)[..., None], out, 0.0)
        out = out.transpose(1, 2).to(torch.bfloat16).double()
    group = q.shape[2] // hk
    s = torch.einsum("bihd,bjhd->bhij", qd.to(dtype), kd.to(dtype).repeat_interleave(group, 2)) * scale
    lse = s.masked_fill(~mask, float("-inf")).logsumexp(-1).double()
    return out, lse


def p_rounded_emulation(q, k, v, qs, ks, vs, causal, window_size=(-1, -1)):
    """The CUDA kernel's yardstick: scores in float32 from the dequantised
    inputs, P = exp(S - rowmax) rounded to e4m3 for the PV product, the row
    sum l from the unrounded P in float32, O = (P_e4m3 V) / l rounded to
    bf16, LSE = rowmax + log l. Rows that see no key: O = 0, LSE = -inf."""
    hk = k.shape[2]
    group = q.shape[2] // hk
    qd = dequantise(q, qs, hk).float().transpose(1, 2)
    kd = dequantise(k, ks, hk).float().repeat_interleave(group, 2).transpose(1, 2)
    vd = dequantise(v, vs, hk).float().repeat_interleave(group, 2).transpose(1, 2)
    mask = visible(q.shape[1], k.shape[1], causal, window_size)
    s = (qd @ kd.transpose(-1, -2)) * f32_scale(q.shape[-1])
    s = s.masked_fill(~mask, float("-inf"))
    m = s.amax(-1, keepdim=True)
    m = torch.where(torch.isfinite(m), m, 0.0)
    p = torch.exp(s - m)  # 0 where masked
    l = p.sum(-1, keepdim=True)
    o = (p.to(FP8).float() @ vd) / torch.where(l > 0, l, 1.0)
    o = o.transpose(1, 2).to(torch.bfloat16).double()
    lse = torch.where(l > 0, m + torch.log(l), float("-inf")).squeeze(-1).double()
    return o, lse


def max_err(a, b):
    """max |a - b|, equal values (the -inf LSE of empty rows) counting 0."""
    a, b = a.double(), b.double()
    return torch.where(a == b, 0.0, (a - b).abs()).max().item()


def check_rule(out, lse, ref, yard):
    ref_o, ref_lse = ref
    yard_o, yard_lse = yard
    assert out.dtype == torch.bfloat16 and lse.dtype == torch.float32
    assert torch.isfinite(out).all()
    err, err_yard = max_err(out, ref_o), max_err(yard_o, ref_o)
    assert err <= 2 * err_yard + 2 ** -12 * ref_o.abs().max().item(), f"out: {err:.3e} vs yardstick {err_yard:.3e}"
    err_lse, err_lse_yard = max_err(lse, ref_lse), max_err(yard_lse, ref_lse)
    assert err_lse <= 2 * err_lse_yard + 1e-5, f"lse: {err_lse:.3e} vs yardstick {err_lse_yard:.3e}"


@pytest.mark.parametrize("d", [64, 128, 256])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("algorithm", ["flash", "standard"])
@pytest.mark.parametrize("shape", [(2, 40, 40, 2, 2), (1, 17, 70, 4, 2), (2, 70, 17, 3, 1)],
                         ids=["square", "gqa", "mqa-sq>sk"])
def test_matches_the_dequantised_reference(d, causal, algorithm, shape):
    b, sq, sk, hq, hk = shape
    q, k, v, qs, ks, vs = fp8_problem(b, sq, sk, hq, hk, d, seed=d + sq)
    out, lse, _ = flashattn.flash_attn_func(q, k, v, causal=causal, return_attn_probs=True, algorithm=algorithm,
                                            q_descale=qs, k_descale=ks, v_descale=vs)
    assert out.shape == q.shape
    check_rule(out, lse, emulation(q, k, v, qs, ks, vs, causal, torch.float64),
               emulation(q, k, v, qs, ks, vs, causal, torch.float32))


@pytest.mark.parametrize("form", ["scalar", "per-sequence", "per-kv-head", "full"])
def test_descales_broadcast(form):
    b, hk = 2, 2
    q, k, v, _, _, _ = fp8_problem(b, 30, 30, 4, hk, 64, seed=3, amp=0.5)
    g = torch.Generator().manual_seed(5)
    shapes = {"scalar": (), "per-sequence": (b, 1), "per-kv-head": (hk,), "full": (b, hk)}
    qs, ks, vs = (torch.rand(shapes[form], generator=g) + 0.5 for _ in range(3))
    out = flashattn.flash_attn_func(q, k, v, q_descale=qs, k_descale=ks, v_descale=vs)
    full = [torch.broadcast_to(x, (b, hk)).contiguous() for x in (qs, ks, vs)]
    want = flashattn.flash_attn_func(q, k, v, q_descale=full[0], k_descale=full[1], v_descale=full[2])
    assert torch.equal(out, want)
    check_rule(out, flashattn.flash_attn_func(q, k, v, return_attn_probs=True, q_descale=qs, k_descale=ks,
                                              v_descale=vs)[1],
               emulation(q, k, v, *full, False, torch.float64), emulation(q, k, v, *full, False, torch.float32))


def test_query_heads_take_their_kv_heads_descale():
    # Scaling q_descale of KV head 1 only changes the query heads of its group.
    q, k, v, qs, ks, vs = fp8_problem(1, 20, 20, 4, 2, 64, seed=11)
    base = flashattn.flash_attn_func(q, k, v, q_descale=qs, k_descale=ks, v_descale=vs)
    qs2 = qs.clone()
    qs2[:, 1] *= 3
    moved = flashattn.flash_attn_func(q, k, v, q_descale=qs2, k_descale=ks, v_descale=vs)
    assert torch.equal(moved[:, :, :2], base[:, :, :2])
    assert not torch.equal(moved[:, :, 2:], base[:, :, 2:])


def test_without_descales_the_codes_are_the_values():
    q, k, v, _, _, _ = fp8_problem(1, 25, 31, 2, 1, 64, seed=13, amp=0.3)
    q, k, v = (x.double().mul(1 / 256).to(FP8) for x in (q, k, v))  # small codes: a soft softmax
    out, lse, _ = flashattn.flash_attn_func(q, k, v, causal=True, return_attn_probs=True)
    check_rule(out, lse, emulation(q, k, v, None, None, None, True, torch.float64),
               emulation(q, k, v, None, None, None, True, torch.float32))


def test_varlen_descales_per_sequence():
    lens_q, lens_k, hq, hk, d = [13, 0, 40], [20, 6, 40], 4, 2, 64
    cu_q = torch.tensor([0] + torch.tensor(lens_q).cumsum(0).tolist(), dtype=torch.int32)
    cu_k = torch.tensor([0] + torch.tensor(lens_k).cumsum(0).tolist(), dtype=torch.int32)
    pieces = [fp8_problem(1, lq, lk, hq, hk, d, seed=20 + i) for i, (lq, lk) in enumerate(zip(lens_q, lens_k))]
    q, k, v = (torch.cat([p[i][0] for p in pieces]) for i in range(3))
    qs, ks, vs = (torch.cat([p[3 + i] for p in pieces]) for i in range(3))
    out = flashattn.flash_attn_varlen_func(q, k, v, cu_q, cu_k, max(lens_q), max(lens_k), causal=True,
                                           q_descale=qs, k_descale=ks, v_descale=vs)
    assert out.dtype == torch.bfloat16 and out.shape == q.shape
    for i, p in enumerate(pieces):
        if lens_q[i] == 0:
            continue
        want = flashattn.flash_attn_func(*p[:3], causal=True, q_descale=p[3], k_descale=p[4], v_descale=p[5])
        assert torch.equal(out[cu_q[i]:cu_q[i + 1]], want[0])


@pytest.mark.parametrize("causal", [False, True])
def test_block_sparse_descales(causal):
    # Partial, full and skipped blocks (per sequence and head), GQA, blocks
    # that do not divide the lengths, rows that see no key.
    b, sq, sk, hq, hk, d, bq, bk = 2, 45, 37, 4, 2, 64, 16, 8
    q, k, v, qs, ks, vs = fp8_problem(b, sq, sk, hq, hk, d, seed=31 + causal)
    cnt, idx, fcnt, fidx, state = random_block_mask(b, hq, -(-sq // bq), -(-sk // bk), torch.Generator().manual_seed(7))
    cnt[0, 1, 1] = fcnt[0, 1, 1] = state[0, 1, 1] = 0  # a query block that sees no key: O = 0, LSE = -inf
    out, lse, _ = flashattn.flash_attn_block_sparse_func(q, k, v, cnt, idx, fcnt, fidx, block_size=(bq, bk),
                                                         causal=causal, return_attn_probs=True, q_descale=qs,
                                                         k_descale=ks, v_descale=vs)
    mask = block_visible(state, bq, bk, sq, sk, causal)
    assert not mask.any(-1).all(), "the case should hold rows that see no key"
    check_rule(out, lse, emulation(q, k, v, qs, ks, vs, causal, torch.float64, mask=mask),
               emulation(q, k, v, qs, ks, vs, causal, torch.float32, mask=mask))


def test_op_and_fake_give_bf16():
    q, k, v, qs, ks, vs = fp8_problem(1, 8, 8, 2, 2, 64)
    out, lse = flashattn.ops.fwd_fp8(q, k, v, qs, ks, vs, *flashattn._ops.pack_options())
    assert out.dtype == torch.bfloat16 and lse.shape == (1, 2, 8)
    meta = [x.to("meta") for x in (q, k, v, qs, ks, vs)]
    out_m, lse_m = flashattn.ops.fwd_fp8(*meta, *flashattn._ops.pack_options())
    assert out_m.dtype == torch.bfloat16 and out_m.shape == q.shape and lse_m.dtype == torch.float32
    out_f, _ = flashattn.ops.fwd(*meta[:3], *flashattn._ops.pack_options())
    assert out_f.dtype == torch.bfloat16


def test_supported():
    assert flashattn.supported("cpu", FP8, 128)
    # CUDA: the Hopper kernel's head dims, flash only (whatever the GPU: the
    # call, not the answer, needs compute capability 9.0).
    cuda = flashattn.built_with_cuda()
    for d in (64, 128, 256):
        assert flashattn.supported("cuda", FP8, d) == cuda
        assert not flashattn.supported("cuda", FP8, d, algorithm="standard")
    for d in (32, 96):
        assert not flashattn.supported("cuda", FP8, d)


def test_errors_name_the_argument():
    q, k, v, qs, ks, vs = fp8_problem(2, 8, 8, 2, 2, 64)
    with pytest.raises(ValueError, match=r"q_descale\.dtype: expected float32, got torch\.float64"):
        flashattn.flash_attn_func(q, k, v, q_descale=qs.double())
    with pytest.raises(ValueError, match=r"k_descale: expected a shape that broadcasts to \(batch, heads_k\) = "
                                         r"\(2, 2\), got \[3\]"):
        flashattn.flash_attn_func(q, k, v, k_descale=torch.ones(3))
    with pytest.raises(TypeError, match="v_descale: expected a float32 tensor or None"):
        flashattn.flash_attn_func(q, k, v, v_descale=2.0)
    with pytest.raises(ValueError, match="dropout_p: expected 0 with float8_e4m3fn inputs"):
        flashattn.flash_attn_func(q, k, v, 0.1, q_descale=qs)
    with pytest.raises(ValueError, match="options.dropout_p: expected 0 with e4m3 inputs"):
        flashattn.flash_attn_func(q, k, v, 0.1, seed=1)  # no descales: the plain operator, the library's check
    with pytest.raises(ValueError, match=r"q_descale: expected nullptr \(descale factors belong to e4m3 inputs; "
                                         r"q\.dtype is bf16\)"):
        flashattn.flash_attn_func(*(x.to(torch.bfloat16) for x in (q, k, v)), q_descale=qs)
    with pytest.raises(ValueError, match=r"k\.dtype: expected the dtype of q"):
        flashattn.flash_attn_func(q, k.to(torch.bfloat16), v, q_descale=qs)
    # The operator's own shape check, for callers that skip flash_attn_func.
    with pytest.raises(ValueError, match=r"v_descale: expected a contiguous float32 tensor of shape "
                                         r"\(batch, heads_k\) = \[2, 2\], got shape \[2, 1\]"):
        flashattn.ops.fwd_fp8(q, k, v, qs, ks, vs[:, :1], *flashattn._ops.pack_options())


def test_forward_only():
    q, k, v, qs, ks, vs = fp8_problem(1, 8, 8, 2, 2, 64)
    out = flashattn.flash_attn_func(q, k, v, q_descale=qs, k_descale=ks, v_descale=vs)
    assert not out.requires_grad
    lse = torch.zeros(1, 2, 8)
    with pytest.raises(ValueError, match="q.dtype: expected f32, f16, bf16 or f64 for backward"):
        flashattn.ops.bwd(out, q, k, v, out, lse, *flashattn._ops.pack_options())


_HAS_CUDA = torch.cuda.is_available() and flashattn.built_with_cuda()
_SM90 = _HAS_CUDA and torch.cuda.get_device_capability() == (9, 0)


@pytest.mark.skipif(not _SM90, reason="needs a CUDA build and a GPU of compute capability 9.0")
@pytest.mark.parametrize("d", [64, 128, 256])
@pytest.mark.parametrize("mask", ["full", "causal", "window"])
def test_cuda_matches_the_dequantised_reference(d, mask):
    # GQA, unequal lengths, 300 keys: no multiple of the key tile.
    b, sq, sk, hq, hk = 2, 100, 300, 4, 2
    causal, window = mask == "causal", (60, 20) if mask == "window" else (-1, -1)
    q, k, v, qs, ks, vs = fp8_problem(b, sq, sk, hq, hk, d, seed=d + 7)
    out, lse, _ = flashattn.flash_attn_func(*(x.cuda() for x in (q, k, v)), causal=causal, window_size=window,
                                            return_attn_probs=True, q_descale=qs.cuda(), k_descale=ks.cuda(),
                                            v_descale=vs.cuda())
    out, lse = out.cpu(), lse.cpu()
    ref_o, ref_lse = emulation(q, k, v, qs, ks, vs, causal, torch.float64, window)
    yard_o, yard_lse = p_rounded_emulation(q, k, v, qs, ks, vs, causal, window)
    assert out.dtype == torch.bfloat16 and out.shape == q.shape and lse.dtype == torch.float32
    assert ((yard_o - ref_o).norm() / ref_o.norm()).item() < 0.1, "the yardstick itself is off"
    err, err_yard = max_err(out, ref_o), max_err(yard_o, ref_o)
    assert err <= 2 * err_yard + 2 ** -10 * ref_o.abs().max().item(), f"out: {err:.3e} vs yardstick {err_yard:.3e}"
    err_lse, err_lse_yard = max_err(lse, ref_lse), max_err(yard_lse, ref_lse)
    hkv = k.shape[2]
    qd = dequantise(q, qs, hkv).double().transpose(1, 2).abs()
    kd = dequantise(k, ks, hkv).double().repeat_interleave(hq // hkv, 2).transpose(1, 2).abs()
    mask = visible(sq, sk, causal, window)
    score_mag = ((qd @ kd.transpose(-1, -2)) * f32_scale(d)).masked_fill(~mask, 0).max().item()
    bound = 2 * err_lse_yard + 1e-4 + 2 ** -13 * score_mag
    assert err_lse <= bound, f"lse: {err_lse:.3e} vs yardstick {err_lse_yard:.3e} (bound {bound:.3e})"


@pytest.mark.skipif(not _HAS_CUDA or _SM90, reason="needs a CUDA build and a GPU other than compute capability 9.0")
def test_cuda_other_gpus_raise_the_library_error():
    q, k, v, qs, ks, vs = (x.cuda() for x in fp8_problem(1, 16, 16, 2, 2, 128))
    with pytest.raises(ValueError, match=r"ctx\.device: expected a GPU of compute capability 9\.0"):
        flashattn.flash_attn_func(q, k, v, q_descale=qs, k_descale=ks, v_descale=vs)
