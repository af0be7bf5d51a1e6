"""Plots and a summary table from one benchmarks/decode_bench.py output.

  python benchmarks/decode_plot.py DIR [--out OUTDIR]

Reads DIR/decode.json and writes, to OUTDIR (default DIR):

- decode.png: one panel per heads configuration (q/kv 32/8, 64/8); x the
  cache length (log2 axis), y the K + V bandwidth as a fraction of the copy
  bandwidth measured in the same process (the records' `of_copy`; above 1
  is possible, the copy figure counting read + write traffic), contiguous
  caches; one line per (method, batch): flashattn solid, sdpa-cudnn dashed,
  sdpa-flash dotted, one colour per batch; and FlashInfer with tensor
  cores on pages of 64 (dash-dot) when the run has it (FlashInfer has no
  contiguous-cache path of its own: a cache as one page a sequence is not
  what it is built for).
- decode-paged.png: the same axes, flashattn only: contiguous solid, paged
  16 dashed, paged 64 dotted, and flash-attn's (b, L, heads_k, d) cache
  (layout contiguous-nhd) dash-dotted where the run has it.
- decode-summary.md: one row per point (heads, batch, cache): of-copy of
  flashattn (contiguous), cuDNN and FA2; cuDNN's time / ours (> 1: ours
  faster); contiguous time / paged time for pages of 16 and 64 (< 1: paged
  slower); and, when any FlashInfer record has a time, FlashInfer's time
  / ours on pages of 16 and 64, FlashInfer taken as the faster of its two
  decode kernels (CUDA cores, `flashinfer`; tensor cores,
  `flashinfer-tc`) at each point.

A record whose `ms` is null (a backend that did not apply or is missing)
is left out of the plots and shown as n/a in the table.
"""
import argparse
import json
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

STYLES = {"flashattn": "-", "sdpa-cudnn": "--", "sdpa-flash": ":"}
LABELS = {"flashattn": "flashattn", "sdpa-cudnn": "SDPA cuDNN", "sdpa-flash": "SDPA FA2"}
PAGED = {"contiguous": "-", "paged16": "--", "paged64": ":"}


def index(records):
    """(heads_q, heads_k, batch, cache, layout, method) -> record with a time."""
    return {(r["heads_q"], r["heads_k"], r["batch"], r["cache"], r["layout"], r["method"]): r
            for r in records if r.get("ms") is not None}


def kib(n):
    return f"{n // 1024}K"


def panels(data, by, lines, title, path):
    """One panel per heads configuration; lines = [(method, layout, line style, label)]."""
    recs = data["records"]
    heads = sorted({(r["heads_q"], r["heads_k"]) for r in recs})
    batches = sorted({r["batch"] for r in recs})
    caches = sorted({r["cache"] for r in recs})
    colour = {b: f"C{i}" for i, b in enumerate(batches)}
    fig, axes = plt.subplots(1, len(heads), figsize=(6.5 * len(heads), 4.8), sharey=True, squeeze=False)
    for ax, (hq, hk) in zip(axes[0], heads):
        for method, layout, ls, _ in lines:
            for b in batches:
                pts = [(L, by[(hq, hk, b, L, layout, method)]["of_copy"]) for L in caches
                       if (hq, hk, b, L, layout, method) in by]
                if pts:
                    ax.plot(*zip(*pts), ls, color=colour[b], marker="o", ms=3)
        ax.axhline(1.0, color="grey", lw=0.8)
        ax.set_xscale("log", base=2)
        ticks = [1 << i for i in range(caches[0].bit_length() - 1, caches[-1].bit_length())]
        ax.set_xticks(ticks, [kib(L) for L in ticks])
        ax.minorticks_off()
        ax.set_xlabel("cache length (keys)")
        ax.set_title(f"heads q/kv {hq}/{hk}")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("K + V bytes / time, fraction of copy bandwidth")
    handles = [Line2D([], [], color="k", ls=ls, label=label) for _, _, ls, label in lines]
    handles += [Line2D([], [], color=colour[b], marker="o", ms=3, label=f"batch {b}") for b in batches]
    axes[0][-1].legend(handles=handles, fontsize=8, loc="lower right")
    m = data["meta"]
    fig.suptitle(f"{title}: bf16, head_dim 128; {m['gpu']}, copy {m['copy_gbs']:.0f} GB/s, commit {m['commit']}",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def summary(data, by):
    recs = data["records"]
    m = data["meta"]
    points = sorted({(r["heads_q"], r["heads_k"], r["batch"], r["cache"]) for r in recs})
    flashinfer = any(k[5].startswith("flashinfer") for k in by)

    def ms(p, layout, method):
        if method == "flashinfer":  # the faster of its two kernels
            t = [by[p + (layout, m)]["ms"] for m in ("flashinfer", "flashinfer-tc") if p + (layout, m) in by]
            return min(t) if t else None
        r = by.get(p + (layout, method))
        return r["ms"] if r else None

    def of_copy(p, method):
        r = by.get(p + ("contiguous", method))
        return f"{r['of_copy']:.2f}" if r else "n/a"

    def ratio(num, den):
        return f"{num / den:.2f}" if num is not None and den is not None else "n/a"

    head = ["heads q/kv", "batch", "cache", "flashattn of copy", "cuDNN of copy", "FA2 of copy",
            "cuDNN time / ours", "contiguous / paged16", "contiguous / paged64"]
    if flashinfer:
        head += ["FlashInfer / ours, page 16", "FlashInfer / ours, page 64"]
    lines = ["# Decode summary, bf16, head_dim 128", "",
             f"{m['gpu']}; copy bandwidth {m['copy_gbs']:.0f} GB/s (read + write); commit {m['commit']}; "
             f"{m['date']}. Of copy: K + V bytes / time over the copy bandwidth. Ratios of times: "
             "cuDNN time / ours > 1 means ours is faster; contiguous / paged < 1 means the paged cache is "
             "slower.", "",
             "| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for p in points:
        ours = ms(p, "contiguous", "flashattn")
        row = [f"{p[0]}/{p[1]}", str(p[2]), kib(p[3]), of_copy(p, "flashattn"), of_copy(p, "sdpa-cudnn"),
               of_copy(p, "sdpa-flash"), ratio(ms(p, "contiguous", "sdpa-cudnn"), ours),
               ratio(ours, ms(p, "paged16", "flashattn")), ratio(ours, ms(p, "paged64", "flashattn"))]
        if flashinfer:
            row += [ratio(ms(p, lay, "flashinfer"), ms(p, lay, "flashattn")) for lay in ("paged16", "paged64")]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dir", help="folder holding decode.json")
    ap.add_argument("--out", help="folder for the plots and the summary (default: DIR)")
    args = ap.parse_args(argv)
    out = args.out or args.dir
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(args.dir, "decode.json")) as f:
        data = json.load(f)
    by = index(data["records"])
    lines = [(mt, "contiguous", ls, LABELS[mt]) for mt, ls in STYLES.items()]
    if any(k[4] == "paged64" and k[5] == "flashinfer-tc" for k in by):
        lines.append(("flashinfer-tc", "paged64", "-.", "FlashInfer (tensor cores), paged 64"))
    panels(data, by, lines,
           "Decode, contiguous cache", os.path.join(out, "decode.png"))
    paged_lines = [("flashattn", lay, ls, f"flashattn {lay}") for lay, ls in PAGED.items()]
    if any(k[4] == "contiguous-nhd" for k in by):  # flash-attn's (b, L, heads_k, d) cache, strided as a page
        paged_lines.insert(1, ("flashattn", "contiguous-nhd", "-.", "flashattn contiguous (b, L, hk, d)"))
    panels(data, by, paged_lines,
           "flashattn decode, contiguous against paged", os.path.join(out, "decode-paged.png"))
    with open(os.path.join(out, "decode-summary.md"), "w") as f:
        f.write(summary(data, by))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
