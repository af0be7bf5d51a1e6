"""The FP8 (e4m3) forward against the bf16 forwards, on one GPU, in one
process, through one timing function:

  flashattn-fp8   flash_attn_func on e4m3 q, k, v with per-(batch, KV head)
                  descales (bf16 out; the V^T copy it makes is inside the
                  timed call)
  flashattn-bf16  flash_attn_func on bf16 q, k, v (the Hopper kernels)
  sdpa-cudnn      PyTorch SDPA's cuDNN backend on bf16 (b, h, s, d) views

Rows: head_dim 64, 128, 256, causal and not, 16K tokens a batch (batch =
16384 / seqlen), heads = 2048 / head_dim, seqlen 8192 (and 1024 for d 128).
Forward only (FP8 is an inference forward), under torch.no_grad(): median
of --repeats CUDA-event timings after warm-up (timing.time_call),
each call queued behind a --queue-ahead-ms GPU busy-wait as in
attention_bench.py (the events time the GPU's work, not the enqueue),
TFLOPS by the standard formula 4 b h s^2 d (half with causal). Each row
also reports the FP8 output's error against the bf16 forward on the
dequantised inputs (norm-wise relative), a check that the timed kernel
computes attention.

  python benchmarks/fp8_bench.py OUT.json [--rows "d,seqlen,causal;..."] [--repeats N]

Writes OUT.json (environment, rows) and prints a markdown table.
"""
import argparse
import json
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import attention_bench as ab  # noqa: E402
import timing  # noqa: E402

ROWS = [(64, 8192, False), (128, 8192, False), (256, 8192, False), (64, 8192, True), (128, 8192, True),
        (256, 8192, True), (128, 1024, False)]
TOKENS = 16384
METHODS = ["flashattn-fp8", "flashattn-bf16", "sdpa-cudnn"]


def parse_rows(s):
    rows = []
    for part in s.split(";"):
        if part.strip():
            d, n, c = part.split(",")
            rows.append((int(d), int(n), c.strip() in ("1", "true", "True")))
    return rows


def quantise(x, heads_k):
    """x (b, s, h, d) float -> e4m3 codes and descales (b, heads_k) with
    amax / 448 per (batch, KV head), as a user of the FP8 API would."""
    b, s, h, d = x.shape
    g = h // heads_k
    amax = x.abs().reshape(b, s, heads_k, g, d).amax(dim=(1, 3, 4)).clamp_min(1e-12)
    descale = (amax / 448.0).float()
    codes = (x / descale.repeat_interleave(g, dim=1)[:, None, :, None]).to(torch.float8_e4m3fn)
    return codes, descale


def dequantise(codes, descale):
    g = codes.shape[2] // descale.shape[1]
    return codes.float() * descale.repeat_interleave(g, dim=1)[:, None, :, None]


def run_row(d, seqlen, causal, args):
    import flashattn
    batch, heads = max(1, TOKENS // seqlen), 2048 // d
    gen = torch.Generator(device="cuda").manual_seed(d * 1000 + seqlen + causal)
    shape = (batch, seqlen, heads, d)
    x = [torch.randn(shape, device="cuda", generator=gen) for _ in range(3)]
    (q8, qs), (k8, ks), (v8, vs) = (quantise(t, heads) for t in x)
    qb, kb, vb = (dequantise(c, s).to(torch.bfloat16) for c, s in ((q8, qs), (k8, ks), (v8, vs)))
    flops = 4 * batch * heads * seqlen * seqlen * d / (2 if causal else 1)
    fns = {
        "flashattn-fp8": lambda: flashattn.flash_attn_func(q8, k8, v8, causal=causal, q_descale=qs, k_descale=ks,
                                                           v_descale=vs),
        "flashattn-bf16": lambda: flashattn.flash_attn_func(qb, kb, vb, causal=causal),
        "sdpa-cudnn": None,
    }
    from torch.nn.attention import SDPBackend, sdpa_kernel
    qt, kt, vt = (t.transpose(1, 2) for t in (qb, kb, vb))

    def cudnn():
        with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
            return F.scaled_dot_product_attention(qt, kt, vt, is_causal=causal)
    fns["sdpa-cudnn"] = cudnn
    records = []
    with torch.no_grad():
        out8 = fns["flashattn-fp8"]().float()
        ref = fns["flashattn-bf16"]().float()
        err = ((out8 - ref).norm() / ref.norm()).item()
        for m in args.methods:
            rec = dict(method=m, head_dim=d, seqlen=seqlen, causal=causal, batch=batch, heads=heads,
                       dtype="e4m3" if m.endswith("fp8") else "bfloat16")
            try:
                t, n, short = timing.time_call(fns[m], torch.device("cuda"), args.warmup, args.repeats,
                                               queue_ahead_ms=args.queue_ahead_ms)
                rec.update(fwd_ms=t * 1e3, fwd_tflops=flops / t / 1e12, samples=n, queue_ahead_ms=args.queue_ahead_ms,
                           queue_ahead_short=short)
            except Exception as e:  # a peer that cannot run this row says why; ours must run
                if m.startswith("flashattn"):
                    raise
                rec.update(error=f"{type(e).__name__}: {e}")
            if m == "flashattn-fp8":
                rec["rel_err_vs_bf16_on_dequantised"] = err
            records.append(rec)
    return records


def table(records):
    by = {}
    for r in records:
        by.setdefault((r["head_dim"], r["seqlen"], r["causal"]), {})[r["method"]] = r
    lines = ["| d | seqlen | causal | fp8 TFLOPS | bf16 TFLOPS | cuDNN bf16 TFLOPS | fp8 / bf16 | fp8 / cuDNN | fp8 rel. err |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for (d, n, c), row in by.items():
        def tf(m):
            return row.get(m, {}).get("fwd_tflops")
        f8, bf, cu = tf("flashattn-fp8"), tf("flashattn-bf16"), tf("sdpa-cudnn")
        fmt = lambda v: f"{v:.0f}" if v else "-"  # noqa: E731
        ratio = lambda a, b: f"{a / b:.2f}" if a and b else "-"  # noqa: E731
        err = row.get("flashattn-fp8", {}).get("rel_err_vs_bf16_on_dequantised")
        err_s = f"{err:.4f}" if err is not None else "-"
        lines.append(f"| {d} | {n} | {'yes' if c else 'no'} | {fmt(f8)} | {fmt(bf)} | {fmt(cu)} | {ratio(f8, bf)} | "
                     f"{ratio(f8, cu)} | {err_s} |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    ap.add_argument("--rows", type=parse_rows, default=ROWS)
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--queue-ahead-ms", type=float, default=5.0,
                    help="GPU busy-wait queued before each timed call (0: none)")
    args = ap.parse_args(argv)
    args.methods = [m for m in args.methods.split(",") if m]
    unknown = [m for m in args.methods if m not in METHODS]
    if unknown:
        ap.error(f"--methods: expected a subset of {','.join(METHODS)}, got {','.join(unknown)}")
    if not torch.cuda.is_available():
        sys.exit("fp8_bench: needs a CUDA GPU")
    env = ab.environment(torch.device("cuda"))
    records = []
    for d, n, c in args.rows:
        records += run_row(d, n, c, args)
        print(json.dumps(records[-len(args.methods)]), flush=True)
    with open(args.out, "w") as f:
        json.dump(dict(environment=env, rows=records), f, indent=1)
    print(table(records))


if __name__ == "__main__":
    main()
