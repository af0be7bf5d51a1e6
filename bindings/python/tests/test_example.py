"""The examples: examples/tiny_gpt.py (the README's; a model whose attention
is swapped for flashattn trains like the same model with torch's SDPA) and
examples/greedy_decode.py (greedy decoding through flash_attn_with_kvcache
gives the tokens of recomputing every sequence without a cache)."""
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples"))

import flashattn  # noqa: E402
import greedy_decode  # noqa: E402
import tiny_gpt  # noqa: E402


def test_tiny_gpt_trains_like_sdpa():
    ours, theirs = tiny_gpt.main(["--steps", "8"])
    assert ours[-1] < ours[0] - 0.5  # it learns the +1 stream
    for a, b in zip(ours, theirs):
        assert abs(a - b) <= 1e-3 * max(1.0, abs(b))


# float32 only: in 16-bit types a near tie of two logits may legitimately
# decode differently on the two paths (the example's docstring).
@pytest.mark.parametrize("args", [
    ["--cache", "paged"],
    ["--cache", "contiguous", "--rotary"],
    ["--cache", "paged", "--rotary", "--num-splits", "3", "--reference", "flashattn"],
], ids=["paged", "contiguous-rotary", "paged-rotary-splits"])
def test_greedy_decode_matches_recompute(args):
    result = greedy_decode.main(args + ["--new-tokens", "20"])
    assert result["match"] and result["same_tokens"]
    assert result["cache"].shape == (3, 20)
    assert result["max_logit_diff"] < 1e-4


def test_greedy_decode_notices_a_stale_length(monkeypatch, capsys):
    # A decoder that passes each sequence's length minus one overwrites its
    # newest cache entry at every step; the comparison must fail on it.
    real = flashattn.flash_attn_with_kvcache

    def stale(*args, cache_seqlens, **kwargs):
        return real(*args, cache_seqlens=(cache_seqlens - 1).clamp(min=0), **kwargs)

    monkeypatch.setattr(flashattn, "flash_attn_with_kvcache", stale)
    result = greedy_decode.main(["--new-tokens", "20"])
    assert not result["match"] and result["max_logit_diff"] > result["tolerance"]
    assert "logits differ beyond rounding" in capsys.readouterr().out
