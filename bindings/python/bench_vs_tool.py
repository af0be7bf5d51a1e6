"""End-to-end times of the PyTorch operator against the C++ tool's, same shapes.

  python bindings/python/bench_vs_tool.py --tool build/tools/flashattn-bench --device cuda

The binding's end-to-end numbers should match the C++ tool's within
noise. For each shape (batch, seqlen, heads, head_dim, causal) this
runs tools/flashattn-bench (flash only) and then times, in this process,
flashattn.flash_attn_func forward under no_grad and the backward of a
training-style call, each the median of --repeats after a warm-up (CUDA
events on a GPU, perf_counter on the CPU), the same statistics as the tool.
On a GPU both sides time GPU work only: the tool queues each timed call
behind a 1 ms host function on its stream, and this script behind a 2 ms
busy-wait (benchmarks/timing.py, every harness's timing path), so
that neither interval holds the host's launch of the call (the operator's host overhead
is bench_overhead.py's measurement).
Prints one JSON object: both sides' milliseconds and python / tool ratios.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(os.path.abspath(__file__))]

import torch  # noqa: E402

import flashattn  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "benchmarks"))
import timing  # noqa: E402

DEFAULT_SHAPES = {"cuda": "1,8192,16,128,0;1,8192,16,128,1;16,1024,16,128,0;2,8192,32,64,0",
                  "cpu": "1,512,4,64,0;1,512,4,64,1"}


def parse_shapes(text):
    shapes = []
    for item in text.split(";"):
        f = [int(x) for x in item.split(",")]
        if len(f) not in (4, 5) or min(f[:4]) < 1:
            raise argparse.ArgumentTypeError(f"--shapes: expected b,s,h,d[,causal] items, got {item!r}")
        shapes.append((f[0], f[1], f[2], f[3], bool(f[4]) if len(f) == 5 else False))
    return shapes


def median_ms(fn, device, warmup, repeats):
    return timing.time_call(fn, torch.device(device), warmup, repeats).seconds * 1e3


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tool", required=True, help="path of the flashattn-bench executable")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--dtype", default=None, help="f32 / f16 / bf16 (default f32 on cpu, bf16 on cuda)")
    ap.add_argument("--shapes", type=parse_shapes, help="b,s,h,d[,causal];... (default depends on --device)")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    args = ap.parse_args(argv)
    dtype = args.dtype or ("f32" if args.device == "cpu" else "bf16")
    torch_dtype = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}[dtype]
    shapes = args.shapes or parse_shapes(DEFAULT_SHAPES[args.device])
    rows = []
    for b, s, h, d, causal in shapes:
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "tool.json")
            cmd = [args.tool, "--device", args.device, "--dtype", dtype, "--methods", "flash", "--seqlens", str(s),
                   "--batch", str(b), "--heads", str(h), "--head-dim", str(d), "--repeats", str(args.repeats),
                   "--json", path] + (["--causal"] if causal else [])
            if args.device == "cpu":
                cmd += ["--threads", str(torch.get_num_threads())]
            subprocess.run(cmd, check=True, capture_output=True, text=True)
            with open(path) as f:
                tool = json.load(f)["results"][0]
        q, k, v, dout = (torch.randn(b, s, h, d, device=args.device, dtype=torch_dtype) for _ in range(4))
        with torch.no_grad():
            fwd = median_ms(lambda: flashattn.flash_attn_func(q, k, v, causal=causal), args.device, args.warmup,
                            args.repeats)
        qg, kg, vg = (t.clone().requires_grad_(True) for t in (q, k, v))
        outs = []

        def backward():
            outs.pop().backward(dout)

        def timed_backward():
            # Fresh .grad each time (as optimizer.zero_grad(set_to_none=True)
            # leaves them), so that the timing holds no gradient accumulation
            # kernels, which the tool does not run either.
            qg.grad = kg.grad = vg.grad = None
            outs.append(flashattn.flash_attn_func(qg, kg, vg, causal=causal))
            return median_ms(backward, args.device, 0, 1)  # synchronises, then holds the GPU
        for _ in range(args.warmup):
            timed_backward()
        bwd = statistics.median(timed_backward() for _ in range(args.repeats))
        rows.append(dict(batch=b, seqlen=s, heads=h, head_dim=d, causal=causal, tool_fwd_ms=tool["fwd_ms"],
                         tool_bwd_ms=tool["bwd_ms"], python_fwd_ms=fwd, python_bwd_ms=bwd,
                         fwd_ratio=fwd / tool["fwd_ms"], bwd_ratio=bwd / tool["bwd_ms"]))
    out = dict(device=args.device, dtype=dtype, repeats=args.repeats, torch=torch.__version__,
               gpu=torch.cuda.get_device_name() if args.device == "cuda" else None, results=rows)
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
