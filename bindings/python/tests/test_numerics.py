"""Numerical robustness through the binding: windows at the int64 limits,
the NaN rule (README, Semantics), argument checks that name the argument,
and the mapping of library error kinds to Python exceptions."""
import pytest
import torch

import flashattn


def _qkv(sq=64, sk=64, h=2, d=32, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(1, sq, h, d, generator=g, dtype=torch.float32).to(dtype)
    k = torch.randn(1, sk, h, d, generator=g, dtype=torch.float32).to(dtype)
    v = torch.randn(1, sk, h, d, generator=g, dtype=torch.float32).to(dtype)
    return q, k, v


@pytest.mark.parametrize("window, sq, sk", [((-1, 2 ** 63 - 1), 64, 64), ((2 ** 63 - 1, -1), 90, 40),
                                             ((2 ** 63 - 1, 2 ** 63 - 1), 40, 90)])
@pytest.mark.parametrize("algorithm", ["flash", "standard"])
def test_window_at_int64_limit_is_unbounded(window, sq, sk, algorithm):
    q, k, v = _qkv(sq, sk)
    got = flashattn.flash_attn_func(q, k, v, window_size=window, algorithm=algorithm)
    want = flashattn.flash_attn_func(q, k, v, algorithm=algorithm)
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("window, exc", [((0, 2 ** 63), ValueError), ((-2 ** 64, 0), ValueError),
                                          (("a", 0), TypeError), ((1.5, 0), TypeError)])
def test_window_size_errors_name_the_argument(window, exc):
    q, k, v = _qkv(8, 8)
    with pytest.raises(exc, match="window_size"):
        flashattn.flash_attn_func(q, k, v, window_size=window)


@pytest.mark.parametrize("name", ["dropout_p", "softmax_scale"])
def test_string_numbers_are_rejected(name):
    q, k, v = _qkv(8, 8)
    with pytest.raises(TypeError, match=name):
        flashattn.flash_attn_func(q, k, v, **{name: "0.1"})


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_nan_query_row_is_nan_and_stays_in_its_row(dtype):
    q, k, v = _qkv(dtype=dtype)
    q[0, 10, 0, 3] = float("nan")
    q.requires_grad_(), k.requires_grad_(), v.requires_grad_()
    out = flashattn.flash_attn_func(q, k, v, causal=True)
    # As PyTorch's attention: the row is NaN, not zeros.
    assert out[0, 10, 0].isnan().all()
    rows = out[0, :, 0].isnan().any(-1).nonzero().flatten().tolist()
    assert rows == [10]
    assert out[0, :, 1].isfinite().all()
    out.float().sum().backward()
    # Row 10 sees keys 0..10 (causal): only those get NaN gradients.
    dk_rows = k.grad[0, :, 0].isnan().any(-1).nonzero().flatten().tolist()
    assert dk_rows == list(range(11))
    assert q.grad[0, :, 0].isnan().any(-1).nonzero().flatten().tolist() == [10]
    assert k.grad[0, :, 1].isfinite().all() and v.grad[0, :, 1].isfinite().all()


def test_nan_value_outside_window_reaches_no_row():
    q, k, v = _qkv()
    v[0, 5, 0, 0] = float("nan")
    out = flashattn.flash_attn_func(q, k, v, window_size=(8, 0))
    rows = out[0, :, 0].isnan().any(-1).nonzero().flatten().tolist()
    assert rows == list(range(5, 14))


def test_argument_errors_are_value_errors():
    q, k, v = _qkv(8, 8)
    with pytest.raises(ValueError, match="window_right"):
        flashattn.flash_attn_func(q, k, v, window_size=(0, -5))
