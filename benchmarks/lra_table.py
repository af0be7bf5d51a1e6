"""Tables and plots of scripts/gpu-lra's runs (fa-train JSON-lines logs).

  python benchmarks/lra_table.py RUN_DIR [RUN_DIR ...] --out docs/results/lra/<date>-<gpu>-<commit>

Reads every probe-<task>-<attention>.jsonl / .out and
run-<task>-<attention>.jsonl / .out in the folders given, and the pieces
of long runs (long-<task>-<attention>.jsonl, one a call; give the folders
in the order the pieces ran), and writes
lra.md: the throughput probes (median step time and tokens/s of the logged
intervals after the first, which holds start-up; peak memory; "out of
memory" where the .out says so) with the speed-up over standard attention,
and the training runs (steps done, accuracy at each evaluation, the last
accuracy, median step time, speed-up). A long run's pieces are joined: each
piece resumes at its checkpoint's step (the log's start_step), and what an
earlier piece logged past that step (trained again by the next piece) is
dropped. Pathfinder rows also give the best score of the rules that guess
the label without tracing (fa-lra audit --json: audit-<task>.json in a
run folder), the bar a model's accuracy has to beat rather than 0.5. With
matplotlib: lra-<task>.png (training runs) and
lra-long-<task>.png (long runs), accuracy and loss against step for each
attention.
"""
import argparse
import glob
import json
import os
import re
import statistics

import train_log

TASK_NAMES = {"listops": "ListOps (2,001 tokens)", "pf32": "Pathfinder 32 (1,025)", "pf64": "Pathfinder 64 (4,097)",
              "pf128": "Path-X, 128 (16,385)", "pf256": "Path-256 (65,537)"}
TASK_ORDER = list(TASK_NAMES)
ATT_ORDER = ["standard", "flashattn", "flashattn-sparse"]


def failure(out_path):
    if not os.path.exists(out_path):
        return "no log"
    text = open(out_path, errors="replace").read()
    if "out of memory" in text:
        m = re.search(r"Tried to allocate ([0-9.]+ [GM]iB)", text)
        return "out of memory" + (f" (allocating {m.group(1)})" if m else "")
    return None


def collect(dirs, kind):
    runs = {}
    for d in dirs:
        for path in glob.glob(os.path.join(d, f"{kind}-*.jsonl")) + glob.glob(os.path.join(d, f"{kind}-*.out")):
            name = os.path.basename(path).rsplit(".", 1)[0]
            _, task, att = name.split("-", 2)
            runs[(task, att)] = os.path.join(d, name)
    return runs


def collect_pieces(dirs):
    """(task, attention) -> the long run's piece paths (no extension), in
    the order of dirs."""
    runs = {}
    for d in dirs:
        for path in sorted(glob.glob(os.path.join(d, "long-*.jsonl"))):
            name = os.path.basename(path).rsplit(".", 1)[0]
            _, task, att = name.split("-", 2)
            runs.setdefault((task, att), []).append(os.path.join(d, name))
    return runs


def join_pieces(bases):
    """(first config, train records, eval records, pieces) of a run logged
    in pieces: a piece that starts at step s replaces what the earlier ones
    logged after s."""
    cfg0, train, evals, pieces = None, [], [], 0
    for base in bases:
        cfg, t, e = train_log.load(base + ".jsonl")
        if cfg is None:
            continue
        s0 = cfg.get("start_step", 0)
        train = [r for r in train if r["step"] <= s0] + t
        evals = [r for r in evals if r["step"] <= s0] + e
        cfg0 = cfg0 or cfg
        pieces += 1
    return cfg0, train, evals, pieces


def no_tracing_rules(dirs):
    """task -> "0.535 (band 1/8 and distance)": the best rule of the task's
    audit-<task>.json (the last folder's, when several have one)."""
    rules = {}
    for d in dirs:
        for path in glob.glob(os.path.join(d, "audit-*.json")):
            task = os.path.basename(path)[len("audit-"):-len(".json")]
            with open(path) as f:
                cues = json.load(f)["cues"]
            name = max(cues, key=cues.get)
            rules[task] = f"{cues[name]:.3f} ({name})"
    return rules


def key(item):
    (task, att), _ = item
    base, _, variant = att.partition("+")
    return (TASK_ORDER.index(task) if task in TASK_ORDER else 99, variant,
            ATT_ORDER.index(base) if base in ATT_ORDER else 99)


def variant_of(att):
    """A run's recipe variant (scripts/gpu-lra names a run "ATTENTION+VARIANT"):
    its speed-up is over standard attention on the same variant."""
    base, _, variant = att.partition("+")
    return base, variant


def median_steady(train, field):
    return statistics.median(t[field] for t in train_log.steady(train))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dirs", nargs="+")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    lines = []

    probes = collect(args.dirs, "probe")
    if probes:
        lines += ["## Throughput probes", "",
                  "Median over the logged intervals after the first; the same tokens per step for every attention "
                  "(64K positions: batch x context); tokens/s counts real tokens (ListOps pads to 2,001).", "",
                  "| task | attention | ms / step | tokens/s | peak GB | vs standard |", "| --- | --- | ---: | ---: | ---: | ---: |"]
        std_ms = {}
        for (task, att), base in sorted(probes.items(), key=key):
            cfg, train, _ = train_log.load(base + ".jsonl")
            if train:
                ms = median_steady(train, "step_ms")
                if att == "standard":
                    std_ms[task] = ms
                ratio = f"{std_ms[task] / ms:.2f}x" if task in std_ms and att != "standard" else \
                    ("1.00x" if att == "standard" else "standard: out of memory")
                lines.append(f"| {TASK_NAMES.get(task, task)} | {att} | {ms:.1f} | "
                             f"{median_steady(train, 'tokens_per_s'):,.0f} | "
                             f"{max(t['peak_mem_bytes'] for t in train) / 1e9:.1f} | {ratio} |")
            else:
                lines.append(f"| {TASK_NAMES.get(task, task)} | {att} | {failure(base + '.out') or 'failed'} | | | |")
        lines.append("")

    rules = no_tracing_rules(args.dirs)
    runs = collect(args.dirs, "run")
    curves = {}
    if runs:
        lines += ["## Training runs", "",
                  "| task | attention | steps | ms / step | vs standard | accuracy at evaluations (step: accuracy) | "
                  "last accuracy | best rule without tracing |",
                  "| --- | --- | ---: | ---: | ---: | --- | ---: | --- |"]
        std_ms = {}
        for (task, att), base in sorted(runs.items(), key=key):
            cfg, train, evals = train_log.load(base + ".jsonl")
            if not train:
                lines.append(f"| {TASK_NAMES.get(task, task)} | {att} | {failure(base + '.out') or 'failed'} | | | | | |")
                continue
            curves.setdefault(task, {})[att] = (train, evals)
            ms = median_steady(train, "step_ms")
            base, variant = variant_of(att)
            if base == "standard":
                std_ms[task, variant] = ms
            ratio = f"{std_ms[task, variant] / ms:.2f}x" if (task, variant) in std_ms else "no standard run"
            total = cfg["config"]["steps"] if cfg else "?"
            accs = ", ".join(f"{e['step']}: {e['accuracy']:.3f}" for e in evals if "accuracy" in e)
            last = f"{evals[-1]['accuracy']:.3f}" if evals and "accuracy" in evals[-1] else ""
            lines.append(f"| {TASK_NAMES.get(task, task)} | {att} | {train[-1]['step']} of {total} | {ms:.1f} | "
                         f"{ratio} | {accs} | {last} | {rules.get(task, '')} |")
        lines.append("")

    longs = collect_pieces(args.dirs)
    long_curves = {}
    if longs:
        lines += ["## Long runs (in pieces, one a call)", "",
                  "| task | attention | pieces | steps | ms / step | accuracy at evaluations (step: accuracy) | "
                  "last accuracy | best | best rule without tracing |",
                  "| --- | --- | ---: | ---: | ---: | --- | ---: | ---: | --- |"]
        for (task, att), bases in sorted(longs.items(), key=key):
            cfg, train, evals, pieces = join_pieces(bases)
            if not train:
                lines.append(f"| {TASK_NAMES.get(task, task)} | {att} | {len(bases)} | no steps logged | | | | | |")
                continue
            long_curves.setdefault(task, {})[att] = (train, evals)
            ms = statistics.median(t["step_ms"] for t in train_log.steady(train))
            total = cfg["config"]["steps"]
            accs = [e for e in evals if "accuracy" in e]
            at_evals = ", ".join(f"{e['step']}: {e['accuracy']:.3f}" for e in accs)
            last = f"{accs[-1]['accuracy']:.3f}" if accs else ""
            best = f"{max(e['accuracy'] for e in accs):.3f}" if accs else ""
            lines.append(f"| {TASK_NAMES.get(task, task)} | {att} | {pieces} | {train[-1]['step']} of {total} | "
                         f"{ms:.1f} | {at_evals} | {last} | {best} | {rules.get(task, '')} |")
        lines.append("")

    with open(os.path.join(args.out, "lra.md"), "w") as f:
        f.write("\n".join(lines))
    print("\n".join(lines))

    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("lra_table: no matplotlib, no plots")
        return 0
    plots = [(f"lra-{task}.png", task, by_att) for task, by_att in curves.items()]
    plots += [(f"lra-long-{task}.png", task, by_att) for task, by_att in long_curves.items()]
    for file_name, task, by_att in plots:
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.8))
        for att in sorted(by_att, key=lambda a: ATT_ORDER.index(a) if a in ATT_ORDER else 99):
            train, evals = by_att[att]
            a1.plot([e["step"] for e in evals], [e["accuracy"] for e in evals], marker="o", label=att)
            a2.plot([t["step"] for t in train], [t["loss"] for t in train], label=f"{att} (train)", alpha=0.8)
            a2.plot([e["step"] for e in evals], [e["loss"] for e in evals], linestyle="--", marker=".",
                    label=f"{att} (held out)")
        a1.set_xlabel("step")
        a1.set_ylabel("held-out accuracy")
        a1.legend()
        a1.grid(alpha=0.3)
        a2.set_xlabel("step")
        a2.set_ylabel("loss")
        a2.legend(fontsize=7)
        a2.grid(alpha=0.3)
        fig.suptitle(TASK_NAMES.get(task, task))
        fig.tight_layout()
        fig.savefig(os.path.join(args.out, file_name), dpi=110)
        plt.close(fig)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
