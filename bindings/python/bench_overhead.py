"""Per-call overhead of the PyTorch operator over the raw C++ call.

  python bindings/python/bench_overhead.py --tool build/tools/flashattn-overhead [--device cuda]

Both sides run the same loop: N back-to-back forward calls on a tiny
problem (batch 1, one head, a few rows, so the kernel is short and the
host's per-call cost limits the loop), synchronised once at the end, after
a warm-up. The C++ side is tools/flashattn-overhead (flashattn::forward
with a caller-provided workspace); this script times
flashattn.flash_attn_func and torch.ops.flashattn.fwd on tensors of the
same shape, with the same thread count on the CPU. Prints one JSON object:
microseconds per call of each and the differences (the target: under
10 us a call on a GPU).
"""
import argparse
import json
import os
import subprocess
import sys
import time

sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(os.path.abspath(__file__))]

import torch  # noqa: E402

import flashattn  # noqa: E402
from flashattn._ops import pack_options  # noqa: E402


def per_call_us(fn, calls, device):
    for _ in range(50):
        fn()
    if device == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(calls):
        fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t) / calls * 1e6


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tool", required=True, help="path of the flashattn-overhead executable")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--dtype", default=None, help="f32 / f16 / bf16 (default f32 on cpu, bf16 on cuda)")
    ap.add_argument("--seqlen", type=int, default=16)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=3, help="each side is measured this many times, best kept")
    ap.add_argument("--profile", help="also write torch.profiler's table of 300 operator calls (host time by "
                    "function, CUDA runtime calls included) to this file")
    args = ap.parse_args(argv)
    dtype = args.dtype or ("f32" if args.device == "cpu" else "bf16")
    torch_dtype = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}[dtype]
    threads = torch.get_num_threads()

    cmd = [args.tool, "--device", args.device, "--dtype", dtype, "--seqlen", str(args.seqlen), "--head-dim",
           str(args.head_dim), "--calls", str(args.calls), "--threads", str(threads)]
    raw = min(json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)["us_per_call"]
              for _ in range(args.repeats))

    q, k, v = (torch.randn(1, args.seqlen, 1, args.head_dim, device=args.device, dtype=torch_dtype) for _ in range(3))
    api = min(per_call_us(lambda: flashattn.flash_attn_func(q, k, v), args.calls, args.device)
              for _ in range(args.repeats))
    # The operator alone (its schema: q, k, v, then the four packed options
    # of flashattn/_ops.py; option_tensors [] here, no tensor options),
    # without the Python wrapper's argument handling.
    op_args = pack_options()
    op = min(per_call_us(lambda: torch.ops.flashattn.fwd(q, k, v, *op_args), args.calls, args.device)
             for _ in range(args.repeats))
    # The same call through the dispatcher's boxed entry, as flash_attn_func
    # makes it for eager calls on plain tensors (flashattn/interface.py): no
    # search of the arguments for __torch_function__, no OpOverload frame.
    # The least a Python call of the operator costs through torch's binding.
    op_boxed = None
    if hasattr(torch._C, "_dispatch_call_boxed"):
        handle = torch._C._dispatch_find_schema_or_throw("flashattn::fwd", "")
        op_boxed = min(per_call_us(lambda: torch._C._dispatch_call_boxed(handle, q, k, v, *op_args), args.calls,
                                   args.device) for _ in range(args.repeats))
    # The same call on inputs that require grad (a training step's forward):
    # the C++ autograd formula's node and saved state on top.
    qg, kg, vg = (t.clone().requires_grad_() for t in (q, k, v))
    op_grad = min(per_call_us(lambda: torch.ops.flashattn.fwd(qg, kg, vg, *op_args), args.calls, args.device)
                  for _ in range(args.repeats))
    # Where the operator's time goes (the first CUDA measurement, 42 us over
    # the raw call, is far above the CPU's 1.5 us; see docs/python.md): the
    # same call below autograd (no Python autograd kernel on the way), and
    # what the operator allocates per call (out, and LSE filled with -inf).
    with torch.no_grad():
        op_no_grad = min(per_call_us(lambda: torch.ops.flashattn.fwd.default(q, k, v, *op_args), args.calls,
                                     args.device) for _ in range(args.repeats))
    lse_shape = (1, 1, args.seqlen)
    allocs = min(per_call_us(lambda: (torch.empty_like(q), torch.full(lse_shape, float("-inf"), device=q.device)),
                             args.calls, args.device) for _ in range(args.repeats))
    out = dict(device=args.device, dtype=dtype, seqlen=args.seqlen, head_dim=args.head_dim, threads=threads,
               calls=args.calls, raw_cpp_us=raw, torch_op_us=op, flash_attn_func_us=api,
               op_overhead_us=op - raw, api_overhead_us=api - raw, op_requires_grad_us=op_grad,
               op_default_no_grad_us=op_no_grad, op_boxed_us=op_boxed,
               op_allocations_us=allocs, torch=torch.__version__,
               gpu=torch.cuda.get_device_name() if args.device == "cuda" else None)
    if args.profile:
        write_profile(args.profile, lambda: torch.ops.flashattn.fwd(q, k, v, *op_args), args.device)
    print(json.dumps(out))
    return out


def write_profile(path, fn, device):
    """Where a call's host time goes, by function (self time), including the
    CUDA runtime calls of the library (torch.profiler sees them through CUPTI)."""
    from torch.profiler import ProfilerActivity, profile
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    for _ in range(50):
        fn()
    with profile(activities=activities) as prof:
        for _ in range(300):
            fn()
        if device == "cuda":
            torch.cuda.synchronize()
    with open(path, "w") as f:
        f.write("300 calls of torch.ops.flashattn.fwd; self times are totals over the 300\n")
        f.write(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=40))


if __name__ == "__main__":
    main()
