"""The decode timings of several builds (scripts/bench-commits with
FLASHATTN_BENCH_PATH=decode): per point, each build's median time over the
rounds, every round's time, and the speed-up over the first build.

  python benchmarks/decode_commits_table.py OUT.json OUT.md ROUNDS_DIR NAME...

ROUNDS_DIR holds NAME-r<round>/decode.json (benchmarks/decode_bench.py's
output, one a build and round). A point is (method, layout, heads, batch,
cache); the peers (SDPA, FlashInfer) run in every build's process too, so
their rows show how much the machine drifted between the builds' turns.
"""
import glob
import json
import os
import statistics
import sys


def load(rounds_dir, name):
    """{point: [ms of each round]} and the first round's meta."""
    times, meta = {}, None
    files = sorted(glob.glob(os.path.join(rounds_dir, f"{name}-r*", "decode.json")),
                   key=lambda p: int(p.rsplit("-r", 1)[1].split(os.sep)[0]))
    for path in files:
        with open(path) as f:
            d = json.load(f)
        meta = meta or d["meta"]
        for r in d["records"]:
            if r.get("ms") is None:
                continue
            key = (r["method"], r["layout"], f"{r['heads_q']}/{r['heads_k']}", r["batch"], r["cache"])
            times.setdefault(key, []).append(r["ms"])
    return times, meta


def main(argv):
    if len(argv) < 4:
        sys.exit(__doc__)
    out_json, out_md, rounds_dir, names = argv[0], argv[1], argv[2], argv[3:]
    runs = {n: load(rounds_dir, n) for n in names}
    names = [n for n in names if runs[n][0]]
    if not names:
        sys.exit("decode_commits_table: no decode.json under " + rounds_dir)
    first = names[0]
    meta = runs[first][1]
    points = sorted(set().union(*(runs[n][0] for n in names)), key=lambda k: (k[0] != "flashattn", k))
    records, lines = [], [
        f"# Decode at several builds: {meta.get('gpu', '?')}, {meta.get('date', '?')}", "",
        f"Median over the rounds (microseconds; each round's in brackets); speed-up = `{first}`'s median time "
        "over the build's. The peers run in each build's process: their rows show the machine's drift.", "",
        "| method | layout | heads | batch | cache | " + " | ".join(f"`{n}` us" for n in names) + " | " +
        " | ".join(f"`{n}` speed-up" for n in names[1:]) + " |",
        "| --- | --- | --- | ---: | ---: |" + " ---: |" * (2 * len(names) - 1)]
    for key in points:
        med = {n: statistics.median(runs[n][0][key]) * 1e3 for n in names if key in runs[n][0]}
        cells = [f"{med[n]:.1f} ({' '.join(f'{t * 1e3:.1f}' for t in runs[n][0][key])})" if n in med else "-"
                 for n in names]
        ups = [f"{med[first] / med[n]:.3f}" if first in med and n in med else "-" for n in names[1:]]
        lines.append("| " + " | ".join(map(str, key)) + " | " + " | ".join(cells) + " | " + " | ".join(ups) + " |")
        records.append(dict(method=key[0], layout=key[1], heads=key[2], batch=key[3], cache=key[4],
                            median_us={n: med.get(n) for n in names},
                            rounds_us={n: [t * 1e3 for t in runs[n][0].get(key, [])] for n in names}))
    with open(out_json, "w") as f:
        json.dump(dict(meta=meta, builds=names, records=records), f, indent=1)
    with open(out_md, "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
