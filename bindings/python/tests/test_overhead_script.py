"""bench_overhead.py runs and reports both sides (no timing assertions:
speed lives in benchmarks). Needs the C++ tool from the repository's build
folder (the README's build puts it in build/tools)."""
import os
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
TOOL = os.environ.get("FLASHATTN_OVERHEAD_TOOL",
                      os.path.join(HERE, "..", "..", "..", "build", "tools", "flashattn-overhead"))


@pytest.mark.skipif(not os.path.exists(TOOL), reason=f"no {TOOL} (build the repository first)")
def test_overhead_script_reports_both_sides():
    sys.path.insert(0, os.path.join(HERE, ".."))
    import bench_overhead
    out = bench_overhead.main(["--tool", TOOL, "--calls", "100", "--repeats", "1"])
    for key in ("raw_cpp_us", "torch_op_us", "flash_attn_func_us"):
        assert out[key] > 0, key
    assert out["op_overhead_us"] == pytest.approx(out["torch_op_us"] - out["raw_cpp_us"])


BENCH = os.path.join(os.path.dirname(TOOL), "flashattn-bench")


@pytest.mark.skipif(not os.path.exists(BENCH), reason=f"no {BENCH} (build the repository first)")
def test_bench_vs_tool_reports_both_sides():
    sys.path.insert(0, os.path.join(HERE, ".."))
    import bench_vs_tool
    out = bench_vs_tool.main(["--tool", BENCH, "--shapes", "1,64,2,32,0;1,48,2,16,1", "--repeats", "2",
                              "--warmup", "1"])
    assert [(r["seqlen"], r["causal"]) for r in out["results"]] == [(64, False), (48, True)]
    for r in out["results"]:
        for key in ("tool_fwd_ms", "tool_bwd_ms", "python_fwd_ms", "python_bwd_ms"):
            assert r[key] > 0, key
        assert r["fwd_ratio"] == pytest.approx(r["python_fwd_ms"] / r["tool_fwd_ms"])
