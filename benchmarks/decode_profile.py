"""Where a decode call's time goes, for the KV-cache kernels (not a
benchmark table: a diagnosis to run before changing the launch sequence).

  PYTHONPATH=build-bench/pkg python benchmarks/decode_profile.py OUT.json [--no-sweep]

(--no-sweep: the heuristic's split count only, for a quick A/B of two
builds.)

At a few decode points (bf16, d 128, heads 32/8): flashattn's time with
every split count (num_splits) and the heuristic's (0), without the
append (k=None, the cache already holding L keys), cuDNN's time through
SDPA, and, from torch.profiler, the GPU time of each kernel of 10 calls (launches a call, median time) of
flashattn and of cuDNN with the span of those 10 calls on the GPU (the
difference between the span and the kernels is launch gaps). Times in
microseconds, through decode_bench.time_calls.
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch  # noqa: E402

import flashattn  # noqa: E402
from decode_bench import time_calls, sdpa_fn  # noqa: E402
from timing import kernel_times  # noqa: E402

D = 128
DTYPE = torch.bfloat16
POINTS = [(32, 8, 1, 8192), (32, 8, 1, 131072), (32, 8, 8, 8192), (32, 8, 64, 1024), (32, 8, 8, 32768), (32, 8, 64, 8192)]
SPLITS = [0, 1, 2, 4, 8, 16, 32, 33, 48, 64, 66, 96, 128]


def point(hq, hk, b, L, sweep=True):
    q = torch.randn(b, 1, hq, D, dtype=DTYPE, device="cuda")
    k_new = torch.randn(b, 1, hk, D, dtype=DTYPE, device="cuda")
    v_new = torch.randn_like(k_new)
    k_store = torch.empty(b, hk, L, D, dtype=DTYPE, device="cuda").normal_()
    v_store = torch.empty_like(k_store).normal_()
    k_cache, v_cache = k_store.transpose(1, 2), v_store.transpose(1, 2)
    before = torch.full((b,), L - 1, dtype=torch.int32, device="cuda")  # the append makes L
    full = torch.full((b,), L, dtype=torch.int32, device="cuda")

    def ours(splits):
        return lambda: flashattn.flash_attn_with_kvcache(q, k_cache, v_cache, k_new, v_new, cache_seqlens=before,
                                                         causal=True, num_splits=splits)

    res = {}
    for splits in SPLITS if sweep else [0]:
        if splits and splits * 256 > 2 * L:
            continue
        res[f"splits{splits}_us"] = time_calls(ours(splits), iters=30) * 1e3
    res["no_append_us"] = time_calls(lambda: flashattn.flash_attn_with_kvcache(
        q, k_cache, v_cache, cache_seqlens=full, causal=True), iters=30) * 1e3
    cudnn = sdpa_fn("sdpa-cudnn", q.transpose(1, 2), k_store, v_store)
    res["cudnn_us"] = time_calls(cudnn, iters=30) * 1e3
    for name, fn in (("flashattn", ours(0)), ("cudnn", cudnn)):
        res[f"kernels_{name}"], res[f"span10_{name}_us"] = kernel_times(fn, calls=10, name_chars=60)
    return res


def main():
    out = {"gpu": torch.cuda.get_device_name(), "points": {}}
    for hq, hk, b, L in POINTS:
        key = f"{hq}/{hk} batch {b} cache {L}"
        out["points"][key] = point(hq, hk, b, L, sweep="--no-sweep" not in sys.argv[2:])
        print(key, json.dumps(out["points"][key]), flush=True)
        torch.cuda.empty_cache()
    with open(sys.argv[1], "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
