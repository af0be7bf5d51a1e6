"""Where a block-sparse call's fixed cost goes (a diagnosis, not a table).

  PYTHONPATH=build-bench/pkg python benchmarks/sparse_profile.py OUT.json

bf16, batch 1, heads = 2048 / head_dim, blocks of 128 x 128, random block
masks (attention_bench.block_pattern) at several densities and dense
flash_attn_func: forward + backward time (torch.autograd.grad, CUDA events
behind a busy-wait, median), and from torch.profiler the GPU time of each
kernel of those calls. A line through the densities' times gives the fixed
part (time at density 0); the per-kernel times say which kernel holds it.
Times in microseconds.
"""
import json
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch  # noqa: E402

import flashattn  # noqa: E402
from attention_bench import block_pattern  # noqa: E402
from decode_bench import time_calls  # noqa: E402
from timing import kernel_times  # noqa: E402

SHAPES = [(64, 16384), (128, 16384)]
DENSITIES = [1 / 2, 1 / 4, 1 / 8, 1 / 16]
BLOCK = 128


def lists(n, density, seed):
    keep = block_pattern("random", n, density, False, seed)

    def compress(states):
        count = states.sum(1).to(torch.int32)
        index = torch.sort((~states).to(torch.int8), dim=1, stable=True).indices.to(torch.int32)
        return count[None, None].cuda(), index[None, None].contiguous().cuda()
    none = torch.zeros_like(keep)
    return (*compress(none), *compress(keep)), float(keep.float().mean())


def main():
    out = sys.argv[1]
    recs = []
    for d, s in SHAPES:
        h = 2048 // d
        q, k, v = (torch.randn(1, s, h, d, dtype=torch.bfloat16, device="cuda", requires_grad=True) for _ in range(3))
        do = torch.randn(1, s, h, d, dtype=torch.bfloat16, device="cuda")
        n = -(-s // BLOCK)
        cases = [("dense", 1.0, lambda q, k, v: flashattn.flash_attn_func(q, k, v))]
        for dens in DENSITIES:
            (pc, pi, fc, fi), kept = lists(n, dens, 1234 + s)
            cases.append(("sparse", kept, lambda q, k, v, a=(pc, pi, fc, fi): flashattn.flash_attn_block_sparse_func(
                q, k, v, *a, block_size=BLOCK)))
        for name, kept, f in cases:
            def fwd(f=f):
                return f(q, k, v)

            def fwdbwd(f=f):
                o = f(q, k, v)
                return torch.autograd.grad(o, (q, k, v), do)
            rec = dict(head_dim=d, seqlen=s, heads=h, kind=name, kept=kept,
                       fwd_us=time_calls(fwd) * 1e3, fwdbwd_us=time_calls(fwdbwd) * 1e3,
                       kernels=kernel_times(fwdbwd, calls=5, warmup=2)[0])
            recs.append(rec)
            print(json.dumps(rec), flush=True)
            with open(out, "w") as fh:
                json.dump(dict(gpu=torch.cuda.get_device_name(), records=recs), fh, indent=1)
    # The fixed part: least squares of time against the kept share, sparse rows.
    for d, s in SHAPES:
        pts = [(r["kept"], r["fwdbwd_us"], r["fwd_us"]) for r in recs
               if r["head_dim"] == d and r["seqlen"] == s and r["kind"] == "sparse"]
        for col, label in ((1, "fwd+bwd"), (2, "fwd")):
            xs, ys = [p[0] for p in pts], [p[col] for p in pts]
            mx, my = statistics.mean(xs), statistics.mean(ys)
            b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
            print(f"d {d} {s}: {label} fixed {my - b * mx:.0f} us, per unit share {b:.0f} us")


if __name__ == "__main__":
    main()
