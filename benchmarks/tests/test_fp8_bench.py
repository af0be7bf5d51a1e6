"""fp8_bench's pieces that run without a GPU: the quantisation it feeds the
FP8 forward, its row flag, its table and its flag errors."""
import os
import sys

import pytest

torch = pytest.importorskip("torch")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import fp8_bench  # noqa: E402


def test_quantise_uses_the_range_and_dequantises_closely():
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 64, 4, 32, generator=gen)
    codes, descale = fp8_bench.quantise(x, 2)
    assert codes.dtype == torch.float8_e4m3fn and descale.shape == (2, 2)
    # The largest magnitude of each (batch, KV head) maps to 448, e4m3's largest finite value.
    amax = codes.float().abs().reshape(2, 64, 2, 2, 32).amax(dim=(1, 3, 4))
    assert torch.all(amax == 448)
    back = fp8_bench.dequantise(codes, descale)
    # e4m3 keeps 3 mantissa bits: relative rounding error at most 2^-4 for normal values.
    rel = ((back - x).norm() / x.norm()).item()
    assert 0 < rel < 0.05


def test_rows_flag():
    assert fp8_bench.parse_rows("64,8192,0;128,1024,1") == [(64, 8192, False), (128, 1024, True)]


def test_table_gives_ratios_and_dashes_for_missing_methods():
    recs = [dict(method="flashattn-fp8", head_dim=128, seqlen=8192, causal=False, fwd_tflops=900.0,
                 rel_err_vs_bf16_on_dequantised=0.02),
            dict(method="flashattn-bf16", head_dim=128, seqlen=8192, causal=False, fwd_tflops=600.0),
            dict(method="sdpa-cudnn", head_dim=128, seqlen=8192, causal=False, error="RuntimeError: no")]
    t = fp8_bench.table(recs).splitlines()
    assert t[2] == "| 128 | 8192 | no | 900 | 600 | - | 1.50 | - | 0.0200 |"


def test_unknown_method_is_an_error():
    with pytest.raises(SystemExit):
        fp8_bench.main(["out.json", "--methods", "flashattn-fp8,fa3"])
