"""Plots and a summary table from fa-train JSON-lines logs (scripts/gpu-train-bench).

  python benchmarks/plot_train.py RUNS_DIR [--hf hf.jsonl] --out docs/results/train/<date>-<gpu>-<commit>

Reads RUNS_DIR/<name>.jsonl (fa-train --log-json) and writes
train-loss.png (training loss and held-out loss against step of the
curve-* runs, each labelled with its attention, context and seed), train-throughput.png (tokens/s and peak memory of every run)
and train-summary.md. Throughput is the median tokens/s of the logged
intervals after the first (the first holds start-up, kernel selection and
allocator growth); memory is the allocator's peak of the run.
"""
import argparse
import glob
import json
import os
import statistics

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import train_log  # noqa: E402


def summarise(name, cfg, train, evals):
    c = cfg["config"]
    steady = train_log.steady(train)
    ran = train[-1]["step"]  # below c["steps"] when the run used --stop-after (the schedule spans c["steps"])
    steps = str(ran) if ran == c["steps"] else f"{ran} of {c['steps']}"
    return dict(run=name, preset=c.get("preset", "?"), attention=c["attention"], context=c["context"],
                batch=c["batch"], steps=steps,
                tokens_per_s=statistics.median(r["tokens_per_s"] for r in steady),
                mfu=statistics.median(r["mfu"] for r in steady) if steady[0].get("mfu") is not None else None,
                peak_mem_gb=max(r["peak_mem_bytes"] for r in train) / 1e9,
                final_loss=train[-1]["loss"], final_eval_loss=evals[-1]["loss"] if evals else None,
                best_eval=min(((e["loss"], e["step"]) for e in evals), default=None),
                gpu=cfg.get("gpu"), params=cfg.get("params"))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs")
    ap.add_argument("--hf", help="benchmarks/hf_gpt2.py output (JSON lines)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--title", default="")
    args = ap.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    runs = {os.path.splitext(os.path.basename(p))[0]: train_log.load(p) for p in sorted(glob.glob(os.path.join(args.runs, "*.jsonl")))}
    if not runs:
        ap.error(f"no *.jsonl in {args.runs}")
    rows = [summarise(n, *r) for n, r in runs.items() if r[0] and r[1]]
    presets = ", ".join(sorted({r["preset"] for r in rows}))
    hf = []
    if args.hf:
        with open(args.hf) as f:
            hf = [json.loads(line) for line in f if line.strip().startswith("{")]
        hf = [h for h in hf if h.get("status") == "ok"]

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, (name, (cfg, train, evals)) in enumerate(sorted(runs.items())):
        if not name.startswith("curve-") or not train:
            continue
        c = cfg["config"]
        label = f"{c['attention']} {c['context']}" + (f" seed {c['seed']}" if c.get("seed", 1234) != 1234 else "")
        ax.plot([r["step"] for r in train], [r["loss"] for r in train], "-", color=f"C{i}", label=f"{label} train")
        if evals:
            ax.plot([r["step"] for r in evals], [r["loss"] for r in evals], "o--", color=f"C{i}", label=f"{label} held-out")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats / token)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("GPT-2 small, 16K tokens a step (context x batch), seed 1234 unless said\n" + args.title,
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, "train-loss.png"), dpi=120)
    plt.close(fig)

    bars = [(r["run"], r["tokens_per_s"], r["peak_mem_gb"]) for r in rows] + \
           [(f"hf-{h['attn']}", h["tokens_per_s"], h["peak_mem_bytes"] / 1e9) for h in hf]
    fig, axes = plt.subplots(1, 2, figsize=(12, 0.45 * len(bars) + 1.5))
    names = [b[0] for b in bars]
    axes[0].barh(names, [b[1] / 1e3 for b in bars], color="C0")
    axes[0].set_xlabel("thousand tokens / s")
    axes[1].barh(names, [b[2] for b in bars], color="C1")
    axes[1].set_xlabel("peak memory (GB)")
    for ax in axes:
        ax.invert_yaxis()
        ax.grid(True, axis="x", alpha=0.3)
    fig.suptitle(f"fa-train {presets} (and HuggingFace's GPT-2, hf-*)\n" + args.title, fontsize=9)
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, "train-throughput.png"), dpi=120)
    plt.close(fig)

    lines = [f"# fa-train {presets}", "", args.title, "",
             "Median tokens/s of the logged intervals after the first; peak memory of the caching allocator.", "",
             "| run | attention | context | batch | steps | tokens/s | MFU | peak GB | last train loss | last held-out loss "
             "| best held-out loss (step) |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    if any(" of " in r["steps"] for r in rows):
        lines.insert(-2, "Steps \"N of M\": the run stopped after N steps of a learning-rate schedule spanning M "
                         "(fa-train --stop-after), so it follows the first N steps of an M-step run.\n")
    for r in rows:
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "-"
        ev = f"{r['final_eval_loss']:.4f}" if r["final_eval_loss"] is not None else "-"
        best = f"{r['best_eval'][0]:.4f} ({r['best_eval'][1]})" if r["best_eval"] else "-"
        lines.append(f"| {r['run']} | {r['attention']} | {r['context']} | {r['batch']} | {r['steps']} | "
                     f"{r['tokens_per_s']:,.0f} | {mfu} | {r['peak_mem_gb']:.1f} | {r['final_loss']:.4f} | {ev} | {best} |")
    for h in hf:
        lines.append(f"| hf-{h['attn']} (transformers {h['transformers']}) | {h['attn']} | {h['context']} | "
                     f"{h['batch']} | - | {h['tokens_per_s']:,.0f} | - | {h['peak_mem_bytes'] / 1e9:.1f} | - | - | - |")
    with open(os.path.join(args.out, "train-summary.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    for n in ("train-loss.png", "train-throughput.png", "train-summary.md"):
        print("wrote", os.path.join(args.out, n))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
