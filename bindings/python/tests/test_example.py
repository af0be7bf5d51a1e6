"""The README's example (examples/tiny_gpt.py): a model whose attention is
swapped for flashattn trains like the same model with torch's SDPA."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples"))

import tiny_gpt  # noqa: E402


def test_tiny_gpt_trains_like_sdpa():
    ours, theirs = tiny_gpt.main(["--steps", "8"])
    assert ours[-1] < ours[0] - 0.5  # it learns the +1 stream
    for a, b in zip(ours, theirs):
        assert abs(a - b) <= 1e-3 * max(1.0, abs(b))
