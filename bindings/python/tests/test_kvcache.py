"""flash_attn_with_kvcache on the CPU against a float64 PyTorch
reimplementation of flash-attn's documented semantics (append in place,
rotary, paged caches, causal / window bottom-right aligned per sequence)."""
import pytest
import torch

import flashattn
from conftest import f32_scale

# (dtype, atol of out / lse, atol of the appended (rotated) cache rows)
DTYPES = {
    "f32": (torch.float32, 2e-5, 1e-6),
    "f16": (torch.float16, 4e-3, 2e-3),
    "bf16": (torch.bfloat16, 2e-2, 1.6e-2),
}


def rotate(x, cos, sin, pos, interleaved):
    """x (..., d) float64 rotated at positions pos (broadcast to x[..., 0])."""
    rd = cos.shape[1] * 2
    c, s = cos[pos].to(torch.float64), sin[pos].to(torch.float64)
    while c.dim() < x.dim():
        c, s = c.unsqueeze(-2), s.unsqueeze(-2)
    x = x.clone()
    if interleaved:
        x0, x1 = x[..., 0:rd:2].clone(), x[..., 1:rd:2].clone()
        x[..., 0:rd:2], x[..., 1:rd:2] = x0 * c - x1 * s, x0 * s + x1 * c
    else:
        x0, x1 = x[..., : rd // 2].clone(), x[..., rd // 2: rd].clone()
        x[..., : rd // 2], x[..., rd // 2: rd] = x0 * c - x1 * s, x0 * s + x1 * c
    return x


def reference(q, k_cache, v_cache, k, v, cache_seqlens, block_table=None, cache_batch_idx=None, rotary_cos=None,
              rotary_sin=None, rotary_interleaved=True, causal=False, window_size=(-1, -1)):
    """(out, lse, k_cache_after, v_cache_after) in float64 (the caches'
    appended rows rounded to their dtype), from copies of the inputs."""
    dtype = q.dtype
    kc, vc = k_cache.clone(), v_cache.clone()
    b, sq, hq, d = q.shape
    n = 0 if k is None else k.shape[1]
    lens = cache_seqlens.tolist()

    def where(bi, pos):
        if block_table is not None:
            page = k_cache.shape[1]
            return int(block_table[bi, pos // page]), pos % page
        return (int(cache_batch_idx[bi]) if cache_batch_idx is not None else bi), pos

    for bi in range(b):
        for t in range(n):
            pos = lens[bi] + t
            row, s = where(bi, pos)
            kn = k[bi, t].to(torch.float64)
            if rotary_cos is not None:
                kn = rotate(kn, rotary_cos, rotary_sin, torch.tensor(pos), rotary_interleaved)
            kc[row, s] = kn.to(dtype)
            vc[row, s] = v[bi, t]
    out = torch.zeros(b, sq, hq, d, dtype=torch.float64)
    lse = torch.full((b, hq, sq), float("-inf"), dtype=torch.float64)
    scale = f32_scale(d)
    left, right = window_size
    if causal:
        right = 0
    per_row = causal or window_size != (-1, -1)
    for bi in range(b):
        sk = lens[bi] + n
        keys = torch.stack([kc[where(bi, p)] for p in range(sk)]) if sk else kc.new_zeros(0, kc.shape[2], d)
        vals = torch.stack([vc[where(bi, p)] for p in range(sk)]) if sk else vc.new_zeros(0, vc.shape[2], d)
        keys, vals = keys.to(torch.float64), vals.to(torch.float64)
        qb = q[bi].to(torch.float64)
        if rotary_cos is not None:
            pos = lens[bi] + torch.arange(sq) if per_row else torch.full((sq,), lens[bi])
            qb = rotate(qb, rotary_cos, rotary_sin, pos, rotary_interleaved).to(dtype).to(torch.float64)
        group = hq // keys.shape[1]
        keys, vals = keys.repeat_interleave(group, 1), vals.repeat_interleave(group, 1)
        s = torch.einsum("ihd,jhd->hij", qb, keys) * scale
        i = torch.arange(sq).unsqueeze(1)
        j = torch.arange(sk).unsqueeze(0)
        ok = torch.ones(sq, sk, dtype=torch.bool)
        if left >= 0:
            ok &= j >= i + sk - sq - left
        if right >= 0:
            ok &= j <= i + sk - sq + right
        s = s.masked_fill(~ok, float("-inf"))
        row_lse = torch.logsumexp(s, -1)
        p = torch.exp(s - row_lse.unsqueeze(-1)).nan_to_num(0.0)
        out[bi] = torch.einsum("hij,jhd->ihd", p, vals)
        lse[bi] = row_lse
    return out, lse, kc, vc


def make_case(b, sq, n, hq, hk, d, dtype, capacity, page_size=None, lens=None, seed=0, batch_idx=False,
              rotary_dim=0):
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *shape: torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)
    case = dict(q=rnd(b, sq, hq, d))
    if lens is None:
        lens = torch.randint(0, capacity - n + 1, (b,), generator=g).tolist()
    case["cache_seqlens"] = torch.tensor(lens, dtype=torch.int32)
    if page_size:
        max_blocks = -(-capacity // page_size)
        num_blocks = b * max_blocks + 3
        case["k_cache"], case["v_cache"] = rnd(num_blocks, page_size, hk, d), rnd(num_blocks, page_size, hk, d)
        case["block_table"] = torch.randperm(num_blocks, generator=g)[: b * max_blocks].reshape(b, max_blocks).to(
            torch.int32)
    else:
        rows = b + 2 if batch_idx else b
        case["k_cache"], case["v_cache"] = rnd(rows, capacity, hk, d), rnd(rows, capacity, hk, d)
        if batch_idx:
            case["cache_batch_idx"] = torch.randperm(rows, generator=g)[:b].to(torch.int32)
    if n:
        case["k"], case["v"] = rnd(b, n, hk, d), rnd(b, n, hk, d)
    if rotary_dim:
        ro = capacity + sq
        pos = torch.arange(ro, dtype=torch.float64).unsqueeze(1)
        inv = 10000.0 ** (-torch.arange(0, rotary_dim, 2, dtype=torch.float64) / rotary_dim)
        case["rotary_cos"], case["rotary_sin"] = torch.cos(pos * inv).float(), torch.sin(pos * inv).float()
    return case


def check(case, dtype_key, num_splits=0, **opts):
    dtype, atol, atol_cache = DTYPES[dtype_key]
    ref_args = {k: v for k, v in case.items()}
    want_out, want_lse, want_kc, want_vc = reference(
        ref_args["q"], ref_args["k_cache"], ref_args["v_cache"], ref_args.get("k"), ref_args.get("v"),
        ref_args["cache_seqlens"], ref_args.get("block_table"), ref_args.get("cache_batch_idx"),
        ref_args.get("rotary_cos"), ref_args.get("rotary_sin"), **opts)
    out, lse = flashattn.flash_attn_with_kvcache(**case, num_splits=num_splits, return_softmax_lse=True, **opts)
    assert out.dtype == dtype and out.shape == case["q"].shape
    assert lse.dtype == torch.float32 and lse.shape == want_lse.shape
    torch.testing.assert_close(case["k_cache"].double(), want_kc.double(), atol=atol_cache, rtol=0)
    assert torch.equal(case["v_cache"], want_vc)
    torch.testing.assert_close(out.double(), want_out, atol=atol, rtol=0)
    finite = torch.isfinite(want_lse)
    assert torch.equal(torch.isfinite(lse), finite)
    torch.testing.assert_close(lse.double()[finite], want_lse[finite], atol=2e-4, rtol=0)


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("paged", [False, True])
def test_decode_gqa(dtype, paged):
    # GQA 8:1, cache lengths 0 and 1 among them, one new token.
    case = make_case(4, 1, 1, 8, 1, 64, DTYPES[dtype][0], capacity=64, page_size=16 if paged else None,
                     lens=[0, 1, 17, 63])
    check(case, dtype, causal=True)


@pytest.mark.parametrize("page_size", [16, 32])
def test_paged_append_crosses_pages(page_size):
    p = page_size
    case = make_case(5, 5, 5, 4, 2, 64, torch.bfloat16, capacity=4 * p, page_size=p,
                     lens=[0, p - 2, p, 2 * p - 1, 3 * p + 2], seed=1)
    check(case, "bf16", causal=True)


@pytest.mark.parametrize("interleaved", [True, False])
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("paged", [False, True])
def test_rotary(interleaved, causal, paged):
    case = make_case(3, 3, 3, 4, 2, 64, torch.float16, capacity=48, page_size=16 if paged else None, seed=2,
                     rotary_dim=32)
    check(case, "f16", causal=causal, rotary_interleaved=interleaved)


@pytest.mark.parametrize("d", [64, 128, 256])
def test_head_dims_and_window(d):
    case = make_case(3, 4, 2, 4, 1, d, torch.bfloat16, capacity=40, lens=[0, 5, 38], seed=3)
    check(case, "bf16", num_splits=3, causal=True, window_size=(6, 0))


def test_cache_batch_idx_and_no_append():
    case = make_case(3, 2, 1, 4, 2, 64, torch.float32, capacity=32, batch_idx=True, seed=4)
    check(case, "f32", causal=True)
    case = make_case(3, 2, 0, 4, 2, 64, torch.float32, capacity=32, batch_idx=True, seed=5)
    check(case, "f32", causal=False)


def test_split_counts_agree():
    case = make_case(2, 2, 0, 8, 2, 64, torch.float32, capacity=512, page_size=16, lens=[1, 512], seed=6)
    out1, lse1 = flashattn.flash_attn_with_kvcache(**case, causal=True, num_splits=1, return_softmax_lse=True)
    for s in (2, 3, 7, 16, 128):
        out, lse = flashattn.flash_attn_with_kvcache(**case, causal=True, num_splits=s, return_softmax_lse=True)
        torch.testing.assert_close(out, out1, atol=1e-6, rtol=0)
        torch.testing.assert_close(lse, lse1, atol=1e-5, rtol=0)


def test_int_cache_seqlens_and_full_cache():
    case = make_case(2, 1, 1, 2, 1, 64, torch.float32, capacity=16, lens=[5, 5], seed=7)
    want = flashattn.flash_attn_with_kvcache(**{**case, "k_cache": case["k_cache"].clone(),
                                                "v_cache": case["v_cache"].clone()})
    got = flashattn.flash_attn_with_kvcache(**{**case, "cache_seqlens": 5})
    torch.testing.assert_close(got, want, atol=0, rtol=0)
    # None: the whole cache is attended (and nothing can be appended).
    case.pop("k"), case.pop("v"), case.pop("cache_seqlens")
    out = flashattn.flash_attn_with_kvcache(**case)
    want, _, _, _ = reference(case["q"], case["k_cache"], case["v_cache"], None, None, torch.tensor([16, 16]))
    torch.testing.assert_close(out.double(), want, atol=2e-5, rtol=0)


def test_block_table_out_of_range():
    case = make_case(2, 1, 1, 2, 1, 64, torch.bfloat16, capacity=32, page_size=16, lens=[3, 20])
    case["block_table"][1, 1] = case["k_cache"].shape[0]
    before = case["k_cache"].clone()
    with pytest.raises(ValueError, match=r"block_table\[1, 1\]: expected in \[0, num_blocks"):
        flashattn.flash_attn_with_kvcache(**case)
    assert torch.equal(case["k_cache"], before)


def test_cache_too_small():
    case = make_case(2, 2, 2, 2, 1, 64, torch.bfloat16, capacity=32, lens=[3, 31])
    with pytest.raises(ValueError, match=r"cache_seqlens\[1\]: expected cache_seqlens \+ seqlen_new"):
        flashattn.flash_attn_with_kvcache(**case)


def test_argument_errors():
    case = make_case(2, 1, 1, 2, 1, 64, torch.bfloat16, capacity=32)
    with pytest.raises(NotImplementedError, match="cache_leftpad"):
        flashattn.flash_attn_with_kvcache(**case, cache_leftpad=torch.zeros(2, dtype=torch.int32))
    with pytest.raises(NotImplementedError, match="softcap"):
        flashattn.flash_attn_with_kvcache(**case, softcap=1.0)
    with pytest.raises(ValueError, match="k / v"):
        flashattn.flash_attn_with_kvcache(**{**case, "v": None})
    with pytest.raises(ValueError, match="cache_seqlens: expected a 1-D tensor with batch = 2"):
        flashattn.flash_attn_with_kvcache(**{**case, "cache_seqlens": torch.zeros(3, dtype=torch.int32)})
    with pytest.raises(ValueError, match="num_splits"):
        flashattn.flash_attn_with_kvcache(**case, num_splits=129)
    strided = case["k_cache"].transpose(1, 3).contiguous().transpose(1, 3)
    with pytest.raises(ValueError, match="k_cache: expected a contiguous last dimension"):
        flashattn.flash_attn_with_kvcache(**{**case, "k_cache": strided})
    with pytest.raises(ValueError, match=r"k_cache\.dtype: expected the dtype of q"):
        flashattn.flash_attn_with_kvcache(**{**case, "k_cache": case["k_cache"].float(),
                                             "v_cache": case["v_cache"].float()})
    with pytest.raises(ValueError, match="cache_seqlens: expected the cache lengths before the append"):
        flashattn.flash_attn_with_kvcache(**{**case, "cache_seqlens": None})
    with pytest.raises(ValueError, match="q: flash_attn_with_kvcache has no backward"):
        flashattn.flash_attn_with_kvcache(**{**case, "q": case["q"].clone().requires_grad_()})
    with torch.no_grad():  # the same call without a graph is fine
        flashattn.flash_attn_with_kvcache(**{**case, "q": case["q"].clone().requires_grad_()})


def test_argument_errors_index_values_and_types():
    case = make_case(2, 1, 1, 2, 1, 64, torch.float32, capacity=32)
    paged = make_case(2, 1, 1, 2, 1, 64, torch.float32, capacity=32, page_size=16)
    bad = [
        # int64 index values past int32 would wrap into range (2^32 + 3 -> 3)
        ({"cache_seqlens": torch.tensor([2 ** 32 + 3, 1])}, ValueError, "cache_seqlens: expected int32 values"),
        ({"cache_batch_idx": torch.tensor([2 ** 32 + 1, 0])}, ValueError, "cache_batch_idx: expected int32 values"),
        # a meta index tensor would pick the fake kernel: uninitialised output
        ({"cache_seqlens": case["cache_seqlens"].to("meta")}, ValueError, r"cache_seqlens\.device"),
        ({"cache_seqlens": 2 ** 40}, ValueError, "cache_seqlens"),
        ({"cache_seqlens": 1.5}, TypeError, "cache_seqlens"),
        ({"num_splits": None}, TypeError, "num_splits"),
        ({"k": [1.0], "v": [1.0]}, TypeError, "k: expected a torch.Tensor"),
        ({"rotary_cos": torch.ones(40, 8), "rotary_sin": None}, ValueError, "rotary_cos / rotary_sin"),
        ({"rotary_cos": torch.ones(40, 0), "rotary_sin": torch.ones(40, 0)}, ValueError, "rotary_cos: expected"),
    ]
    for extra, exc, words in bad:
        with pytest.raises(exc, match=words) as info:
            flashattn.flash_attn_with_kvcache(**{**case, **extra})
        assert "expected" in str(info.value), extra
    table = paged["block_table"]
    for extra, exc, words in [
        ({"block_table": torch.zeros(2, 0, dtype=torch.int32)}, ValueError, "block_table: expected at least one page"),
        ({"block_table": table.long() + 2 ** 32}, ValueError, "block_table: expected int32 values"),
        ({"block_table": table[:, 0], "cache_seqlens": None, "k": None, "v": None}, ValueError,
         "block_table: expected a 2-D tensor"),
    ]:
        with pytest.raises(exc, match=words):
            flashattn.flash_attn_with_kvcache(**{**paged, **extra})


def test_float64_to_float64_accuracy():
    # The CPU computes float64 caches in double (the float32 path was 3e-7 off).
    case = make_case(2, 3, 3, 4, 2, 32, torch.float64, capacity=48)
    want, _, _, _ = reference(case["q"], case["k_cache"], case["v_cache"], case["k"], case["v"],
                              case["cache_seqlens"], causal=True)
    out = flashattn.flash_attn_with_kvcache(**case, causal=True)
    assert (out - want).abs().max().item() < 1e-12


def test_append_bumps_the_cache_version():
    # Autograd's version counters must see the in-place append, so that a
    # graph that saved a cache before it notices.
    case = make_case(2, 1, 1, 2, 1, 64, torch.float32, capacity=32)
    kv0, vv0 = case["k_cache"]._version, case["v_cache"]._version
    flashattn.flash_attn_with_kvcache(**case)
    assert case["k_cache"]._version > kv0 and case["v_cache"]._version > vv0
    no_append = {**case, "k": None, "v": None}
    kv1 = case["k_cache"]._version
    flashattn.flash_attn_with_kvcache(**no_append)
    assert case["k_cache"]._version == kv1


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available() or not flashattn.built_with_cuda(),
                                reason="this build has no CUDA operators, or no GPU is present")


def cuda_vs_cpu(case, dtype_key, **opts):
    """The CUDA op against the CPU op on copies of the same inputs: out, lse
    and the caches it leaves (the CPU op is itself checked against float64
    above; both round once to the dtype, so they agree to twice its atol)."""
    _, atol, atol_cache = DTYPES[dtype_key]
    cpu = {k: v.clone() for k, v in case.items()}
    gpu = {k: v.cuda() for k, v in case.items()}
    out_c, lse_c = flashattn.flash_attn_with_kvcache(**cpu, return_softmax_lse=True, **opts)
    out_g, lse_g = flashattn.flash_attn_with_kvcache(**gpu, return_softmax_lse=True, **opts)
    assert out_g.is_cuda and out_g.dtype == out_c.dtype and out_g.shape == out_c.shape
    torch.testing.assert_close(out_g.cpu().double(), out_c.double(), atol=2 * atol, rtol=0)
    finite = torch.isfinite(lse_c)
    assert torch.equal(torch.isfinite(lse_g.cpu()), finite)
    torch.testing.assert_close(lse_g.cpu()[finite], lse_c[finite], atol=1e-3, rtol=0)
    torch.testing.assert_close(gpu["k_cache"].cpu().double(), cpu["k_cache"].double(), atol=atol_cache, rtol=0)
    assert torch.equal(gpu["v_cache"].cpu(), cpu["v_cache"])


@needs_cuda
@pytest.mark.parametrize("dtype", ["f16", "bf16"])
@pytest.mark.parametrize("paged", [False, True])
@pytest.mark.parametrize("num_splits", [1, 0, 5])
def test_cuda_decode_matches_cpu(dtype, paged, num_splits):
    case = make_case(4, 1, 1, 32, 4, 128, DTYPES[dtype][0], capacity=512, page_size=64 if paged else None,
                     lens=[0, 1, 300, 511], seed=10)
    cuda_vs_cpu(case, dtype, causal=True, num_splits=num_splits)


@needs_cuda
@pytest.mark.parametrize("interleaved", [True, False])
@pytest.mark.parametrize("causal", [True, False])
def test_cuda_rotary_window_matches_cpu(interleaved, causal):
    case = make_case(3, 4, 4, 8, 2, 64, torch.bfloat16, capacity=96, page_size=16, seed=11, rotary_dim=32)
    cuda_vs_cpu(case, "bf16", causal=causal, rotary_interleaved=interleaved, window_size=(20, -1), num_splits=2)


@needs_cuda
@pytest.mark.parametrize("d", [64, 256])
def test_cuda_chunk_batch_idx_matches_cpu(d):
    case = make_case(2, 64, 64, 8, 1, d, torch.float16, capacity=200, batch_idx=True, seed=12)
    cuda_vs_cpu(case, "f16", causal=True, num_splits=3)


@needs_cuda
def test_cuda_refusals():
    case = {k: v.cuda() for k, v in make_case(2, 1, 1, 2, 1, 32, torch.bfloat16, capacity=32).items()}
    with pytest.raises(ValueError, match="q.head_dim"):
        flashattn.flash_attn_with_kvcache(**case)
    case = {k: v.cuda() for k, v in make_case(2, 1, 1, 2, 1, 64, torch.float32, capacity=32).items()}
    with pytest.raises(ValueError, match="dtype"):
        flashattn.flash_attn_with_kvcache(**case)


def test_opcheck():
    # The schema's in-place declarations (k_cache, v_cache) and the fake kernel.
    case = make_case(2, 2, 2, 4, 2, 64, torch.float32, capacity=32, page_size=16, lens=[0, 9], seed=8)
    args = (case["q"], case["k_cache"], case["v_cache"], case["k"], case["v"], case["cache_seqlens"],
            case["block_table"], None, None, None, True, None, True, -1, -1, 0)
    torch.library.opcheck(torch.ops.flashattn.fwd_kvcache.default, args,
                          test_utils=("test_schema", "test_faketensor"))
