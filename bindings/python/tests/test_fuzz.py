"""Seeded fuzz cases, distilled from a fuzzer of the Python API. It found
meta-device index tensors that picked the fake kernel, int64 indices that
wrapped past int32, empty block / rotary tables read as none, overflowing
dropout_mask bounds, Python's errors instead of the library's, float64 KV
caches computed in float and expand()-broadcast heads refused.

Valid but unusual calls are compared with a float64 reference; invalid ones
must raise "flashattn: <argument>: expected ..., got ..." and write nothing.
Every case is a pure function of (SEED, generator, index): its test id
reproduces it."""
import math
import random

import pytest
import torch

import flashattn
from conftest import assert_close, block_visible, f32_scale, grads_of, random_block_mask, sdpa_reference, visible

pytestmark = pytest.mark.filterwarnings("ignore:Dropout mask should only be used for testing")

SEED = 20261208
N_DENSE, N_VARLEN, N_BLOCK_SPARSE, N_KVCACHE = 60, 32, 32, 48
# (dtype, algorithm, atol of out, atol of grads), as conftest.CONFIGS; f64 runs the standard path.
DTYPES = [(torch.float32, "flash", 2e-5, 1e-4)] * 2 + [(torch.float32, "standard", 2e-5, 1e-4),
                                                      (torch.float64, "standard", 1e-10, 1e-9)]
LENS = [0, 1, 1, 2, 3, 5, 7, 8, 9, 13, 16, 17]
HEAD_DIMS = [1, 2, 3, 4, 5, 8, 16, 32, 64]


def rngs(*key):
    """A Python RNG for the case's choices and a torch one for its data."""
    r = random.Random(":".join(map(str, (SEED,) + key)))
    return r, torch.Generator().manual_seed(r.randrange(2 ** 63))


def randn(g, *shape, dtype=torch.float32):
    return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)


def restride(x, r):
    """x with other strides (same values), or its heads broadcast by
    expand() (new values; overlapping heads, which the binding copies)."""
    kind = r.choice(["contiguous", "contiguous", "heads-major", "padded", "last-dim", "expand"])
    if kind == "heads-major":
        return x.transpose(-3, -2).contiguous().transpose(-3, -2)
    if kind == "padded":  # head stride 2 * head_dim, last dimension contiguous
        return torch.cat([x, torch.zeros_like(x)], -1)[..., :x.shape[-1]]
    if kind == "last-dim":  # stride(-1) != 1
        return x.transpose(-1, -2).contiguous().transpose(-1, -2)
    if kind == "expand":
        return x[..., :1, :].expand(x.shape)
    return x


def attn_options(r, sq, sk):
    """causal / window_size / softmax_scale, with windows past the sequence."""
    m = max(sq, sk) + 2
    w = r.choice([(-1, -1)] * 3 + [(r.randrange(m), r.randrange(m)), (r.randrange(m), -1), (-1, r.randrange(m)),
                                   (0, 0), (2 ** 63 - 1, 2 ** 40)])
    causal = r.random() < 0.4
    if causal:
        w = (w[0], r.choice([-1, 0]))
    return dict(causal=causal, window_size=w, softmax_scale=r.choice([None, None, 0.5, -0.3, 1.0]))


def ref_window(sq, sk, opts):
    """The window for visible(): one past the sequences is unbounded (and int64-safe there)."""
    return tuple(min(x, sq + sk + 1) for x in opts["window_size"])


def ref_mask(sq, sk, opts):
    return visible(sq, sk, opts["causal"], ref_window(sq, sk, opts))


def keep_mask(seed, offset, p, batches, hq, sq, sk):
    """bool [len(batches), hq, sq, sk] of the library's dropout stream."""
    return torch.stack([torch.stack([flashattn.dropout_mask(seed, offset, p, b, hq, h, sq, sk) for h in range(hq)])
                        for b in batches])


def lse_reference(q, k, mask, scale):
    group = q.shape[2] // k.shape[2]
    s = torch.einsum("bqhd,bkhd->bhqk", q.double(), k.double().repeat_interleave(group, 2)) * scale
    return s.masked_fill(~mask, -math.inf).logsumexp(-1)


# ------------------------------------------------------------- valid inputs ---

@pytest.mark.parametrize("i", range(N_DENSE))
def test_dense_matches_reference(i):
    """GQA, seqlen_q != seqlen_k (bottom-right causal), windows, seqlen 0/1,
    tiny head_dim, strided / expanded views, packed inputs, dropout: out,
    lse and gradients against float64."""
    r, g = rngs("dense", i)
    dtype, algorithm, atol, gatol = r.choice(DTYPES)
    b, hk, group, d = r.choice([0, 1, 1, 2, 3]), r.choice([1, 2]), r.choice([1, 2, 3]), r.choice(HEAD_DIMS)
    entry = r.choice(["func"] * 3 + ["qkvpacked", "kvpacked"])
    sq, hq = r.choice(LENS), hk * group
    sk, hk = (sq, hq) if entry == "qkvpacked" else (sq if r.random() < 0.3 else r.choice(LENS), hk)
    opts = attn_options(r, sq, sk)
    leaves = [randn(g, b, s, h, d, dtype=dtype).requires_grad_() for s, h in ((sq, hq), (sk, hk), (sk, hk))]
    keep, p = None, 0.0
    if b * sq * sk and r.random() < 0.25:
        p, seed = r.choice([0.2, 0.5]), (r.randrange(2 ** 64), r.randrange(2 ** 64))
        opts.update(dropout_p=p, seed=seed)
        keep = keep_mask(*seed, p, range(b), hq, sq, sk)
        atol, gatol = max(atol, 1e-7), max(gatol, 1e-7)  # 1/(1-p) is a float32
    kw = dict(opts, algorithm=algorithm, return_attn_probs=True)
    if entry == "func":
        q, k, v = (restride(x, r) for x in leaves)
        out, lse, _ = flashattn.flash_attn_func(q, k, v, **kw)
    elif entry == "qkvpacked":
        qkv = torch.stack(leaves, 2)
        q, k, v = qkv.unbind(2)
        out, lse, _ = flashattn.flash_attn_qkvpacked_func(qkv, **kw)
    else:
        q, kv = leaves[0], torch.stack(leaves[1:], 2)
        k, v = kv.unbind(2)
        out, lse, _ = flashattn.flash_attn_kvpacked_func(q, kv, **kw)
    mask, scale = ref_mask(sq, sk, opts), f32_scale(d, opts["softmax_scale"])
    ref = sdpa_reference(q, k, v, mask, scale, p, keep)
    assert out.dtype == dtype and out.shape == q.shape
    assert_close(out, ref, atol, "out")
    want_lse = lse_reference(q, k, mask, scale)
    assert torch.equal(torch.isfinite(lse), torch.isfinite(want_lse))
    assert_close(lse[lse.isfinite()], want_lse[want_lse.isfinite()], 2e-5 if dtype == torch.float32 else 1e-6, "lse")
    if out.numel():
        dout = randn(g, *out.shape, dtype=torch.float64)
        for name, got, want in zip("qkv", grads_of(out, leaves, dout.to(dtype)), grads_of(ref, leaves, dout)):
            assert_close(got, want, gatol, "d" + name)


@pytest.mark.parametrize("i", range(N_VARLEN))
def test_varlen_matches_reference(i):
    """Packed sequences of length 0 upwards, max_seqlen above the longest,
    rows past the last sequence, a strided cu_seqlens, dropout by sequence."""
    r, g = rngs("varlen", i)
    dtype, algorithm, atol, _ = r.choice(DTYPES)
    hk, group, d = r.choice([1, 2]), r.choice([1, 2, 4]), r.choice(HEAD_DIMS)
    hq, n = hk * group, r.randint(1, 4)
    lq = [r.choice(LENS) for _ in range(n)]
    lk = lq if r.random() < 0.4 else [r.choice(LENS) for _ in range(n)]
    cu = lambda lens: torch.tensor([0] + torch.tensor(lens).cumsum(0).tolist(), dtype=torch.int32)
    cu_q, cu_k = cu(lq) if r.random() < 0.7 else torch.stack([cu(lq)] * 2, 1)[:, 0], cu(lk)  # or non-contiguous
    q = restride(randn(g, sum(lq) + r.choice([0, 0, 3]), hq, d, dtype=dtype), r)
    k, v = randn(g, sum(lk), hk, d, dtype=dtype), randn(g, sum(lk), hk, d, dtype=dtype)
    opts = attn_options(r, max(lq), max(lk))
    p = r.choice([0.0, 0.0, 0.0, 0.3])
    if p:
        opts.update(dropout_p=p, seed=r.randrange(2 ** 64))
        atol = max(atol, 1e-7)  # 1/(1-p) is a float32
    max_q = min(max(lq) + r.choice([0, 0, 5]), q.shape[0])  # at most total_q
    out = flashattn.flash_attn_varlen_func(q, k, v, cu_q, cu_k, max_q, max(lk), **opts, algorithm=algorithm)
    assert out.shape == q.shape
    for s in range(n):
        rq, rk = slice(cu_q[s], cu_q[s + 1]), slice(cu_k[s], cu_k[s + 1])
        keep = keep_mask(opts["seed"], 0, p, [s], hq, lq[s], lk[s]) if p else None
        ref = sdpa_reference(q[rq][None], k[rk][None], v[rk][None], ref_mask(lq[s], lk[s], opts),
                             f32_scale(d, opts["softmax_scale"]), p, keep)
        assert_close(out[rq], ref[0], atol, f"out of sequence {s}")


@pytest.mark.parametrize("i", range(N_BLOCK_SPARSE))
def test_block_sparse_matches_reference(i):
    """Random partial / full / skipped blocks (broadcast over batch or heads,
    garbage past the counts), odd and huge block sizes (one block)."""
    r, g = rngs("block_sparse", i)
    dtype, algorithm, atol, _ = r.choice(DTYPES)
    b, hk, group, d = r.randint(1, 2), r.choice([1, 2]), r.choice([1, 2]), r.choice(HEAD_DIMS)
    hq, sq, sk = hk * group, r.choice(LENS), r.choice(LENS)
    sizes = [1, 2, 3, 5, 8, 16, 2 ** 40, 2 ** 63 - 1]
    bq, bk = r.choice(sizes), r.choice(sizes)
    bk = bq if r.random() < 0.4 else bk
    nqb, nkb = -(-sq // bq), -(-sk // bk)
    cnt, idx, fcnt, fidx, state = random_block_mask(r.choice([1, b]), r.choice([1, hq]), nqb, nkb, g)
    for c, x in ((cnt, idx), (fcnt, fidx)):  # entries past the count are never read
        x[torch.arange(nkb) >= c.unsqueeze(-1)] = r.choice([-1, nkb, 2 ** 31 - 1])
    if r.random() < 0.3:
        fcnt = fidx = None
        state[state == 2] = 0
    q, k, v = (restride(randn(g, b, s, h, d, dtype=dtype), r) for s, h in ((sq, hq), (sk, hk), (sk, hk)))
    opts = attn_options(r, sq, sk)
    block_size = bq if bq == bk and r.random() < 0.5 else r.choice([(bq, bk), [bq, bk]])
    out = flashattn.flash_attn_block_sparse_func(q, k, v, cnt, idx, fcnt, fidx, block_size=block_size, **opts,
                                                 algorithm=algorithm)
    # a block past the sequence is one block: expand the state by the sequence length instead
    mask = block_visible(state, min(bq, max(sq, 1)), min(bk, max(sk, 1)), sq, sk, opts["causal"],
                         ref_window(sq, sk, opts))
    assert_close(out, sdpa_reference(q, k, v, mask, f32_scale(d, opts["softmax_scale"])), atol, "out")


def rotate(x, cos, sin, pos, interleaved):
    """x (..., heads, d) float64 rotated at positions pos (a tensor of x.shape[:-2])."""
    c, s = (t[pos].double().unsqueeze(-2) for t in (cos, sin))
    half = c.shape[-1]
    i0 = torch.arange(0, 2 * half, 2) if interleaved else torch.arange(half)
    i1 = i0 + 1 if interleaved else i0 + half
    a, b, x = x[..., i0], x[..., i1], x.clone()  # (indexing copies)
    x[..., i0], x[..., i1] = a * c - b * s, a * s + b * c
    return x


def kvcache_reference(q, k_cache, v_cache, k=None, v=None, lens=(), block_table=None, cache_batch_idx=None,
                      rotary_cos=None, rotary_sin=None, rotary_interleaved=True, causal=False,
                      window_size=(-1, -1), softmax_scale=None, **_):
    """(out, k_cache, v_cache after the append), from flash-attn's documented semantics."""
    kc, vc = k_cache.clone(), v_cache.clone()
    b, sq, hq, d = q.shape
    n = 0 if k is None else k.shape[1]

    def slot(bi, pos):
        if block_table is not None:
            return int(block_table[bi, pos // kc.shape[1]]), pos % kc.shape[1]
        return (bi if cache_batch_idx is None else int(cache_batch_idx[bi])), pos

    per_row = causal or tuple(window_size) != (-1, -1)
    outs = []
    for bi in range(b):
        qb, kn = q[bi].double(), None if k is None else k[bi].double()
        if rotary_cos is not None:  # k at its positions; q at its own (per_row) or all at lens[bi]
            kn = rotate(kn, rotary_cos, rotary_sin, lens[bi] + torch.arange(n), rotary_interleaved)
            pos = lens[bi] + torch.arange(sq) * per_row
            qb = rotate(qb, rotary_cos, rotary_sin, pos, rotary_interleaved).to(q.dtype)
        for t in range(n):
            kc[slot(bi, lens[bi] + t)], vc[slot(bi, lens[bi] + t)] = kn[t].to(kc.dtype), v[bi, t]
        sk = lens[bi] + n
        keys, vals = (torch.stack([c[slot(bi, pos)] for pos in range(sk)]) if sk else c[:0, 0] for c in (kc, vc))
        mask = ref_mask(sq, sk, dict(causal=causal, window_size=window_size))
        outs.append(sdpa_reference(qb[None], keys[None], vals[None], mask, f32_scale(d, softmax_scale))[0])
    return torch.stack(outs), kc, vc


@pytest.mark.parametrize("i", range(N_KVCACHE))
def test_kvcache_matches_reference(i):
    """Contiguous / paged caches, appends (also of expanded views), rotary,
    cache_batch_idx, int / int32 / int64 / no cache_seqlens, split counts,
    GQA, windows. float64 to 1e-12 (it was once computed in float)."""
    r, g = rngs("kvcache", i)
    dtype = torch.float64 if i % 3 == 0 else torch.float32
    b, hk, group, d = r.randint(1, 3), r.choice([1, 2]), r.choice([1, 2, 4]), r.choice([2, 3, 4, 8, 16, 32, 64])
    hq, sq, n = hk * group, r.choice([1, 1, 2, 3, 5]), r.choice([0, 0, 1, 2, 5])
    kw = {}
    if r.random() < 0.4:
        page, pages = r.choice([16, 32]), r.randint(1, 3)
        cap, blocks = page * pages, b * pages + r.randint(0, 3)
        kc = randn(g, blocks, page, hk, d, dtype=dtype)
        kw["block_table"] = torch.randperm(blocks, generator=g)[:b * pages].view(b, pages).to(torch.int32)
    else:
        cap, rows = r.randint(max(n, 1), 40), b + r.choice([0, 0, 2])
        kc = randn(g, rows, cap, hk, d, dtype=dtype)
        if rows > b or r.random() < 0.3:
            kw["cache_batch_idx"] = torch.randperm(rows, generator=g)[:b].to(torch.int32)
    vc = randn(g, *kc.shape, dtype=dtype)
    lens = [r.randint(0, cap - n) for _ in range(b)]
    form = r.choice([torch.int32, torch.int64, int, None])  # None (without an append): the whole cache
    if form is int or (form is None and n == 0):
        lens = [lens[0] if form is int else cap] * b
    if form is not None or n:
        kw["cache_seqlens"] = lens[0] if form is int else torch.tensor(lens, dtype=form or torch.int32)
    q = restride(randn(g, b, sq, hq, d, dtype=dtype), r)
    if n:
        kw["k"], kw["v"] = (restride(randn(g, b, n, hk, d, dtype=dtype), r) for _ in range(2))
    kw.update(attn_options(r, sq, cap + n))
    kw["softmax_scale"] = 0.125 if dtype == torch.float64 else kw["softmax_scale"]  # exact in float32
    if n and r.random() < 0.4:
        ang = torch.rand(cap + sq, r.randint(1, d // 2), generator=g, dtype=torch.float64) * 6
        rdt = r.choice([torch.float32, dtype])
        kw.update(rotary_cos=ang.cos().to(rdt), rotary_sin=ang.sin().to(rdt), rotary_interleaved=r.random() < 0.5)
    want, want_kc, want_vc = kvcache_reference(q, kc, vc, lens=lens, **kw)
    with torch.no_grad():
        out = flashattn.flash_attn_with_kvcache(q, kc, vc, **kw, num_splits=r.choice([0, 0, 1, 2, 3, 7, 128]))
    atol = 1e-12 if dtype == torch.float64 else 2e-5
    assert out.dtype == dtype and out.shape == q.shape
    assert_close(out, want, atol, "out")
    assert_close(kc, want_kc, 1e-12 if dtype == torch.float64 else 1e-6, "k_cache after the append")
    assert torch.equal(vc, want_vc)


# ----------------------------------------------------------- invalid inputs ---

def valid_call(entry, r, g):
    """(function, kwargs) of a small valid call: the base that one bad
    argument spoils. hq = 4, hk = 2; KV-cache calls append and rotate."""
    b, sq, sk, d = r.randint(1, 2), r.randint(1, 9), r.randint(5, 12), r.choice([4, 8])
    q, k, v = randn(g, b, sq, 4, d), randn(g, b, sk, 2, d), randn(g, b, sk, 2, d)
    if entry == "func":
        return flashattn.flash_attn_func, dict(q=q, k=k, v=v)
    if entry == "qkvpacked":
        return flashattn.flash_attn_qkvpacked_func, dict(qkv=randn(g, b, sq, 3, 4, d))
    if entry == "kvpacked":
        return flashattn.flash_attn_kvpacked_func, dict(q=q, kv=torch.stack([k, v], 2))
    if entry == "varlen":
        cu = lambda s: torch.arange(0, b * s + 1, s, dtype=torch.int32)
        return flashattn.flash_attn_varlen_func, dict(q=q.flatten(0, 1), k=k.flatten(0, 1), v=v.flatten(0, 1),
                                                     cu_seqlens_q=cu(sq), cu_seqlens_k=cu(sk), max_seqlen_q=sq,
                                                     max_seqlen_k=sk)
    if entry == "block_sparse":  # key block 0 partial, 1 full (sk > block_k)
        bq, bk = r.choice([2, 4]), r.choice([2, 4])
        nqb, nkb = -(-sq // bq), -(-sk // bk)
        one, idx = torch.ones(1, 4, nqb, dtype=torch.int32), torch.zeros(1, 4, nqb, nkb, dtype=torch.int32)
        return flashattn.flash_attn_block_sparse_func, dict(q=q, k=k, v=v, kv_num_blocks=one, kv_indices=idx,
                                                            full_kv_num_blocks=one.clone(), full_kv_indices=idx + 1,
                                                            block_size=(bq, bk))
    if entry == "dropout_mask":
        return flashattn.dropout_mask, dict(seed=r.randrange(2 ** 64), offset=r.randrange(2 ** 64), dropout_p=0.5,
                                            batch=r.randint(0, 3), heads_q=4, head=r.randrange(4),
                                            rows=r.randint(0, 9), cols=r.randint(0, 9))
    n, sq = r.randint(1, 3), r.randint(1, 3)  # KV cache: "kvcache" is either kind
    kw = dict(q=randn(g, b, sq, 4, d), k=randn(g, b, n, 2, d), v=randn(g, b, n, 2, d))
    if entry == "paged" or (entry == "kvcache" and r.random() < 0.5):
        cap, blocks = 32, 2 * b + 1
        kw["k_cache"], kw["v_cache"] = randn(g, blocks, 16, 2, d), randn(g, blocks, 16, 2, d)
        kw["block_table"] = torch.randperm(blocks, generator=g)[:2 * b].view(b, 2).to(torch.int32)
    else:
        cap = 20
        kw["k_cache"], kw["v_cache"] = randn(g, b + 1, cap, 2, d), randn(g, b + 1, cap, 2, d)
        kw["cache_batch_idx"] = torch.randperm(b + 1, generator=g)[:b].to(torch.int32)
    kw["cache_seqlens"] = torch.tensor([r.randint(0, cap - n) for _ in range(b)], dtype=torch.int32)
    ang = torch.rand(cap + sq, r.randint(1, d // 2), generator=g) * 6
    return flashattn.flash_attn_with_kvcache, dict(kw, rotary_cos=ang.cos(), rotary_sin=ang.sin())


ATTN = ("func", "qkvpacked", "kvpacked", "varlen", "block_sparse")
KV = ("kvcache",)
meta = lambda t: t.to("meta")
past_int32 = [lambda t: t.long() + 2 ** 32, lambda t: t.long() - 2 ** 32]  # once wrapped into range
index_types = [meta, lambda t: t.long(), lambda t: t.float(), lambda t: t.tolist()]
# argument: (entries that take it, bad values: a callable spoils the base's value, a dict sets several
# arguments). The error must name the argument (or WORDS[argument]).
BAD = {
    "window_size": (ATTN + KV, [None, 5, "ab", (1.5, 2), ("a", 1), (None, None), (1, 2, 3), (1,), (-2, 0), (0, -2),
                                (2 ** 63, 0), (torch.tensor(1.5), 2), {"causal": True, "window_size": (3, 1)}]),
    "algorithm": (ATTN, ["FLASH", "std", None, 1, [], ""]),
    "dropout_p": (ATTN + ("dropout_mask",), [-0.1, 1.0, math.nan, math.inf, "0.1", None, [0.1]]),
    "seed": (ATTN + ("dropout_mask",), [-1, 2 ** 64, (1, -1), (1, 2 ** 64), "x", 1.5, (1,), (1, 2, 3)]),
    "generator": (ATTN, [5, "g", object()]),
    "softmax_scale": (ATTN + KV, [math.nan, math.inf, "0.5", [1.0], 1e39]),
    "softcap": (("func", "qkvpacked", "kvpacked", "varlen") + KV, [1.0, -1.0]),
    "alibi_slopes": (("func", "qkvpacked", "kvpacked", "varlen") + KV, [torch.ones(4)]),
    "q": (("func", "kvpacked", "varlen", "block_sparse") + KV,
          [None, "q", [1.0], lambda t: t.numpy(), meta, lambda t: t.int(), lambda t: t.double(), lambda t: t[0],
           lambda t: t[..., :1, :]]),
    "k": (("func", "varlen", "block_sparse") + KV, [None, [1.0], meta, lambda t: t.double(), lambda t: t[..., :1, :]]),
    "qkv": (("qkvpacked",), [None, lambda t: list(t.unbind(2)), lambda t: t[:, :, :2], lambda t: t[None]]),
    "kv": (("kvpacked",), [None, lambda t: tuple(t.unbind(2)), lambda t: t[:, :, :1]]),
    "cu_seqlens_q": (("varlen",), index_types + [None, lambda t: t[None], lambda t: t[:-1], lambda t: t.flip(0)]),
    "cu_seqlens_k": (("varlen",), index_types + [None, lambda t: t[None], lambda t: t[1:], lambda t: t.flip(0)]),
    "max_seqlen_q": (("varlen",), [None, "5", [5], 5.5, math.nan, -1, 2 ** 31, 2 ** 63, 10 ** 30]),
    "max_seqlen_k": (("varlen",), [None, "5", 5.5, -1, 2 ** 63]),
    "block_size": (("block_sparse",), ["a", 1.5, None, (4.0, 4.0), (4,), (4, 4, 4), 0, -1, (0, 4), (4, -3),
                                       2 ** 63, 2 ** 70]),
    "kv_num_blocks": (("block_sparse",), index_types + [None, lambda t: t.flatten(), lambda t: t + 100,
                                                       lambda t: t - 2]),
    "kv_indices": (("block_sparse",), index_types + [None, lambda t: t[..., 0], lambda t: t + 100, lambda t: t - 9]),
    "full_kv_num_blocks": (("block_sparse",), index_types + [None, lambda t: t + 100]),
    "full_kv_indices": (("block_sparse",), index_types + [None, lambda t: t + 100]),
    "cache_seqlens": (KV, [1.5, "3", [3, 5], 2 ** 40, 2 ** 63, lambda t: t.float(), meta, lambda t: t[:0],
                           lambda t: t[None], lambda t: t - 100, lambda t: t + 100] + past_int32),
    "block_table": (("paged",), [meta, lambda t: t[:, :0], lambda t: t[:, 0], lambda t: t.float(),
                                 lambda t: t.tolist()] + past_int32),
    "cache_batch_idx": (("contiguous",), [meta, lambda t: t.float(), lambda t: t.tolist(), lambda t: t + 100,
                                          lambda t: t - 100] + past_int32),
    "num_splits": (KV, [None, 1.5, "2", -1, 129, 2 ** 63]),
    "rotary_cos": (KV, [[1.0], meta, {"rotary_sin": None}, {"rotary_cos": torch.ones(40, 0),
                                                            "rotary_sin": torch.zeros(40, 0)},
                        lambda t: t.int()]),
    "k_cache": (KV, [meta, lambda t: t.double(), lambda t: t.transpose(-1, -2).contiguous().transpose(-1, -2)]),
    "cache_leftpad": (KV, [torch.zeros(2, dtype=torch.int32)]),
    "batch": (("dropout_mask",), [-1, 2 ** 62, 2 ** 61, 2 ** 63 - 1, 2 ** 64, "0", None]),  # heads_q = 4
    "heads_q": (("dropout_mask",), [0, -1, 1.0]),
    "head": (("dropout_mask",), [-1, 4, None]),
    "rows": (("dropout_mask",), [-1, 2 ** 31, 2 ** 40, [3], {"rows": 2 ** 30, "cols": 2 ** 30}]),
    "cols": (("dropout_mask",), [-1, 2 ** 33, 1.5, {"rows": 2 ** 31 - 1, "cols": 2 ** 31 - 1}]),
    "offset": (("dropout_mask",), [-1, 2 ** 64, "1"]),
}
WORDS = {"window_size": "window", "block_size": "block", "kv_num_blocks": "kv_", "full_kv_num_blocks": "full_kv_"}
CASES = [(name, j) for name, (_, values) in BAD.items() for j in range(len(values))]


@pytest.mark.parametrize("name, j", CASES, ids=[f"{n}-{j}" for n, j in CASES])
def test_invalid_argument_is_refused(name, j):
    """One bad argument in an otherwise valid call (which is run first, on
    copies): a ValueError / TypeError / NotImplementedError in the library's
    format naming the argument, and no tensor written (KV caches included)."""
    r, g = rngs("invalid", name, j)
    entries, values = BAD[name]
    fn, kw = valid_call(r.choice(entries), r, g)
    with torch.no_grad():
        fn(**{k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in kw.items()})
    if name in ("seed", "generator") and fn is not flashattn.dropout_mask:
        kw["dropout_p"] = 0.5
    bad = values[j]
    kw.update(bad if isinstance(bad, dict) else {name: bad(kw[name]) if callable(bad) else bad})
    before = {k: t.clone() for k, t in kw.items() if isinstance(t, torch.Tensor) and t.device.type != "meta"}
    with pytest.raises((ValueError, TypeError, NotImplementedError)) as info:
        fn(**kw)
    msg = str(info.value)
    assert msg.startswith("flashattn") and "expected" in msg and WORDS.get(name, name) in msg, msg
    for k, t in before.items():
        assert torch.equal(kw[k], t), f"{k} was written"
