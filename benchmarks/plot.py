"""Plots and headline ratios from attention_bench.py JSON files.

  python benchmarks/plot.py paper.json modern.json --out docs/results/suite/<date>-<gpu>-<commit>

For a file of the paper setting: figure3-runtime.png (forward, backward and
forward + backward runtime against sequence length, log-log, one line per
method, out-of-memory marked with an x where the line stops) and
figure3-memory.png (peak extra memory against sequence length). For a file
of the modern setting: NAME-tflops.png (forward and backward TFLOPS against
sequence length, a panel per head_dim and mask). For a file of the sparse
setting: sparse-density.png (forward + backward runtime of block-sparse
flashattn and FlexAttention against density, a line per sequence length,
dense flashattn at density 1) and sparse-ratios.md (sparse time over dense
time against density: proportional would equal the density). For the
other files, NAME-ratios.md:
the headline ratios at each sequence length (flashattn against standard
attention, PyTorch's FlashAttention-2 and cuDNN backends, FlexAttention;
block-sparse flashattn against FlexAttention with the same block mask and
against the fastest approximate method).
"""
import argparse
import json
import os
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

STYLE = {  # method -> (colour, line style); ours solid, peers dashed, approximations dotted
    "flashattn": ("C3", "-"), "flashattn-sparse": ("C1", "-"), "flashattn-standard": ("C7", "-"),
    "pytorch-standard": ("k", "--"), "sdpa-math": ("C5", "--"), "sdpa-flash": ("C0", "--"),
    "sdpa-efficient": ("C8", "--"), "sdpa-cudnn": ("C2", "--"), "flex": ("C4", "--"), "flex-sparse": ("C6", "--"),
    "sdpa-flash-njt": ("C0", "-."), "sdpa-efficient-njt": ("C8", "-."), "sdpa-cudnn-njt": ("C2", "-."),
    "sdpa-math-njt": ("C5", "-."), "flashattn-sm80": ("C1", "-."), "flashattn-sm90": ("C3", "-."),
    "linformer": ("C9", ":"), "performer": ("C5", ":"), "linear": ("C8", ":"), "local": ("C0", ":"),
}
APPROXIMATE = ("linformer", "performer", "linear", "local")


def series(results, key, **match):
    """method -> sorted [(seqlen, value)] of ok records, and method -> the
    first seqlen that ran out of memory."""
    ok, oom = defaultdict(list), {}
    for r in results:
        if any(r.get(k) != v for k, v in match.items()):
            continue
        if r["status"] == "ok" and r.get(key) is not None:
            ok[r["method"]].append((r["seqlen"], r[key]))
        elif r["status"] == "oom":
            oom.setdefault(r["method"], r["seqlen"])
    return {m: sorted(v) for m, v in ok.items()}, oom


def draw(ax, results, key, ylabel, scale=1.0, **match):
    ok, oom = series(results, key, **match)
    for method, pts in ok.items():
        colour, ls = STYLE.get(method, ("grey", "-"))
        xs, ys = [s for s, _ in pts], [v * scale for _, v in pts]
        ax.plot(xs, ys, ls, color=colour, marker="o", ms=3, label=method)
        if method in oom:
            ax.plot([xs[-1]], [ys[-1]], "x", color=colour, ms=9, mew=2)
    for method, s in oom.items():
        if method not in ok:  # out of memory at the shortest length tried
            ax.plot([], [], "x", color=STYLE.get(method, ("grey",))[0], label=f"{method} (OOM from {s})")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("sequence length")
    ax.set_ylabel(ylabel)
    ax.grid(True, which="both", alpha=0.3)


def title_of(env):
    where = env.get("gpu") or env.get("cpu") or "?"
    return f"{where}, torch {env.get('torch')}, commit {str(env.get('commit'))[:10]}, {env.get('date', '')[:10]}"


def paper_figures(data, out):
    res, env = data["results"], data["environment"]
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8), sharey=True)
    for ax, (key, name) in zip(axes, [("fwd_ms", "forward"), ("bwd_ms", "backward"), ("fwd_bwd_ms", "forward + backward")]):
        draw(ax, res, key, "runtime (ms)")
        ax.set_yscale("log")
        ax.set_title(name)
    axes[-1].legend(fontsize=7, loc="upper left")
    fig.suptitle("Attention runtime (x: out of memory beyond this length)\n" + title_of(env), fontsize=9)
    fig.tight_layout()
    paths = [os.path.join(out, "figure3-runtime.png")]
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4.8))
    draw(ax, res, "peak_extra_bytes", "peak extra memory (MiB)", scale=1 / 2**20)
    ax.set_yscale("log")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    else:  # the CPU records no allocator peaks
        ax.text(0.5, 0.5, "no memory measurements in this file", ha="center", transform=ax.transAxes)
    ax.set_title("Forward + backward memory beyond inputs\n" + title_of(env), fontsize=9)
    fig.tight_layout()
    paths.append(os.path.join(out, "figure3-memory.png"))
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)
    return paths


def tflops_figure(data, name, out):
    res, env = data["results"], data["environment"]
    dims = sorted({r["head_dim"] for r in res})
    masks = sorted({r["causal"] for r in res})
    fig, axes = plt.subplots(2 * len(masks), len(dims), figsize=(5 * len(dims), 3.6 * 2 * len(masks)), squeeze=False)
    for j, d in enumerate(dims):
        for i, causal in enumerate(masks):
            for k, (key, pass_name) in enumerate([("fwd_tflops", "forward"), ("bwd_tflops", "backward")]):
                ax = axes[2 * i + k][j]
                draw(ax, res, key, "TFLOPS", head_dim=d, causal=causal)
                ax.set_title(f"{pass_name}, head_dim {d}, {'causal' if causal else 'non-causal'}", fontsize=9)
    axes[0][-1].legend(fontsize=7)
    fig.suptitle(title_of(env), fontsize=9)
    fig.tight_layout()
    path = os.path.join(out, f"{name}-tflops.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [path]


def ratios(data, name, out):
    """Speed-ups (other time / flashattn time, > 1: flashattn faster) and
    memory ratios at each (head_dim, causal, seqlen)."""
    by = defaultdict(dict)
    for r in data["results"]:
        if r["status"] == "ok":
            by[(r["head_dim"], r["causal"], r["seqlen"])][r["method"]] = r
    lines = [f"# Headline ratios: {name}", "", title_of(data["environment"]), "",
             "Each cell: the other method's time divided by flashattn's (> 1: flashattn faster), forward / "
             "backward / forward+backward; memory: the other's peak extra memory divided by flashattn's.", "",
             "| head_dim | causal | seqlen | vs standard (PyTorch) | memory vs standard | vs sdpa-flash (FA2) "
             "| vs sdpa-cudnn | vs flex | sparse vs flex-sparse | sparse vs fastest approximation |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]

    def cell(a, b):
        if not a or not b:
            return "-"
        return " / ".join(f"{a[k] / b[k]:.2f}" for k in ("fwd_ms", "bwd_ms", "fwd_bwd_ms"))

    for (d, causal, s), m in sorted(by.items()):
        ours, sp = m.get("flashattn"), m.get("flashattn-sparse")
        std = m.get("pytorch-standard")
        mem = "-"
        if ours and std and ours.get("peak_extra_bytes") and std.get("peak_extra_bytes"):
            mem = f"{std['peak_extra_bytes'] / ours['peak_extra_bytes']:.1f}"
        approx = [m[a] for a in APPROXIMATE if a in m]
        fastest = min(approx, key=lambda r: r["fwd_bwd_ms"]) if approx else None
        lines.append(f"| {d} | {int(causal)} | {s} | {cell(std, ours)} | {mem} | {cell(m.get('sdpa-flash'), ours)} "
                     f"| {cell(m.get('sdpa-cudnn'), ours)} | {cell(m.get('flex'), ours)} "
                     f"| {cell(m.get('flex-sparse'), sp)} | {cell(fastest, sp)}"
                     f"{' (' + fastest['method'] + ')' if fastest and sp else ''} |")
    path = os.path.join(out, f"{name}-ratios.md")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return [path]


def sparse_figure(data, out):
    res, env = data["results"], data["environment"]
    dense = {(r["head_dim"], r["seqlen"]): r for r in res if r["method"] == "flashattn" and r["status"] == "ok"}
    fig, ax = plt.subplots(figsize=(7, 4.8))
    shapes = sorted({(r["head_dim"], r["seqlen"]) for r in res})
    patterns = sorted({r.get("pattern", "random") for r in res if r["method"] in ("flashattn-sparse", "flex-sparse")})
    for i, (d, s) in enumerate(shapes):
        for j, pat in enumerate(patterns):
            for method, ls in (("flashattn-sparse", "-"), ("flex-sparse", "--")):
                pts = sorted((r["density"], r["fwd_bwd_ms"]) for r in res
                             if r["method"] == method and (r["head_dim"], r["seqlen"]) == (d, s)
                             and r.get("pattern", "random") == pat and r["status"] == "ok")
                if method == "flashattn-sparse" and (d, s) in dense and pts:
                    pts.append((1.0, dense[(d, s)]["fwd_bwd_ms"]))
                if pts:
                    ax.plot([x for x, _ in pts], [t for _, t in pts], ls, color=f"C{i}", marker="os^v"[j % 4], ms=3,
                            label=f"{method} d={d} s={s} {pat}"
                            + (" (density 1: dense)" if method == "flashattn-sparse" else ""))
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("density (share of key blocks kept)")
    ax.set_ylabel("forward + backward runtime (ms)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=6)
    ax.set_title("Block-sparse runtime against density\n" + title_of(env), fontsize=9)
    fig.tight_layout()
    path = os.path.join(out, "sparse-density.png")
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return [path]


def sparse_ratios(data, name, out):
    res = data["results"]
    dense = {(r["head_dim"], r["seqlen"]): r for r in res if r["method"] == "flashattn" and r["status"] == "ok"}
    flex = {(r["head_dim"], r["seqlen"], r.get("pattern", "random"), r["density"]): r for r in res
            if r["method"] == "flex-sparse" and r["status"] == "ok"}
    lines = [f"# Block-sparse against density: {name}", "", title_of(data["environment"]), "",
             "sparse / dense: block-sparse flashattn's time divided by dense flashattn's, forward / backward / "
             "forward+backward (runtime in proportion to density would give the density itself); flex-sparse / "
             "ours: FlexAttention's time with the same block mask divided by ours (> 1: ours faster).", "",
             "| head_dim | seqlen | pattern | density | sparse ms (fwd / bwd / fwd+bwd) | sparse / dense "
             "| flex-sparse / ours |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    keys = ("fwd_ms", "bwd_ms", "fwd_bwd_ms")
    for r in sorted((r for r in res if r["method"] == "flashattn-sparse" and r["status"] == "ok"),
                    key=lambda r: (r["head_dim"], r["seqlen"], r.get("pattern", "random"), r["density"])):
        d, s, pat, den = r["head_dim"], r["seqlen"], r.get("pattern", "random"), r["density"]
        ms = " / ".join(f"{r[k]:.3f}" for k in keys)
        vs_dense = " / ".join(f"{r[k] / dense[(d, s)][k]:.3f}" for k in keys) if (d, s) in dense else "-"
        f = flex.get((d, s, pat, den))
        vs_flex = " / ".join(f"{f[k] / r[k]:.2f}" for k in keys) if f else "-"
        lines.append(f"| {d} | {s} | {pat} | {den:g} | {ms} | {vs_dense} | {vs_flex} |")
    path = os.path.join(out, f"{name}-ratios.md")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return [path]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("json", nargs="+")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    written = []
    for path in args.json:
        with open(path) as f:
            data = json.load(f)
        name = os.path.splitext(os.path.basename(path))[0]
        if data.get("setting") == "hopper":  # a table only: attention_bench.py writes hopper.md
            continue
        if data.get("setting") == "modern":
            written += tflops_figure(data, name, args.out)
        elif data.get("setting") == "sparse":
            written += sparse_figure(data, args.out) + sparse_ratios(data, name, args.out)
            continue
        else:
            written += paper_figures(data, args.out)
        written += ratios(data, name, args.out)
    for w in written:
        print("wrote", w)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
