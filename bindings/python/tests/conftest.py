"""Shared helpers: the float64 reference (torch's math SDPA with an explicit
boolean mask) and random inputs. The reference never calls flashattn."""
import math
import os
import sys

import pytest
import torch

# The tests exercise the installed package; the source folder (next to this
# one) has no operator library and must not shadow it.
_src = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _src]

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def f32_scale(head_dim, softmax_scale=None):
    """The softmax scale as the library uses it (a float32)."""
    s = 1.0 / math.sqrt(head_dim) if softmax_scale is None else softmax_scale
    return float(torch.tensor(s, dtype=torch.float32))


def visible(sq, sk, causal=False, window_size=(-1, -1)):
    """bool [sq, sk]: the bottom-right aligned causal / window rule."""
    i = torch.arange(sq).unsqueeze(1)
    j = torch.arange(sk).unsqueeze(0)
    diag = i + sk - sq
    left, right = window_size
    if causal:
        right = 0
    ok = torch.ones(sq, sk, dtype=torch.bool)
    if left >= 0:
        ok &= j >= diag - left
    if right >= 0:
        ok &= j <= diag + right
    return ok


def random_block_mask(b, h, nqb, nkb, gen):
    """Random partial / full / skipped key blocks per query block, as the
    compressed lists and as a [b, h, nqb, nkb] state (0 skip, 1 partial, 2 full)."""
    state = torch.randint(0, 3, (b, h, nqb, nkb), generator=gen)
    counts, indices = [], []
    for kind in (1, 2):
        cnt = (state == kind).sum(-1).to(torch.int32)
        idx = torch.zeros(b, h, nqb, nkb, dtype=torch.int32)
        for bi in range(b):
            for hi in range(h):
                for qb in range(nqb):
                    cols = (state[bi, hi, qb] == kind).nonzero().flatten()
                    cols = cols[torch.randperm(len(cols), generator=gen)]  # any order is allowed
                    idx[bi, hi, qb, :len(cols)] = cols.to(torch.int32)
        counts.append(cnt)
        indices.append(idx)
    return counts[0], indices[0], counts[1], indices[1], state


def block_visible(state, bq, bk, sq, sk, causal=False, window_size=(-1, -1)):
    """The element mask of random_block_mask's state: full blocks whole,
    partial ones under the causal / window rule, skipped ones not at all."""
    elem = state.repeat_interleave(bq, 2)[:, :, :sq].repeat_interleave(bk, 3)[..., :sk]
    return (elem == 2) | ((elem == 1) & visible(sq, sk, causal, window_size))


def sdpa_reference(q, k, v, mask=None, scale=None, dropout_p=0.0, keep=None):
    """O of (batch, seqlen, heads, head_dim) inputs in float64 through
    torch's math SDPA. mask: bool broadcastable to [b, h, sq, sk] (True =
    attend); keep: bool [b, h, sq, sk] dropout keep-mask. GQA by repeating
    k/v heads (head h reads kv head h // group). Rows with no visible key
    are 0, as the library defines them."""
    q, k, v = (t.to(torch.float64) for t in (q, k, v))
    b, sq, hq, d = q.shape
    sk, hk = k.shape[1], k.shape[2]
    group = hq // hk
    k = k.repeat_interleave(group, dim=2)
    v = v.repeat_interleave(group, dim=2)
    qt, kt, vt = (t.transpose(1, 2) for t in (q, k, v))
    if mask is None:
        mask = torch.ones(sq, sk, dtype=torch.bool)
    mask = mask.expand(b, hq, sq, sk)
    row_ok = mask.any(-1, keepdim=True)
    # SDPA gives NaN for a row with no visible key: let it see everything
    # and zero the row afterwards (which also zeroes its gradients).
    safe = mask | ~row_ok
    # The math kernel itself (the public SDPA cannot take a dropout mask)
    # wants the additive float form of the boolean mask.
    bias = torch.zeros(safe.shape, dtype=torch.float64).masked_fill(~safe, float("-inf"))
    out, _ = torch.ops.aten._scaled_dot_product_attention_math(
        qt, kt, vt, bias, dropout_p, False, keep, scale=scale if scale is not None else f32_scale(d))
    out = out * row_ok
    return out.transpose(1, 2)


def rand_qkv(b, sq, sk, hq, hk, d, dtype, seed=0, requires_grad=True):
    g = torch.Generator().manual_seed(seed)
    mk = lambda s, h: torch.randn(b, s, h, d, generator=g, dtype=torch.float64).to(dtype).requires_grad_(requires_grad)
    return mk(sq, hq), mk(sk, hk), mk(sk, hk)


# (dtype, algorithm, atol for O, atol for grads): f64 runs through the
# standard path (the flash CPU path takes f32/f16/bf16), compared tightly;
# the others against the f64 reference of the same (rounded) inputs.
CONFIGS = {
    "f64-standard": (torch.float64, "standard", 1e-10, 1e-9),
    "f32-flash": (torch.float32, "flash", 2e-5, 1e-4),
    "f32-standard": (torch.float32, "standard", 2e-5, 1e-4),
    "f16-flash": (torch.float16, "flash", 4e-3, 1e-2),
    "bf16-flash": (torch.bfloat16, "flash", 2e-2, 5e-2),
}


@pytest.fixture(params=list(CONFIGS), ids=list(CONFIGS))
def config(request):
    return CONFIGS[request.param]


def grads_of(out, inputs, dout):
    return torch.autograd.grad(out, inputs, dout)


def assert_close(actual, expected, atol, what):
    actual = actual.to(torch.float64)
    expected = expected.to(torch.float64)
    assert torch.isfinite(actual).all(), f"{what}: non-finite values"
    err = (actual - expected).abs().max().item() if actual.numel() else 0.0
    scale = max(1.0, expected.abs().max().item() if expected.numel() else 0.0)
    assert err <= atol * scale, f"{what}: max abs error {err:.3e} > {atol:.1e} * {scale:.2f}"
