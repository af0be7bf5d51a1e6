"""scripts/bench-commits' summary: the per-round JSON of one timing path
merged into one record per (commit, shape), the median over the rounds.

  python benchmarks/commits_table.py OUT.json OUT.md PREFIX...        # python path
  python benchmarks/commits_table.py --tool OUT.json NAME:JSON...     # tool path

Python path: PREFIX is OUTDIR/rounds/<commit>; its rounds are
PREFIX-r<N>.json (benchmarks/attention_bench.py). Tool path: each NAME:JSON
is one round of commit NAME, a tools/flashattn-bench --json file of one
shape; the markdown goes beside OUT.json (OUT.md). The commits keep the
order given; the markdown table gives each commit's TFLOPS (forward /
backward / forward + backward; the tool path forward / backward) and its
time ratio to the first commit's (> 1: faster than the first). Exit
status 1 when a commit has no round file or a shape failed in some round.
"""
import glob
import json
import os
import statistics
import sys

PASSES = ("fwd", "bwd", "fwd_bwd")


def merge(prefixes):
    rows, env, problems = [], None, []
    for prefix in prefixes:
        name = os.path.basename(prefix)
        files = sorted(glob.glob(glob.escape(prefix) + "-r*.json"))
        if not files:
            problems.append(f"{name}: no round file ({prefix}-r*.json)")
            continue
        by = {}
        for path in files:
            with open(path) as f:
                data = json.load(f)
            env = env or data.get("environment")
            for r in data["results"]:
                key = (r.get("dtype"), r["head_dim"], r["causal"], r["seqlen"])
                by.setdefault(key, []).append(r)
        for (dtype, d, causal, s), recs in by.items():
            ok = [r for r in recs if r["status"] == "ok"]
            row = dict(commit=name, path="python", method=recs[0]["method"], kernels=recs[0].get("kernels"),
                       dtype=dtype, head_dim=d, causal=causal, seqlen=s, rounds=len(recs), rounds_ok=len(ok),
                       status="ok" if len(ok) == len(recs) else "failed",
                       host_syncs=sum(r.get("host_syncs") or 0 for r in ok))
            if len(ok) != len(recs):
                problems.append(f"{name} d {d} causal {int(causal)} s {s}: "
                                + "; ".join(f"{r['status']} {r.get('reason', '')}" for r in recs if r["status"] != "ok"))
            for p in PASSES:
                if ok:
                    row[f"{p}_ms"] = statistics.median(r[f"{p}_ms"] for r in ok)
                    row[f"{p}_ms_rounds"] = [r[f"{p}_ms"] for r in ok]
                    if ok[0].get(f"{p}_tflops") is not None:
                        row[f"{p}_tflops"] = statistics.median(r[f"{p}_tflops"] for r in ok)
            rows.append(row)
    return rows, env or {}, problems


def merge_tool(items):
    """Tool path: NAME:JSON items, one flashattn-bench run of one shape each;
    rounds of a (commit, shape) are the items that repeat it."""
    by, order, gpu, problems = {}, [], None, []
    for item in items:
        name, path = item.split(":", 1)
        if name not in order:
            order.append(name)
        try:
            with open(path) as f:
                data = json.load(f)
        except (OSError, ValueError) as e:
            problems.append(f"{name}: {path}: {e}")
            continue
        gpu = gpu or data.get("machine", {}).get("gpu")
        c = data["config"]
        for r in data["results"]:
            by.setdefault((name, c["head_dim"], bool(c["causal"]), r["seqlen"]), []).append(r)
    rows = []
    for (name, d, causal, s), recs in by.items():
        ok = [r for r in recs if r.get("status") == "ok"]
        row = dict(commit=name, path="tool", dtype="bfloat16", head_dim=d, causal=causal, seqlen=s, rounds=len(recs),
                   rounds_ok=len(ok), status="ok" if ok and len(ok) == len(recs) else "failed", gpu=gpu)
        if len(ok) != len(recs):
            problems.append(f"{name} d {d} causal {int(causal)} s {s}: a round failed")
        for p in TOOL_PASSES:
            if ok and all(r.get(f"{p}_ms") for r in ok):
                row[f"{p}_ms"] = statistics.median(r[f"{p}_ms"] for r in ok)
                row[f"{p}_ms_rounds"] = [r[f"{p}_ms"] for r in ok]
                row[f"{p}_tflops"] = statistics.median((r.get(f"{p}_gflops") or 0) / 1e3 for r in ok)
        rows.append(row)
    return rows, dict(gpu=gpu), order, problems


TOOL_PASSES = ("fwd", "bwd")


def markdown(rows, env, order, passes=PASSES, how=None):
    shapes = list(dict.fromkeys((r["dtype"], r["head_dim"], r["causal"], r["seqlen"]) for r in rows))
    at = {(r["commit"], r["dtype"], r["head_dim"], r["causal"], r["seqlen"]): r for r in rows}
    first = order[0] if order else None
    how = how or (f"{env.get('gpu') or env.get('cpu')}; torch {env.get('torch')}; {env.get('date', '')}. Each "
                  "cell: TFLOPS forward / backward / forward + backward, the median over the rounds (each round one "
                  "process per commit, its package on PYTHONPATH, attention_bench.py --setting hopper --methods "
                  "flashattn)")
    lines = [f"# bench-commits ({rows[0]['path'] if rows else 'python'} path)", "",
             f"{how}; in brackets the first commit's ({first}) time over this one's (> 1: faster).", "",
             "| dtype, head_dim, mask, seqlen | " + " | ".join(order) + " |",
             "| --- | " + " | ".join("---:" for _ in order) + " |"]
    for key in shapes:
        dtype, d, causal, s = key
        cells = []
        base = at.get((first, *key))
        for name in order:
            r = at.get((name, *key))
            if r is None or r["status"] != "ok" or "fwd_tflops" not in r:
                cells.append("-" if r is None else r["status"])
                continue
            cell = " / ".join(f"{r[f'{p}_tflops']:.0f}" if r[f"{p}_tflops"] >= 10 else f"{r[f'{p}_tflops']:.3g}"
                              for p in passes)
            if base is not None and base["status"] == "ok" and name != first:
                cell += " (" + " / ".join(f"{base[f'{p}_ms'] / r[f'{p}_ms']:.3f}" for p in passes) + ")"
            cells.append(cell)
        label = f"{dtype}, d {d}, {'causal' if causal else 'non-causal'}, {s}"
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main_tool(argv):
    out_json, items = argv[0], argv[1:]
    rows, env, order, problems = merge_tool(items)
    with open(out_json, "w") as f:
        json.dump(dict(tool="scripts/bench-commits", path="tool", commits=order, results=rows, problems=problems), f,
                  indent=1)
    out_md = os.path.splitext(out_json)[0] + ".md"
    how = (f"{env.get('gpu')}. Each cell: TFLOPS forward / backward (tools/flashattn-bench, its own timing), the "
           "median over the rounds")
    with open(out_md, "w") as f:
        f.write(markdown(rows, env, order, TOOL_PASSES, how))
    print(f"wrote {out_json} ({len(rows)} records) and {out_md}")
    for p in problems:
        print("bench-commits:", p, file=sys.stderr)
    return 1 if problems else 0


def main(argv):
    if argv and argv[0] == "--tool":
        if len(argv) < 3:
            print(__doc__, file=sys.stderr)
            return 2
        return main_tool(argv[1:])
    if len(argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    out_json, out_md, prefixes = argv[0], argv[1], argv[2:]
    rows, env, problems = merge(prefixes)
    order = [os.path.basename(p) for p in prefixes]
    with open(out_json, "w") as f:
        json.dump(dict(tool="scripts/bench-commits", path="python", environment=env, commits=order, results=rows,
                       problems=problems), f, indent=1)
    with open(out_md, "w") as f:
        f.write(markdown(rows, env, order))
    print(f"wrote {out_json} ({len(rows)} records) and {out_md}")
    for p in problems:
        print("bench-commits:", p, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
