"""The benchmark harness and the plots, run on the CPU at tiny sizes: every
method either runs or says why not, the numbers are consistent with each
other, and the plots and ratio tables are written. (The real runs are on a
GPU: benchmarks/run-gpu.)"""
import json
import os
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

pytest.importorskip("matplotlib")

import attention_bench  # noqa: E402
import plot  # noqa: E402


@pytest.fixture(scope="module")
def paper(tmp_path_factory):
    path = tmp_path_factory.mktemp("bench") / "paper.json"
    rc = attention_bench.main(["--device", "cpu", "--setting", "paper", "--seqlens", "64,160", "--batch", "2",
                               "--heads", "2", "--block", "32", "--repeats", "1", "--warmup", "0",
                               "--json", str(path)])
    assert rc == 0
    with open(path) as f:
        return json.load(f)


def records(data, method):
    return [r for r in data["results"] if r["method"] == method]


def test_every_method_runs_or_says_why(paper):
    for r in paper["results"]:
        assert r["status"] in ("ok", "unsupported", "oom"), r
        if r["status"] == "unsupported":
            assert r.get("reason"), r
    # What must run on the CPU: ours, the PyTorch baselines and the
    # approximations.
    for m in ("flashattn", "flashattn-sparse", "flashattn-standard", "pytorch-standard", "sdpa-math",
              "linformer", "performer", "linear", "local"):
        assert [r["status"] for r in records(paper, m)] == ["ok", "ok"], m
    # PyTorch's fused FlashAttention backend cannot take the key-padding
    # mask: it is reported, not run on another problem.
    assert all(r["status"] == "unsupported" for r in records(paper, "sdpa-flash"))


def test_numbers_are_consistent(paper):
    for r in records(paper, "flashattn") + records(paper, "flashattn-sparse"):
        assert r["fwd_ms"] > 0 and r["bwd_ms"] > 0 and r["fwd_bwd_ms"] > 0
        assert r["fwd_tflops"] == pytest.approx(4 * r["heads"] * r["head_dim"] * r["attended_pairs"]
                                                / (r["fwd_ms"] * 1e-3) / 1e12)
    dense = records(paper, "flashattn")
    sparse = records(paper, "flashattn-sparse")
    for d, s in zip(dense, sparse):
        # The sparse rows run without key padding and keep a quarter of the
        # key blocks (at least the diagonal one).
        assert d["key_padding"] and not s["key_padding"]
        assert s["attended_pairs"] <= 0.5 * d["batch"] * d["seqlen"] ** 2
    for r in records(paper, "linformer"):
        assert "fwd_tflops" not in r  # approximate methods: runtimes only


def test_plots_and_ratios(paper, tmp_path):
    src = tmp_path / "paper.json"
    src.write_text(json.dumps(paper))
    assert plot.main([str(src), "--out", str(tmp_path)]) == 0
    for name in ("figure3-runtime.png", "figure3-memory.png", "paper-ratios.md"):
        assert (tmp_path / name).stat().st_size > 0, name
    table = (tmp_path / "paper-ratios.md").read_text()
    assert "| 64 | 0 | 160 |" in table


def test_bad_flags_are_errors():
    with pytest.raises(SystemExit):
        attention_bench.main(["--device", "cpu", "--methods", "nope", "--json", os.devnull])
    with pytest.raises(SystemExit):
        attention_bench.main(["--device", "cpu", "--dropout", "1.5", "--json", os.devnull])


def test_modern_setting_and_its_plot(tmp_path):
    path = tmp_path / "modern.json"
    rc = attention_bench.main(["--device", "cpu", "--setting", "modern", "--seqlens", "64,128", "--tokens", "256",
                               "--head-dims", "32,64", "--causal", "both", "--methods", "flashattn,sdpa-math",
                               "--dtype", "float32", "--repeats", "1", "--warmup", "0", "--json", str(path)])
    assert rc == 0
    data = json.loads(path.read_text())
    ours = [r for r in data["results"] if r["method"] == "flashattn"]
    assert len(ours) == 2 * 2 * 2 and all(r["status"] == "ok" for r in ours)
    # batch = tokens / seqlen, heads = 2048 / head_dim, causal halves the pairs.
    for r in ours:
        assert r["batch"] == 256 // r["seqlen"] and r["heads"] == 2048 // r["head_dim"]
        full = r["batch"] * r["seqlen"] ** 2
        assert r["attended_pairs"] == (full if not r["causal"] else r["batch"] * r["seqlen"] * (r["seqlen"] + 1) / 2)
    assert plot.main([str(path), "--out", str(tmp_path)]) == 0
    assert (tmp_path / "modern-tflops.png").stat().st_size > 0


def test_sparse_setting_runs_each_density_and_plots(tmp_path):
    path = tmp_path / "sparse.json"
    rc = attention_bench.main(["--device", "cpu", "--setting", "sparse", "--seqlens", "128", "--batch", "1",
                               "--heads", "2", "--block", "32", "--density", "0.25,0.5", "--repeats", "5",
                               "--warmup", "2", "--max-seconds", "1e-9", "--json", str(path)])
    assert rc == 0
    data = json.loads(path.read_text())
    sparse = records(data, "flashattn-sparse")
    assert [r["density"] for r in sparse] == [0.25, 0.5]
    assert sparse[0]["attended_pairs"] < sparse[1]["attended_pairs"] < records(data, "flashattn")[0]["attended_pairs"]
    # --max-seconds stops each loop after the minimum of three samples.
    assert all(r["samples"] == 3 for r in sparse)
    assert plot.main([str(path), "--out", str(tmp_path)]) == 0
    table = (tmp_path / "sparse-ratios.md").read_text()
    assert "| 128 | 0.25 |" in table and "| 128 | 0.5 |" in table
    assert (tmp_path / "sparse-density.png").stat().st_size > 0


def test_plot_train_reads_fa_train_logs(tmp_path):
    import plot_train
    runs = tmp_path / "runs"
    runs.mkdir()
    for name, att, tps in (("curve-flashattn", "flashattn", [90.0, 150.0, 148.0]),
                           ("curve-standard", "standard", [60.0, 97.0, 99.0])):
        lines = [dict(event="config", config=dict(attention=att, context=1024, batch=16, steps=30), gpu="G",
                      params=1)]
        lines += [dict(event="train", step=10 * (i + 1), loss=5.0 - i, tokens_per_s=t, mfu=0.1,
                       peak_mem_bytes=2e9 + i) for i, t in enumerate(tps)]
        lines += [dict(event="eval", step=20, loss=3.4, ppl=30.0), dict(event="eval", step=30, loss=3.5, ppl=33.1)]
        (runs / f"{name}.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    hf = tmp_path / "hf.jsonl"
    hf.write_text(json.dumps(dict(status="ok", attn="sdpa", transformers="x", context=1024, batch=16,
                                  tokens_per_s=120.0, peak_mem_bytes=3e9)) + "\n")
    assert plot_train.main([str(runs), "--hf", str(hf), "--out", str(tmp_path)]) == 0
    table = (tmp_path / "train-summary.md").read_text()
    # The first logged interval (start-up) is left out of the median.
    assert "| curve-flashattn | flashattn | 1024 | 16 | 30 | 149 |" in table
    # Last and best held-out loss: the best is the lowest, with its step.
    assert "| 3.5000 | 3.4000 (20) |" in table
    assert "| hf-sdpa (transformers x) |" in table
    for n in ("train-loss.png", "train-throughput.png"):
        assert (tmp_path / n).stat().st_size > 0


def test_plot_train_marks_a_run_stopped_before_its_schedule_ends(tmp_path):
    import plot_train
    runs = tmp_path / "runs"
    runs.mkdir()
    lines = [dict(event="config", config=dict(preset="gpt2-small", attention="flashattn", context=1024, batch=16,
                                              steps=2000, seed=4321))]
    lines += [dict(event="train", step=s, loss=4.0, tokens_per_s=100.0, mfu=0.1, peak_mem_bytes=1e9)
              for s in (500, 1000)]
    (runs / "curve-flashattn-seed4321.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    assert plot_train.main([str(runs), "--out", str(tmp_path)]) == 0
    table = (tmp_path / "train-summary.md").read_text()
    assert table.startswith("# fa-train gpt2-small")
    assert "| curve-flashattn-seed4321 | flashattn | 1024 | 16 | 1000 of 2000 |" in table
    assert "fa-train --stop-after" in table


def test_hopper_table_ratios_and_bars(tmp_path, capsys):
    import hopper_table

    def ours(kind, d, causal, rows):
        results = [dict(seqlen=s, status="ok", fwd_gflops=f * 1e3, bwd_gflops=b * 1e3) for s, f, b in rows]
        name = f"ours-{kind}-d{d}{'-causal' if causal else ''}.json"
        (tmp_path / name).write_text(json.dumps(dict(results=results)))

    ours("sm90", 128, False, [(1024, 400.0, 300.0), (8192, 600.0, 500.0)])
    ours("sm80", 128, False, [(8192, 300.0, 200.0)])
    peers = [dict(method="sdpa-cudnn", head_dim=128, causal=False, seqlen=8192, status="ok", fwd_tflops=650.0,
                  bwd_tflops=580.0),
             dict(method="sdpa-cudnn", head_dim=128, causal=False, seqlen=1024, status="ok", fwd_tflops=500.0,
                  bwd_tflops=300.0)]
    (tmp_path / "peers.json").write_text(json.dumps(dict(results=peers)))
    assert hopper_table.main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    # 600 / 650 = 0.92 meets the forward bar, 500 / 580 = 0.86 the backward's.
    assert "| 128, non-causal, 8192 | 600 / 500 | 300 / 200 | 650 / 580 | - | 0.92x (bar met) | 0.86x (bar met) |" in out
    # 400 / 500 = 0.80 misses it; 300 / 300 = 1.00 meets the backward's.
    assert "| 128, non-causal, 1024 | 400 / 300 | - | 500 / 300 | - | 0.80x (bar missed) | 1.00x (bar met) |" in out
    # Rows without measurements say so instead of inventing a ratio.
    assert "| 64, non-causal, 8192 | - | - | - | - | - | - |" in out
