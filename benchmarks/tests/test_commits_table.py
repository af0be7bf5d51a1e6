"""commits_table.py's tool path (scripts/bench-commits with
FLASHATTN_BENCH_PATH=tool): rounds of flashattn-bench JSON files merged
into one record per (commit, shape), the median over the rounds."""
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import commits_table  # noqa: E402


def bench_json(path, head_dim, causal, fwd_ms, bwd_ms, status="ok"):
    """A flashattn-bench --json file of one shape (the fields the merge reads)."""
    flop = 4.0 * 2 * 8 * 8192 * 8192 * head_dim / (2 if causal else 1)
    res = dict(seqlen=8192, method="flash", status=status, fwd_ms=fwd_ms, bwd_ms=bwd_ms,
               fwd_gflops=flop / fwd_ms / 1e6, bwd_gflops=2.5 * flop / bwd_ms / 1e6)
    with open(path, "w") as f:
        json.dump(dict(tool="flashattn-bench", machine=dict(gpu="H100"),
                       config=dict(head_dim=head_dim, causal=causal), results=[res]), f)
    return str(path)


def test_tool_rounds_give_the_median_and_the_ratio(tmp_path):
    items = []
    for r, (a, b) in enumerate([(2.0, 1.9), (2.2, 2.0), (2.1, 2.3)]):  # fwd ms of commit A, B in 3 rounds
        items.append("A:" + bench_json(tmp_path / f"A-r{r}.json", 64, False, a, 6.0))
        items.append("B:" + bench_json(tmp_path / f"B-r{r}.json", 64, False, b, 6.0))
    out = tmp_path / "bench-commits.json"
    assert commits_table.main(["--tool", str(out)] + items) == 0
    data = json.load(open(out))
    rows = {r["commit"]: r for r in data["results"]}
    assert data["commits"] == ["A", "B"]
    assert rows["A"]["rounds"] == 3 and rows["A"]["fwd_ms"] == 2.1 and rows["B"]["fwd_ms"] == 2.0
    assert rows["A"]["fwd_ms_rounds"] == [2.0, 2.2, 2.1]
    md = open(tmp_path / "bench-commits.md").read()
    assert "(tool path)" in md and "(1.050 / 1.000)" in md  # A's median time over B's


def test_tool_failed_round_is_reported(tmp_path):
    items = ["A:" + bench_json(tmp_path / "A-r0.json", 128, True, 1.0, 3.0),
             "A:" + bench_json(tmp_path / "A-r1.json", 128, True, 1.0, 3.0, status="failed"),
             "B:" + str(tmp_path / "missing.json")]
    assert commits_table.main(["--tool", str(tmp_path / "o.json")] + items) == 1
    data = json.load(open(tmp_path / "o.json"))
    assert data["results"][0]["status"] == "failed" and len(data["problems"]) == 2
