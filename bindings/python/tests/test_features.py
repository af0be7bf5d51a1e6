"""Dropout, block-sparse, torch.compile, gradcheck / opcheck, errors."""
import pytest

pytestmark = pytest.mark.filterwarnings("ignore:Dropout mask should only be used for testing")
import torch

import flashattn
from flashattn._ops import INT_OPTIONS, pack_options
from conftest import assert_close, block_visible, grads_of, rand_qkv, random_block_mask, sdpa_reference, visible


def keep_mask(seed, offset, p, b, hq, sq, sk, batch_index=None):
    """bool [b, hq, sq, sk] from the library's dropout_mask helper."""
    return torch.stack([
        torch.stack([flashattn.dropout_mask(seed, offset, p, bi if batch_index is None else batch_index, hq, h, sq, sk)
                     for h in range(hq)]) for bi in range(b)])


# ----------------------------------------------------------------- dropout ---

@pytest.mark.parametrize("causal", [False, True])
def test_dropout_matches_reference_with_library_mask(config, causal):
    dtype, algorithm, atol_o, atol_g = config
    b, sq, sk, hq, hk, d, p = 2, 24, 40, 4, 2, 32, 0.3
    seed, offset = 2 ** 64 - 5, 12345  # a seed above 2^63 exercises the unsigned conversion
    q, k, v = rand_qkv(b, sq, sk, hq, hk, d, dtype, seed=1)
    out, lse, rng = flashattn.flash_attn_func(q, k, v, dropout_p=p, causal=causal, seed=(seed, offset),
                                              return_attn_probs=True, algorithm=algorithm)
    assert rng.tolist() == [seed - 2 ** 64, offset]
    # The library applies 1/(1-p) as a float32, hence 1e-7 (relative) at best.
    atol_o, atol_g = max(atol_o, 1e-7), max(atol_g, 1e-7)
    keep = keep_mask(seed, offset, p, b, hq, sq, sk)
    ref = sdpa_reference(q, k, v, visible(sq, sk, causal=causal), dropout_p=p, keep=keep)
    assert_close(out, ref, atol_o, "out")
    dout = torch.randn(out.shape, dtype=torch.float64)
    for name, g, w in zip("qkv", grads_of(out, (q, k, v), dout.to(dtype)), grads_of(ref, (q, k, v), dout)):
        assert_close(g, w, atol_g, "d" + name)
    # Without dropout the LSE is the same: it is of the un-dropped softmax.
    _, lse0, _ = flashattn.flash_attn_func(q, k, v, causal=causal, return_attn_probs=True, algorithm=algorithm)
    assert torch.equal(lse, lse0)


def test_dropout_mask_keeps_the_expected_fraction():
    keep = flashattn.dropout_mask(7, 0, 0.25, 0, 1, 0, 256, 256)
    assert keep.dtype == torch.bool and keep.shape == (256, 256)
    assert abs(keep.float().mean().item() - 0.75) < 0.01
    other = flashattn.dropout_mask(7, 1, 0.25, 0, 1, 0, 256, 256)
    assert not torch.equal(keep, other)  # the offset moves the stream


def test_dropout_varlen_uses_sequence_index_and_local_positions():
    lens_q, lens_k, hq, d, p, seed = [6, 9], [8, 5], 2, 16, 0.4, 99
    cu_q = torch.tensor([0, 6, 15], dtype=torch.int32)
    cu_k = torch.tensor([0, 8, 13], dtype=torch.int32)
    q = torch.randn(15, hq, d, dtype=torch.float64)
    k = torch.randn(13, hq, d, dtype=torch.float64)
    v = torch.randn(13, hq, d, dtype=torch.float64)
    out = flashattn.flash_attn_varlen_func(q, k, v, cu_q, cu_k, 9, 8, dropout_p=p, seed=seed, algorithm="standard")
    for s in range(2):
        rq, rk = slice(cu_q[s], cu_q[s + 1]), slice(cu_k[s], cu_k[s + 1])
        keep = keep_mask(seed, 0, p, 1, hq, lens_q[s], lens_k[s], batch_index=s)
        ref = sdpa_reference(q[rq][None], k[rk][None], v[rk][None], dropout_p=p, keep=keep)
        assert_close(out[rq], ref[0], 1e-7, f"out of sequence {s}")


def test_dropout_rng_from_generator_is_reproducible():
    q, k, v = rand_qkv(1, 16, 16, 2, 2, 16, torch.float32, requires_grad=False)
    torch.manual_seed(123)
    a, _, rng_a = flashattn.flash_attn_func(q, k, v, dropout_p=0.5, return_attn_probs=True)
    torch.manual_seed(123)
    b = flashattn.flash_attn_func(q, k, v, dropout_p=0.5)
    c = flashattn.flash_attn_func(q, k, v, dropout_p=0.5)  # the generator has moved on
    assert torch.equal(a, b) and not torch.equal(a, c)
    g = torch.Generator().manual_seed(5)
    d, _, rng_d = flashattn.flash_attn_func(q, k, v, dropout_p=0.5, generator=g, return_attn_probs=True)
    # The returned state reproduces the call exactly.
    e = flashattn.flash_attn_func(q, k, v, dropout_p=0.5, seed=tuple(x % 2 ** 64 for x in rng_d.tolist()))
    assert torch.equal(d, e)
    assert rng_a.dtype == torch.int64 and rng_a.shape == (2,)


# ------------------------------------------------------------ block-sparse ---

@pytest.mark.parametrize("mask_b, mask_h", [(2, 4), (1, 1)])
@pytest.mark.parametrize("causal", [False, True])
def test_block_sparse_matches_dense_with_equivalent_mask(config, mask_b, mask_h, causal):
    dtype, algorithm, atol_o, atol_g = config
    b, sq, sk, hq, hk, d, bq, bk = 2, 45, 37, 4, 2, 32, 16, 8
    q, k, v = rand_qkv(b, sq, sk, hq, hk, d, dtype, seed=4)
    nqb, nkb = -(-sq // bq), -(-sk // bk)
    cnt, idx, fcnt, fidx, state = random_block_mask(mask_b, mask_h, nqb, nkb, torch.Generator().manual_seed(3))
    out, lse, _ = flashattn.flash_attn_block_sparse_func(q, k, v, cnt, idx, fcnt, fidx, block_size=(bq, bk),
                                                         causal=causal, return_attn_probs=True, algorithm=algorithm)
    mask = block_visible(state, bq, bk, sq, sk, causal)
    ref = sdpa_reference(q, k, v, mask)
    assert_close(out, ref, atol_o, "out")
    assert torch.equal(torch.isinf(lse), ~mask.expand(b, hq, sq, sk).any(-1))
    dout = torch.randn(out.shape, dtype=torch.float64)
    for name, g, w in zip("qkv", grads_of(out, (q, k, v), dout.to(dtype)), grads_of(ref, (q, k, v), dout)):
        assert_close(g, w, atol_g, "d" + name)


def test_block_sparse_from_flex_attention_block_mask():
    flex = pytest.importorskip("torch.nn.attention.flex_attention")
    s, bs = 64, 16
    bm = flex.create_block_mask(lambda b, h, qi, ki: qi >= ki, None, None, s, s, device="cpu", BLOCK_SIZE=bs)
    q, k, v = rand_qkv(1, s, s, 2, 2, 32, torch.float32, requires_grad=False)
    out = flashattn.flash_attn_block_sparse_func(q, k, v, causal=True, **flashattn.block_mask_args(bm))
    assert_close(out, flashattn.flash_attn_func(q, k, v, causal=True), 1e-6, "out")


# ----------------------------------------------------- compile / gradcheck ---

class TinyAttention(torch.nn.Module):
    def __init__(self, dim=32, heads=4, kv_heads=2):
        super().__init__()
        self.heads, self.kv_heads, self.hd = heads, kv_heads, dim // heads
        self.q = torch.nn.Linear(dim, dim)
        self.kv = torch.nn.Linear(dim, 2 * kv_heads * self.hd)
        self.o = torch.nn.Linear(dim, dim)

    def forward(self, x, dropout_p=0.0):
        b, s, _ = x.shape
        q = self.q(x).view(b, s, self.heads, self.hd)
        k, v = self.kv(x).view(b, s, 2, self.kv_heads, self.hd).unbind(2)
        y = flashattn.flash_attn_func(q, k, v, dropout_p=dropout_p, causal=True)
        return self.o(y.reshape(b, s, -1))


def test_torch_compile_fullgraph():
    torch.manual_seed(0)
    model = TinyAttention()
    x = torch.randn(2, 24, 32, requires_grad=True)
    compiled = torch.compile(model, fullgraph=True)
    y, y_ref = compiled(x), model(x)
    assert_close(y, y_ref, 1e-5, "compiled out")
    gy = torch.randn_like(y)
    g = torch.autograd.grad(y, [x, *model.parameters()], gy)
    g_ref = torch.autograd.grad(y_ref, [x, *model.parameters()], gy)
    for a, b in zip(g, g_ref):
        assert_close(a, b, 1e-4, "compiled grad")
    # Dropout inside the graph draws its seed in-graph (no graph break).
    yd = compiled(x, dropout_p=0.2)
    assert yd.shape == y.shape and torch.isfinite(yd).all() and not torch.equal(yd, y)


@pytest.mark.parametrize("opts", [dict(causal=True), dict(window_size=(2, 1)), dict(dropout_p=0.3, seed=17)],
                         ids=["causal", "window", "dropout"])
def test_gradcheck_float64(opts):
    q, k, v = rand_qkv(1, 5, 6, 2, 1, 4, torch.float64, seed=8)
    f = lambda q, k, v: flashattn.flash_attn_func(q, k, v, algorithm="standard", **opts)
    assert torch.autograd.gradcheck(f, (q, k, v), eps=1e-6, atol=1e-5)


def test_opcheck_registrations():
    q, k, v = rand_qkv(1, 8, 8, 2, 1, 8, torch.float64, seed=2)
    rng = torch.tensor([3, 0], dtype=torch.int64)
    args = (q, k, v, *pack_options(dropout_p=0.2, causal=True, rng_state=rng, algorithm=1))
    torch.library.opcheck(torch.ops.flashattn.fwd.default, args)
    # The short form of option_tensors (no tensors: []).
    torch.library.opcheck(torch.ops.flashattn.fwd.default, (q, k, v, *pack_options(causal=True, algorithm=1)))


def test_empty_option_tensors_mean_all_none():
    assert pack_options()[0] == [] and len(pack_options(rng_state=torch.zeros(2))[0]) == 7
    q, k, v = rand_qkv(1, 8, 8, 2, 1, 8, torch.float64, seed=4)
    _, ints, p, scale = pack_options(causal=True, algorithm=1)
    outs = [torch.ops.flashattn.fwd(q, k, v, tensors, ints, p, scale) for tensors in ([], [None] * 7)]
    assert all(torch.equal(a, b) for a, b in zip(*outs))
    dout = torch.randn_like(outs[0][0])
    grads = [torch.autograd.grad(out, (q, k, v), dout) for out, _ in outs]
    assert all(torch.equal(a, b) for a, b in zip(*grads))
    out, lse = outs[0]
    for tensors in ([], [None] * 7):
        bwd = torch.ops.flashattn.bwd(dout, q, k, v, out.detach(), lse, tensors, ints, p, scale)
        assert all(torch.equal(a, b) for a, b in zip(bwd, grads[0]))


# ------------------------------------------------------------------ errors ---

_CU8 = torch.tensor([0, 8], dtype=torch.int32)


def _qkv(dtype=torch.float32, hq=2, hk=2, d=16):
    return (torch.randn(1, 8, hq, d, dtype=dtype), torch.randn(1, 8, hk, d, dtype=dtype),
            torch.randn(1, 8, hk, d, dtype=dtype))


@pytest.mark.parametrize("call, exc, words", [
    (lambda: flashattn.flash_attn_func(*_qkv(hq=3)), ValueError, "q.heads"),
    (lambda: flashattn.flash_attn_func(*_qkv(torch.float64)), ValueError, "q.dtype / head_dim"),
    (lambda: flashattn.flash_attn_func(*_qkv(d=300)), ValueError, "head_dim"),
    (lambda: flashattn.flash_attn_func(_qkv()[0], *_qkv(torch.float64)[1:]), ValueError, "k.dtype"),
    (lambda: flashattn.flash_attn_func(*(t.int() for t in _qkv())), ValueError, "q.dtype"),
    (lambda: flashattn.flash_attn_func(*(t[0] for t in _qkv())), ValueError, "4-D"),
    (lambda: flashattn.flash_attn_func(*_qkv(), dropout_p=1.0), ValueError, "dropout_p"),
    (lambda: flashattn.flash_attn_func(*_qkv(), causal=True, window_size=(4, 2)), ValueError, "window_right"),
    (lambda: flashattn.flash_attn_func(*_qkv(), window_size=(-2, 0)), ValueError, "window_left"),
    (lambda: flashattn.flash_attn_func(*_qkv(), algorithm="fast"), ValueError, "algorithm"),
    (lambda: flashattn.flash_attn_func(*_qkv(), softcap=1.0), NotImplementedError, "softcap"),
    (lambda: flashattn.flash_attn_func(*_qkv(), dropout_p=0.1, seed=-1), ValueError, "seed"),
    (lambda: flashattn.flash_attn_varlen_func(*(t[0] for t in _qkv()), torch.tensor([0, 8]), torch.tensor([0, 8]),
                                              8, 8), ValueError, "cu_seqlens_q"),
    (lambda: flashattn.flash_attn_varlen_func(*(t[0] for t in _qkv()), torch.tensor([0, 5, 3], dtype=torch.int32),
                                              torch.tensor([0, 4, 8], dtype=torch.int32), 5, 4),
     ValueError, "non-decreasing"),
    (lambda: flashattn.flash_attn_block_sparse_func(*_qkv(), torch.ones(1, 1, 1, dtype=torch.int32),
                                                    torch.zeros(1, 1, 1, 2, dtype=torch.int32), block_size=8),
     ValueError, "num_k_blocks"),
    (lambda: flashattn.flash_attn_block_sparse_func(*_qkv(), torch.full((1, 1, 1), 2, dtype=torch.int32),
                                                    torch.zeros(1, 1, 1, 1, dtype=torch.int32), block_size=8),
     ValueError, "kv_count"),
    (lambda: flashattn.flash_attn_block_sparse_func(*_qkv(), torch.ones(1, 1, 1, dtype=torch.int32),
                                                    torch.zeros(1, 1, 1, dtype=torch.int32), block_size=8),
     ValueError, "kv_indices"),
    (lambda: torch.ops.flashattn.fwd(*(t[0] for t in _qkv()), *pack_options()), ValueError, "4-D"),
    (lambda: torch.ops.flashattn.fwd(*_qkv(), [None] * 6, *pack_options()[1:]), ValueError,
     "option_tensors: expected 7 entries (cu_seqlens_q, cu_seqlens_k, rng_state"),
    (lambda: torch.ops.flashattn.fwd(*_qkv(), [None] * 3, [0] * 9, 0.0, None), ValueError,
     "option_tensors: expected 7 entries"),
    (lambda: torch.ops.flashattn.fwd(*_qkv(), pack_options()[0], [0] * 10, 0.0, None), ValueError,
     "option_ints: expected 9 entries (max_seqlen_q, max_seqlen_k, causal"),
    (lambda: torch.ops.flashattn.fwd(*_qkv(), pack_options()[0], [2 if n == "causal" else 0 for n in INT_OPTIONS],
                                     0.0, None), ValueError, "causal: expected 0 or 1"),
    (lambda: torch.ops.flashattn.fwd(*_qkv(), *pack_options(dropout_p=0.1)), ValueError, "rng_state"),
    (lambda: flashattn.flash_attn_block_sparse_func(*_qkv(), torch.ones(1, 1, 1), torch.zeros(1, 1, 1, 1),
                                                    block_size=8), ValueError, "int32"),
    # Index tensors on another device: a meta one would pick the fake kernel
    # (uninitialised output) if nothing checked it.
    (lambda: flashattn.flash_attn_varlen_func(*(t[0] for t in _qkv()), _CU8.to("meta"), _CU8, 8, 8), ValueError,
     "cu_seqlens_q.device"),
    (lambda: flashattn.flash_attn_block_sparse_func(*_qkv(), torch.ones(1, 1, 1, dtype=torch.int32).to("meta"),
                                                    torch.zeros(1, 1, 1, 1, dtype=torch.int32), block_size=8),
     ValueError, "kv_num_blocks.device"),
    # Arguments of the wrong type or out of range, each named.
    (lambda: flashattn.flash_attn_func(*_qkv(), window_size=None), TypeError, "window_size"),
    (lambda: flashattn.flash_attn_func(*_qkv(), window_size=5), TypeError, "window_size"),
    (lambda: flashattn.flash_attn_qkvpacked_func(list(_qkv())), TypeError, "qkv"),
    (lambda: flashattn.flash_attn_kvpacked_func(_qkv()[0], tuple(_qkv()[1:])), TypeError, "kv"),
    (lambda: flashattn.flash_attn_varlen_func(*(t[0] for t in _qkv()), _CU8, _CU8, None, 8), TypeError,
     "max_seqlen_q"),
    (lambda: flashattn.flash_attn_varlen_func(*(t[0] for t in _qkv()), _CU8, _CU8, 8, 2 ** 63), ValueError,
     "max_seqlen_k"),
    (lambda: flashattn.flash_attn_func(*_qkv(), dropout_p=0.1, generator=5), TypeError, "generator"),
    (lambda: flashattn.flash_attn_func(*_qkv(), dropout_p=0.1, seed="x"), TypeError, "seed"),
    (lambda: flashattn.flash_attn_func(*_qkv(), dropout_p=0.1, seed=(1, 2, 3)), TypeError, "seed"),
    (lambda: flashattn.flash_attn_func(*_qkv(), algorithm=[]), ValueError, "algorithm"),
    (lambda: flashattn.flash_attn_block_sparse_func(*_qkv(), torch.ones(1, 1, 1, dtype=torch.int32),
                                                    torch.zeros(1, 1, 1, 1, dtype=torch.int32), block_size=(8,)),
     ValueError, "block_size"),
    (lambda: flashattn.flash_attn_block_sparse_func(*_qkv(), torch.ones(1, 1, 1, dtype=torch.int32),
                                                    torch.zeros(1, 1, 1, 1, dtype=torch.int32), block_size=None),
     TypeError, "block_size"),
    (lambda: flashattn.dropout_mask(1, 0, 0.5, 2 ** 62, 4, 0, 4, 4), ValueError, "batch"),
    (lambda: flashattn.dropout_mask(1, 0, 0.5, 0, 1, 0, 2 ** 40, 5), ValueError, "rows"),
    (lambda: flashattn.dropout_mask(1, 0, 0.5, 0, 1, 0, 4, None), TypeError, "cols"),
    (lambda: flashattn.dropout_mask(1, 0, 0.5, 0, 1, 0, 2 ** 30, 2 ** 30), ValueError, "rows / cols"),
])
def test_bad_input_raises_a_clear_error(call, exc, words):
    with pytest.raises(exc, match=words.replace(".", r"\.").replace("(", r"\(")) as info:
        call()
    assert "expected" in str(info.value)


def test_broadcast_heads_are_copied_not_rejected():
    # KV heads broadcast by expand() overlap (stride_head 0): the library
    # refuses overlapping heads, the binding copies such an input.
    q = torch.randn(1, 8, 4, 16, dtype=torch.float64, requires_grad=True)
    k1, v1 = (torch.randn(1, 8, 1, 16, dtype=torch.float64, requires_grad=True) for _ in range(2))
    out = flashattn.flash_attn_func(q, k1.expand(1, 8, 4, 16), v1.expand(1, 8, 4, 16), causal=True,
                                    algorithm="standard")
    ref = sdpa_reference(q, k1.expand(1, 8, 4, 16), v1.expand(1, 8, 4, 16), visible(8, 8, causal=True))
    assert_close(out, ref, 1e-12, "out")
    # gradients flow back through the copy to the broadcast source
    (gk,) = torch.autograd.grad(out.sum(), (k1,))
    (wk,) = torch.autograd.grad(ref.sum(), (k1,))
    assert_close(gk, wk, 1e-10, "dk")


@pytest.mark.parametrize("bad", ["3-D", "int32", "k float64", "v int32", "k on meta"])
def test_eager_and_checked_paths_raise_the_same_error(bad):
    # Eager calls on plain tensors leave these checks to the kernels (C++);
    # others (here q as a tensor subclass: the torch.ops path) make them in
    # Python first (flashattn/_ops.py, _check_inputs). Same type, same text.
    q, k, v = _qkv()
    if bad == "3-D":
        q, k, v = q[0], k[0], v[0]
    elif bad == "int32":
        q, k, v = q.int(), k.int(), v.int()
    elif bad == "k float64":
        k = k.double()
    elif bad == "v int32":
        v = v.int()
    else:
        k = torch.empty(k.shape, device="meta")

    class Sub(torch.Tensor):
        pass

    errors = []
    for q_ in (q, q.as_subclass(Sub)):
        with pytest.raises(ValueError) as info:
            flashattn.flash_attn_func(q_, k, v)
        errors.append(str(info.value))
    assert errors[0] == errors[1] and "expected" in errors[0]


def test_torch_function_overrides_see_the_operator():
    # flash_attn_func reaches the operator past torch.ops only when nothing
    # could override __torch_function__; a mode or a subclass must see it.
    seen = []

    class Mode(torch.overrides.TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            seen.append(func)
            return func(*args, **(kwargs or {}))

    class Sub(torch.Tensor):
        @classmethod
        def __torch_function__(cls, func, types, args=(), kwargs=None):
            seen.append(func)
            return super().__torch_function__(func, types, args, kwargs)

    q, k, v = _qkv()
    ref = flashattn.flash_attn_func(q, k, v, causal=True)
    with Mode():
        out = flashattn.flash_attn_func(q, k, v, causal=True)
    assert torch.ops.flashattn.fwd.default in seen and torch.equal(out, ref)
    seen.clear()
    out = flashattn.flash_attn_func(q.as_subclass(Sub), k, v, causal=True)
    assert torch.ops.flashattn.fwd.default in seen and torch.equal(out.as_subclass(torch.Tensor), ref)


def test_backward_op_checks_lse():
    q, k, v = _qkv()
    out = flashattn.flash_attn_func(q, k, v)
    with pytest.raises(ValueError, match="lse"):
        torch.ops.flashattn.bwd(out, q, k, v, out, torch.zeros(3), *pack_options())
    with pytest.raises(ValueError, match="option_ints: expected 9 entries"):
        torch.ops.flashattn.bwd(out, q, k, v, out, torch.zeros(3), pack_options()[0], [], 0.0, None)


def test_supported():
    assert flashattn.supported("cpu", torch.float32, 64)
    assert flashattn.supported(torch.device("cpu"), torch.bfloat16, 128)
    assert not flashattn.supported("cpu", torch.float64, 64)
    assert flashattn.supported("cpu", torch.float64, 64, algorithm="standard")
    assert not flashattn.supported("cpu", torch.float32, 512)
    assert not flashattn.supported("cpu", torch.int32, 64)
    assert flashattn.supported("cuda", torch.float16, 64) == flashattn.built_with_cuda()
    assert not flashattn.supported("cuda", torch.float32, 64)
