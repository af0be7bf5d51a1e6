"""The result tools that turn GPU logs into tables and plots
(benchmarks/lra_table.py, benchmarks/decode_plot.py), run on the CPU on
small hand-made logs whose right answers are known."""
import json
import os
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

pytest.importorskip("matplotlib")

import decode_plot  # noqa: E402
import lra_table  # noqa: E402


def write_run(folder, name, step_ms, evals, steps=100):
    """An fa-train --log-json log: a config line, train lines, eval lines."""
    with open(folder / f"{name}.jsonl", "w") as f:
        f.write(json.dumps({"event": "config", "config": {"steps": steps}}) + "\n")
        for i, ms in enumerate(step_ms):
            f.write(json.dumps({"event": "train", "step": 10 * (i + 1), "loss": 2.0 - 0.1 * i, "tokens_per_s": 1000.0 / ms,
                                "step_ms": ms, "peak_mem_bytes": 2e9}) + "\n")
        for step, acc in evals:
            f.write(json.dumps({"event": "eval", "step": step, "loss": 1.5, "accuracy": acc}) + "\n")
    (folder / f"{name}.out").write_text("step ...\n")


def test_lra_table_ratios_oom_and_plots(tmp_path):
    # The first logged interval holds start-up and must not count: 500 ms.
    write_run(tmp_path, "probe-listops-standard", [500.0, 120.0, 120.0, 120.0], [])
    write_run(tmp_path, "probe-listops-flashattn", [500.0, 30.0, 30.0, 30.0], [])
    (tmp_path / "probe-pf128-standard.out").write_text(
        "fa-train: CUDA out of memory. Tried to allocate 8.00 GiB. GPU 0 has ...\n")
    (tmp_path / "probe-pf128-standard.jsonl").write_text("")
    write_run(tmp_path, "run-listops-standard", [500.0, 100.0, 100.0], [(50, 0.2), (100, 0.36)])
    write_run(tmp_path, "run-listops-flashattn", [500.0, 25.0, 25.0], [(50, 0.3), (100, 0.37)])
    write_run(tmp_path, "run-pf32-flashattn", [500.0, 20.0], [(100, 0.5)])
    (tmp_path / "audit-pf32.json").write_text(json.dumps(  # fa-lra audit --json
        {"task": "pathfinder", "size": 32, "cues": {"marker distance": 0.504, "both": 0.506,
                                                     "band 1/4 and distance": 0.615}}))
    out = tmp_path / "out"
    assert lra_table.main([str(tmp_path), "--out", str(out)]) == 0
    md = (out / "lra.md").read_text()
    lines = md.splitlines()
    probe_flash = next(l for l in lines if "ListOps" in l and "| flashattn |" in l and "64K" not in l)
    assert "| 30.0 |" in probe_flash and "4.00x" in probe_flash  # 120 / 30, start-up dropped
    assert any("Path-X" in l and "out of memory (allocating 8.00 GiB)" in l for l in lines)
    run_flash = [l for l in lines if "ListOps" in l and "| flashattn |" in l][-1]
    assert "30 of 100" in run_flash and "4.00x" in run_flash and "50: 0.300, 100: 0.370" in run_flash
    pf32 = next(l for l in lines if "Pathfinder 32" in l)
    assert "no standard run" in pf32 and pf32.endswith("| 0.615 (band 1/4 and distance) |")
    assert run_flash.endswith("| 0.370 |  |")  # ListOps: no rule
    assert (out / "lra-listops.png").stat().st_size > 0 and (out / "lra-pf32.png").stat().st_size > 0


def test_decode_plot_summary(tmp_path):
    def rec(method, layout, ms, of_copy):
        return dict(method=method, heads_q=32, heads_k=8, batch=8, cache=8192, layout=layout, head_dim=128,
                    dtype="bf16", kv_bytes=1, ms=ms, of_copy=of_copy)
    records = [rec("flashattn", "contiguous", 0.100, 0.80), rec("sdpa-cudnn", "contiguous", 0.090, 0.89),
               rec("sdpa-flash", "contiguous", 0.120, 0.67), rec("flashattn", "paged16", 0.125, 0.64),
               rec("flashattn", "paged64", 0.104, 0.77), rec("flashinfer", "paged16", None, None),
               rec("flashattn", "contiguous-nhd", 0.099, 0.81)]  # plotted, not in the summary
    (tmp_path / "decode.json").write_text(json.dumps({"meta": {"gpu": "test", "torch": "x", "cuda": "x", "date": "2026-01-01", "commit": "abc1234", "copy_gbs": 3000.0}, "records": records}))
    assert decode_plot.main([str(tmp_path)]) in (0, None)
    summary = (tmp_path / "decode-summary.md").read_text()
    row = next(l for l in summary.splitlines() if l.startswith("| 32/8"))
    # of copy: ours, cuDNN, FA2; cuDNN time / ours = 0.090 / 0.100;
    # contiguous / paged: 0.100 / 0.125 and 0.100 / 0.104
    assert row == "| 32/8 | 8 | 8K | 0.80 | 0.89 | 0.67 | 0.90 | 0.80 | 0.96 |"
    assert (tmp_path / "decode.png").stat().st_size > 0 and (tmp_path / "decode-paged.png").stat().st_size > 0


def test_decode_plot_flashinfer_best_of_two(tmp_path):
    def rec(method, layout, ms):
        return dict(method=method, heads_q=32, heads_k=8, batch=1, cache=1024, layout=layout, head_dim=128,
                    dtype="bf16", kv_bytes=1, ms=ms, of_copy=None if ms is None else 0.5)
    records = [rec("flashattn", "contiguous", 0.020), rec("flashattn", "paged16", 0.025),
               rec("flashattn", "paged64", 0.026), rec("flashinfer", "paged16", 0.0125),
               rec("flashinfer-tc", "paged16", 0.0100), rec("flashinfer", "paged64", 0.013),
               rec("flashinfer-tc", "paged64", None)]
    (tmp_path / "decode.json").write_text(json.dumps({"meta": {"gpu": "test", "torch": "x", "cuda": "x", "date": "2026-01-01", "commit": "abc1234", "copy_gbs": 3000.0}, "records": records}))
    assert decode_plot.main([str(tmp_path)]) in (0, None)
    row = next(l for l in (tmp_path / "decode-summary.md").read_text().splitlines() if l.startswith("| 32/8"))
    # FlashInfer / ours: the faster FlashInfer kernel, 0.0100 / 0.025 at page 16; 0.013 / 0.026 at 64 (tc n/a)
    assert row.endswith("| 0.40 | 0.50 |"), row
