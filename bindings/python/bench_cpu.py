"""CPU speed of flashattn vs torch's scaled_dot_product_attention, measured
side by side in one process (same threads, same inputs).

  python bindings/python/bench_cpu.py [--out bench_cpu.json] [--seqlens 1024 4096]
        [--dtypes float32 bfloat16] [--repeats 3] [--causal]

Writes one JSON record per (dtype, seqlen, pass) with the median seconds of
each implementation and the ratio torch / flashattn (> 1: flashattn faster).
Shapes: batch 1, 8 heads, head_dim 64 (flash-attn layout (b, s, h, d); torch
gets the (b, h, s, d) transposed views, as a model using it would).
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import time

# Use the installed package, not the source folder beside this script
# (which has no operator library).
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(os.path.abspath(__file__))]

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import flashattn  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "benchmarks"))
import timing  # noqa: E402


def median_seconds(fn, repeats):
    # One warm-up call at least (first-touch page faults, the thread pool's
    # start), then the median of `repeats`: benchmarks/timing.py's path.
    return timing.time_call(fn, torch.device("cpu"), warmup=1, repeats=repeats).seconds


def bench_case(dtype, seqlen, causal, repeats, batch=1, heads=8, head_dim=64):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(batch, seqlen, heads, head_dim, generator=g).to(dtype).requires_grad_() for _ in range(3))
    dout = torch.randn(batch, seqlen, heads, head_dim, generator=g).to(dtype)

    def fa_fwd():
        with torch.no_grad():
            flashattn.flash_attn_func(q, k, v, causal=causal)

    def fa_fwd_bwd():
        out = flashattn.flash_attn_func(q, k, v, causal=causal)
        torch.autograd.grad(out, (q, k, v), dout)

    def sdpa(qq, kk, vv):
        return F.scaled_dot_product_attention(qq.transpose(1, 2), kk.transpose(1, 2), vv.transpose(1, 2),
                                              is_causal=causal).transpose(1, 2)

    def torch_fwd():
        with torch.no_grad():
            sdpa(q, k, v)

    def torch_fwd_bwd():
        out = sdpa(q, k, v)
        torch.autograd.grad(out, (q, k, v), dout)

    records = []
    for name, fa, ref in (("forward", fa_fwd, torch_fwd), ("forward+backward", fa_fwd_bwd, torch_fwd_bwd)):
        t_fa = median_seconds(fa, repeats)
        t_torch = median_seconds(ref, repeats)
        records.append(dict(dtype=str(dtype).replace("torch.", ""), seqlen=seqlen, batch=batch, heads=heads,
                            head_dim=head_dim, causal=causal, pass_=name, flashattn_s=t_fa, torch_sdpa_s=t_torch,
                            speedup_vs_torch=t_torch / t_fa))
        print(f"{records[-1]['dtype']:>8} s={seqlen:<5} causal={int(causal)} {name:<17} "
              f"flashattn {t_fa * 1e3:9.1f} ms   torch {t_torch * 1e3:9.1f} ms   torch/flashattn {t_torch / t_fa:5.2f}",
              flush=True)
    return records


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="bench_cpu.json")
    ap.add_argument("--seqlens", type=int, nargs="+", default=[1024, 4096])
    ap.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--causal", action="store_true")
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: leave torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                check=False).stdout.strip()
    except OSError:
        commit = ""
    # Which CPU kernels bf16 could use: the AMX tile path needs amx_bf16 (and
    # Linux's permission, which the library requests and reports on stderr
    # when refused); FLASHATTN_CPU_ISA caps the choice.
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        flags = []
    records = []
    for dtype in args.dtypes:
        for s in args.seqlens:
            records += bench_case(getattr(torch, dtype), s, args.causal, args.repeats)
    result = dict(
        when=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), commit=commit, torch=torch.__version__,
        flashattn=flashattn.__version__, threads=torch.get_num_threads(), machine=platform.processor() or
        platform.machine(), cpu_amx_bf16="amx_bf16" in flags, cpu_avx512_bf16="avx512_bf16" in flags,
        flashattn_cpu_isa_cap=os.environ.get("FLASHATTN_CPU_ISA"), results=[{("pass" if k == "pass_" else k): v for k, v in r.items()} for r in records])
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
