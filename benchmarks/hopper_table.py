"""Issue 4's table from one scripts/bench-hopper output folder.

  python benchmarks/hopper_table.py OUTDIR [> OUTDIR/table.md]

Reads OUTDIR/ours-<kernels>-d<d>[-causal].json (tools/flashattn-bench) and
OUTDIR/peers.json (benchmarks/attention_bench.py, PyTorch's cuDNN and
FlashAttention-2 SDPA backends), all measured in the same call, and prints
the markdown table of issue 4's rows: TFLOPS forward / backward of each, and
the Hopper path's ratio to cuDNN against the bars (forward >= 0.9x,
backward >= 0.85x). (Folders from before the d 256 sm90 backward have
ours-auto-d256.json instead of ours-sm90-d256.json: the automatic choice,
sm90 forward + sm80 backward, is read there and marked.)
"""
import json
import os
import sys

ROWS = [(64, False, 8192), (128, False, 8192), (128, True, 8192), (256, False, 8192), (128, False, 1024)]
FWD_BAR, BWD_BAR = 0.9, 0.85


def ours(folder, kind, d, causal, seqlen):
    path = os.path.join(folder, f"ours-{kind}-d{d}{'-causal' if causal else ''}.json")
    if not os.path.exists(path):
        return None
    for r in json.load(open(path))["results"]:
        if r["seqlen"] == seqlen and r["status"] == "ok":
            return r["fwd_gflops"] / 1e3, r["bwd_gflops"] / 1e3
    return None


def peer(rows, method, d, causal, seqlen):
    for r in rows:
        if (r["method"], r["head_dim"], r["causal"], r["seqlen"]) == (method, d, causal, seqlen) and r["status"] == "ok":
            return r["fwd_tflops"], r["bwd_tflops"]
    return None


def main(argv):
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    folder = argv[0]
    peers = json.load(open(os.path.join(folder, "peers.json")))["results"]
    fmt = lambda p: f"{p[0]:.0f} / {p[1]:.0f}" if p else "-"  # noqa: E731
    lines = ["| head_dim, mask, seqlen | flashattn sm90 fwd / bwd | flashattn sm80 fwd / bwd | cuDNN fwd / bwd "
             "| FA2 fwd / bwd | sm90 / cuDNN fwd | bwd |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for d, causal, s in ROWS:
        fast = ours(folder, "sm90", d, causal, s)
        auto = not fast and d == 256
        if auto:
            fast = ours(folder, "auto", d, causal, s)
        cudnn = peer(peers, "sdpa-cudnn", d, causal, s)
        ratio = ["-", "-"]
        if fast and cudnn:
            for i, bar in enumerate((FWD_BAR, BWD_BAR)):
                x = fast[i] / cudnn[i]
                ratio[i] = f"{x:.2f}x {'(bar met)' if x >= bar else '(bar missed)'}"
        label = f"{d}, {'causal' if causal else 'non-causal'}, {s}"
        first = fmt(fast) + (" (auto: sm80 bwd)" if auto and fast else "")
        lines.append(f"| {label} | {first} | {fmt(ours(folder, 'sm80', d, causal, s))} | {fmt(cudnn)} | "
                     f"{fmt(peer(peers, 'sdpa-flash', d, causal, s))} | {ratio[0]} | {ratio[1]} |")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
