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
import timing  # noqa: E402


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
        assert r["attended_pairs"] == (full if not r["causal"] else full / 2)  # the standard formula's half
    assert plot.main([str(path), "--out", str(tmp_path)]) == 0
    assert (tmp_path / "modern-tflops.png").stat().st_size > 0


def test_sparse_setting_runs_each_density_and_pattern_and_plots(tmp_path):
    path = tmp_path / "sparse.json"
    rc = attention_bench.main(["--device", "cpu", "--setting", "sparse", "--seqlens", "256", "--head-dims", "32",
                               "--heads", "2", "--block", "32", "--density", "0.25,0.5", "--dtype", "float32",
                               "--repeats", "5", "--warmup", "2", "--max-seconds", "1e-9", "--json", str(path)])
    assert rc == 0
    data = json.loads(path.read_text())
    sparse = records(data, "flashattn-sparse")
    assert [(r["pattern"], r["density"]) for r in sparse] == [("random", 0.25), ("butterfly", 0.25),
                                                             ("random", 0.5), ("butterfly", 0.5)]
    assert all(r["status"] == "ok" for r in sparse)
    dense = records(data, "flashattn")[0]
    for r in sparse:
        # kept share = density exactly (8 key blocks), and pairs follow
        assert r["kept_share"] == r["density"]
        assert r["attended_pairs"] == pytest.approx(r["density"] * dense["attended_pairs"])
    # --max-seconds stops each loop after the minimum of three samples.
    assert all(r["samples"] == 3 for r in sparse)
    # CUDA-only methods say so on the CPU, they are not run on something else.
    for m in ("flashattn-sm80", "flex-sparse"):
        assert all(r["status"] == "unsupported" and r["reason"] for r in records(data, m)), m
    table = (tmp_path / "sparse.md").read_text()
    assert "| butterfly | 0.25 | 0.250 |" in table and "| random | 0.5 | 0.500 |" in table
    assert plot.main([str(path), "--out", str(tmp_path)]) == 0
    ratios = (tmp_path / "sparse-ratios.md").read_text()
    assert "| 32 | 256 | butterfly | 0.25 |" in ratios and "| 32 | 256 | random | 0.5 |" in ratios
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


# ------------------------------------------------ the timing discipline ---

def problem(seqlen=128, head_dim=32, causal=False, padding=0, dropout=0.0, batch=2, heads=2, density=0.25,
            pattern="random", block=32, dtype="float32"):
    import argparse
    import torch
    args = argparse.Namespace(batch=batch, tokens=0, heads=heads, dropout=dropout, padding=padding, density=[density],
                              patterns=[pattern], block=block, seed=0)
    return attention_bench.Problem(args, seqlen, head_dim, causal, dtype, torch.device("cpu"),
                                   torch.Generator().manual_seed(0))


def test_padded_batch_is_packed_once_and_every_form_computes_the_same_attention():
    """flashattn's varlen op on the packed batch, SDPA on nested jagged
    tensors of the same packed batch and SDPA with a key mask on the padded
    batch compute the same attention on the real tokens."""
    import torch
    p = problem(seqlen=96, padding=20, batch=3)
    lens = p.lens.tolist()
    assert p.packed[0].shape == (sum(lens), p.heads, p.head_dim)
    assert p.cu_seqlens.dtype == torch.int32 and p.cu_seqlens.tolist()[-1] == sum(lens)
    assert p.max_len == max(lens) and isinstance(p.max_len, int)
    ours = attention_bench.build("flashattn", p)
    njt = attention_bench.build("sdpa-math-njt", p)
    masked = attention_bench.build("sdpa-math", p)
    assert all(a is b for a, b in zip(ours.inputs, njt.inputs))  # the same packed tensors, made once
    assert ours.pairs == njt.pairs == masked.pairs == sum(n * n for n in lens)
    a = ours.fn(*ours.inputs)
    b = njt.fn(*njt.inputs)
    full = masked.fn(p.q, p.k, p.v)
    valid = torch.arange(p.seqlen)[None, :] < p.lens[:, None]
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(a, full[valid], atol=1e-5, rtol=1e-5)


def fake_args(**kw):
    import argparse
    base = dict(warmup=2, repeats=4, max_seconds=0.0, queue_ahead_ms=5.0)
    base.update(kw)
    return argparse.Namespace(**base)


def counting_case():
    import torch
    calls = dict(fwd=0)

    def fn(q, k, v):
        calls["fwd"] += 1
        return q * k + v
    x = [torch.randn(2, 3, requires_grad=True) for _ in range(3)]
    return fn, x, torch.ones(2, 3), calls


def test_backward_returns_gradients_and_never_accumulates(monkeypatch):
    import torch
    monkeypatch.setattr(timing, "WARM_SECONDS", 0.0)
    for mode in ("call", "separate"):
        fn, inputs, dout, calls = counting_case()
        seen = []
        real = torch.autograd.grad

        def spy(*a, **kw):
            seen.append(kw.get("retain_graph", False))
            return real(*a, **kw)
        torch.autograd.grad = spy
        try:
            times, samples, short, syncs, _ = attention_bench.time_method(fn, inputs, dout, mode, fake_args(),
                                                                          torch.device("cpu"))
        finally:
            torch.autograd.grad = real
        assert all(x.grad is None for x in inputs), mode  # nothing accumulated
        assert len(times) == 3 and all(t > 0 for t in times)
        if mode == "call":
            # warm-up + samples, each one forward and one backward
            assert calls["fwd"] == 2 + 4 and seen == [False] * 6 and samples == dict(fwd=4, bwd=4, fwd_bwd=4)
        else:
            # forward loop, one forward for the backward loop's graph, forward + backward loop
            assert calls["fwd"] == 6 + 1 + 6
            assert seen == [True] * 6 + [False] * 6  # backward loop on one graph (retain_graph), then fwd + bwd
            assert samples == dict(fwd=4, bwd=4, fwd_bwd=4)
        assert syncs == 0 and short == 0


def test_host_synchronisations_in_timed_calls_are_counted(monkeypatch):
    """On a GPU the timed calls run under set_sync_debug_mode("warn"); here
    the mode is mocked and the method warns as torch would."""
    import warnings
    import torch
    modes = []
    monkeypatch.setattr(timing, "WARM_SECONDS", 0.0)
    monkeypatch.setattr(torch.cuda, "set_sync_debug_mode", lambda m: modes.append(m))
    monkeypatch.setattr(attention_bench.SyncWatch, "__init__", lambda self, device: setattr(self, "cuda", True))
    fn, inputs, dout, calls = counting_case()

    def syncing(*x):
        if modes and modes[-1] == "warn":
            warnings.warn(attention_bench.SYNC_WARNING)  # e.g. a .item() inside the call
        return fn(*x)
    _, _, _, syncs, _ = attention_bench.time_method(syncing, inputs, dout, "call", fake_args(), torch.device("cpu"))
    assert syncs == 4  # the 4 timed calls, not the warm-up
    assert modes[-1] == 0 and modes.count("warn") == 6
    _, _, _, syncs, _ = attention_bench.time_method(syncing, inputs, dout, "separate", fake_args(), torch.device("cpu"))
    assert syncs == 4 + 4  # forward loop and forward + backward loop (the backward loop does not call fn timed)


def test_kernel_choice_is_set_around_the_whole_method(monkeypatch):
    """flashattn-sm80 / -sm90 set FLASHATTN_CUDA_KERNELS for the method's
    forward and backward (here on a mocked case) and restore it after."""
    import os
    import torch
    seen = []

    class Probe(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            seen.append(("fwd", os.environ.get("FLASHATTN_CUDA_KERNELS")))
            return x * 2

        @staticmethod
        def backward(ctx, g):
            seen.append(("bwd", os.environ.get("FLASHATTN_CUDA_KERNELS")))
            return g * 2

    def fake_build(method, p):
        return attention_bench.Case(lambda q, k, v: Probe.apply(q) + k + v, 1.0, env={"FLASHATTN_CUDA_KERNELS": "sm80"})
    monkeypatch.setattr(attention_bench, "build", fake_build)
    monkeypatch.delenv("FLASHATTN_CUDA_KERNELS", raising=False)
    rec = attention_bench.run_method("flashattn-sm80", problem(seqlen=32), fake_args(timing="separate"))
    assert rec["status"] == "ok" and rec["kernels"] == "sm80" and rec["timing"] == "separate"
    assert seen and all(v == "sm80" for _, v in seen) and {"fwd", "bwd"} <= {k for k, _ in seen}
    assert "FLASHATTN_CUDA_KERNELS" not in os.environ


def test_cuda_kernel_methods_are_unsupported_on_the_cpu():
    for m in ("flashattn-sm80", "flashattn-sm90"):
        rec = attention_bench.run_method(m, problem(seqlen=32), fake_args(timing="call"))
        assert rec["status"] == "unsupported" and "CUDA" in rec["reason"], rec


def test_butterfly_pattern():
    import torch
    n = 128
    for density, width in ((1 / 16, 1), (1 / 8, 4), (1 / 4, 8), (1 / 2, 16)):
        keep = attention_bench.block_pattern("butterfly", n, density, False, seed=0)
        assert keep.sum() == density * n * n
        assert torch.equal(keep, keep.T) and keep.diagonal().all()
        assert (keep.sum(1) == density * n).all()  # the same count in every row
    plain = attention_bench.block_pattern("butterfly", n, 1 / 16, False, seed=0)
    assert sorted(plain[0].nonzero().flatten().tolist()) == [0, 1, 2, 4, 8, 16, 32, 64]  # strides 2^k
    causal = attention_bench.block_pattern("butterfly", 8, 0.5, True, seed=0)
    assert torch.equal(causal, causal.tril()) and causal.diagonal().all()
    with pytest.raises(attention_bench.Unsupported):
        attention_bench.block_pattern("butterfly", 12, 0.25, False, seed=0)
    rnd = attention_bench.block_pattern("random", 16, 0.25, False, seed=3)
    assert rnd.diagonal().all() and (rnd.sum(1) == 4).all()


@pytest.mark.parametrize("pattern", ["random", "butterfly"])
@pytest.mark.parametrize("causal", [False, True])
def test_flex_and_flashattn_get_the_same_blocks_and_compute_the_same_attention(pattern, causal):
    """The BlockMask FlexAttention gets (flex_block_mask) holds exactly the
    block lists of flashattn-sparse, and both compute the masked attention
    (FlexAttention eagerly here: compiled it needs CUDA in this harness)."""
    import torch
    import torch.nn.functional as F
    flex_attention = pytest.importorskip("torch.nn.attention.flex_attention").flex_attention
    p = problem(seqlen=256, batch=1, causal=causal, pattern=pattern)
    pc, pi, fc, fi, keep = p.block_lists()
    assert p.block_lists()[0] is pc  # built once
    bm = attention_bench.flex_block_mask(p)
    assert torch.equal(bm.to_dense()[0, 0].bool(), keep)
    elem = keep.repeat_interleave(32, 0).repeat_interleave(32, 1)
    if causal:
        elem &= torch.ones(256, 256, dtype=torch.bool).tril()
    q, k, v = (x.transpose(1, 2) for x in (p.q, p.k, p.v))
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=elem).transpose(1, 2)
    ours = attention_bench.build("flashattn-sparse", p)
    torch.testing.assert_close(ours.fn(p.q, p.k, p.v), ref, atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        flex = flex_attention(q, k, v, block_mask=bm).transpose(1, 2)
    torch.testing.assert_close(flex, ref, atol=1e-5, rtol=1e-5)
    # causal: the diagonal's pairs count half, the standard formula's convention (s^2 / 2, not s (s + 1) / 2)
    assert ours.pairs == pytest.approx(float(elem.sum()) - (256 / 2 if causal else 0))


def test_hopper_setting_rows_separate_timing_and_require(tmp_path):
    out = tmp_path / "hopper"
    argv = ["--device", "cpu", "--setting", "hopper", "--rows", "32,64,0;32,64,1;32,128,0,fp32", "--dtype", "float32",
            "--tokens", "128", "--methods", "flashattn-sm90,flashattn,sdpa-math,sdpa-cudnn", "--repeats", "2",
            "--warmup", "1", "--out", str(out)]
    assert attention_bench.main(argv) == 0
    data = json.loads((out / "hopper.json").read_text())
    assert data["config"]["timing"] == "separate"
    ours = records(data, "flashattn")
    assert [(r["head_dim"], r["causal"], r["seqlen"], r["dtype"]) for r in ours] == [
        (32, False, 64, "float32"), (32, True, 64, "float32"), (32, False, 128, "float32")]
    for r in ours:
        assert r["status"] == "ok" and r["samples_by_pass"] == dict(fwd=2, bwd=2, fwd_bwd=2)
        assert r["batch"] == 128 // r["seqlen"] and r["heads"] == 2048 // 32
        assert r["bwd_tflops"] == pytest.approx(2.5 * r["fwd_tflops"] * r["fwd_ms"] / r["bwd_ms"])
    table = (out / "hopper.md").read_text()
    assert "| float32, d 32, causal, 64 | n/a |" in table
    # flashattn-sm90 cannot run on the CPU: --require makes that an error.
    assert attention_bench.main(argv + ["--require", "flashattn-sm90"]) == 1
    assert attention_bench.main(argv + ["--require", "flashattn"]) == 0


def test_rows_flag_is_checked():
    for bad in ("64,1024", "64,1024,2", "64,1024,0,int8", ""):
        with pytest.raises(SystemExit):
            attention_bench.main(["--device", "cpu", "--setting", "hopper", "--rows", bad, "--json", os.devnull])
    with pytest.raises(SystemExit):  # --require names a method that does not run
        attention_bench.main(["--device", "cpu", "--setting", "hopper", "--methods", "flashattn", "--require",
                              "sdpa-cudnn", "--json", os.devnull])


def test_hopper_markdown_ratios_and_bars():
    import tables

    def rec(method, d, causal, s, f, b, fb, dtype="bfloat16", status="ok"):
        r = dict(method=method, head_dim=d, causal=causal, seqlen=s, dtype=dtype, status=status)
        if status == "ok":
            r.update(fwd_ms=1 / f, bwd_ms=1 / b, fwd_bwd_ms=1 / fb, fwd_tflops=f * 100, bwd_tflops=b * 100,
                     fwd_bwd_tflops=fb * 100)
        return r
    data = dict(setting="hopper", environment=dict(gpu="G"), config=dict(timing="separate", repeats=20, warmup=3),
                results=[rec("flashattn-sm90", 128, False, 8192, 6.0, 5.0, 5.3),
                         rec("sdpa-cudnn", 128, False, 8192, 6.5, 5.8, 6.0),
                         rec("sdpa-flash", 128, False, 8192, 0, 0, 0, status="unsupported"),
                         rec("flashattn-sm90", 128, True, 1024, 4.0, 2.0, 2.5),
                         rec("sdpa-cudnn", 128, True, 1024, 5.0, 2.5, 3.0)])
    md = tables.markdown(data)
    # 6.0 / 6.5 = 0.92 meets the forward bar, 5.0 / 5.8 = 0.86 the backward's.
    assert ("| bfloat16, d 128, non-causal, 8192 | 600 / 500 / 530 | 650 / 580 / 600 | n/a | 0.92x (bar met) "
            "| 0.86x (bar met) | 0.88x |") in md
    assert "| bfloat16, d 128, causal, 1024 | 400 / 200 / 250 | 500 / 250 / 300 | - | 0.80x (bar missed) " \
           "| 0.80x (bar missed) | 0.83x |" in md


def test_commits_table_takes_the_median_over_rounds(tmp_path):
    import commits_table
    rounds = tmp_path / "rounds"
    rounds.mkdir()
    for name, ms in (("aaa", [2.0, 1.0, 3.0]), ("tree", [1.0, 1.0, 1.0])):
        for i, t in enumerate(ms, 1):
            r = dict(method="flashattn", dtype="bfloat16", head_dim=128, causal=False, seqlen=8192, status="ok",
                     fwd_ms=t, bwd_ms=2 * t, fwd_bwd_ms=3 * t, fwd_tflops=100 / t, bwd_tflops=250 / (2 * t),
                     fwd_bwd_tflops=350 / (3 * t))
            (rounds / f"{name}-r{i}.json").write_text(json.dumps(dict(environment=dict(gpu="G"), results=[r])))
    out_json, out_md = tmp_path / "c.json", tmp_path / "c.md"
    assert commits_table.main([str(out_json), str(out_md), str(rounds / "aaa"), str(rounds / "tree")]) == 0
    rows = {r["commit"]: r for r in json.loads(out_json.read_text())["results"]}
    assert rows["aaa"]["fwd_ms"] == 2.0 and rows["aaa"]["rounds"] == 3 and rows["aaa"]["fwd_ms_rounds"] == [2.0, 1.0, 3.0]
    assert "| bfloat16, d 128, non-causal, 8192 | 50 / 62 / 58 | 100 / 125 / 117 (2.000 / 2.000 / 2.000) |" \
        in out_md.read_text()
    # a commit without rounds, or a failed round, is an error
    assert commits_table.main([str(out_json), str(out_md), str(rounds / "aaa"), str(rounds / "nope")]) == 1


def test_bench_hopper_script_off_a_gpu(tmp_path):
    """scripts/bench-hopper end to end on the CPU (FLASHATTN_BENCH_DEVICE):
    hopper.json, hopper.md, table.md; exit 1 when flashattn-sm90 (CUDA
    only) did not run, 0 when the required methods ran."""
    import subprocess
    repo = os.path.dirname(os.path.dirname(HERE))
    script = os.path.join(repo, "scripts", "bench-hopper")
    env = dict(os.environ, PYTHON=sys.executable, FLASHATTN_BENCH_DEVICE="cpu", FLASHATTN_BENCH_REPEATS="2",
               FLASHATTN_BENCH_ROWS="32,64,0,fp32", FLASHATTN_BENCH_BUILD=str(tmp_path / "no-build"))
    run = subprocess.run([script, str(tmp_path / "a")], env=env, capture_output=True, text=True)
    assert run.returncode == 1, run.stdout + run.stderr
    assert "| float32, d 32, non-causal, 64 | n/a |" in (tmp_path / "a" / "table.md").read_text()
    env["FLASHATTN_BENCH_METHODS"] = "flashattn,sdpa-math"
    run = subprocess.run([script, str(tmp_path / "b")], env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    data = json.loads((tmp_path / "b" / "hopper.json").read_text())
    assert {r["method"] for r in data["results"] if r["status"] == "ok"} == {"flashattn", "sdpa-math"}
    assert (tmp_path / "b" / "bench-hopper.log").stat().st_size > 0


# ------------------------------------------------- FlashAttention-4 (fa4) ---

def fake_fa4(monkeypatch, tmp_path=None, fn=None):
    """A stand-in flash_attn.cute (flash-attn-4's package) in sys.modules:
    flash_attn_func records its calls and returns (out, lse) as FA4 does."""
    import types
    calls = []

    def flash_attn_func(q, k, v, softmax_scale=None, causal=False, **kw):
        calls.append(dict(causal=causal, softmax_scale=softmax_scale, **kw))
        if fn is not None:
            return fn(q, k, v)
        return q + k + v, None
    pkg, cute = types.ModuleType("flash_attn"), types.ModuleType("flash_attn.cute")
    cute.flash_attn_func = flash_attn_func
    pkg.cute = cute
    monkeypatch.setitem(sys.modules, "flash_attn", pkg)
    monkeypatch.setitem(sys.modules, "flash_attn.cute", cute)
    monkeypatch.setattr(attention_bench, "_FA4", {})
    return calls


def cuda_problem(head_dim=128, causal=True, dtype="bfloat16", dropout=0.0, lens=None):
    """What build_fa4 reads of a problem, on a pretend CUDA device."""
    import types
    import torch
    q = types.SimpleNamespace(device=torch.device("cuda"))
    return types.SimpleNamespace(q=q, dtype=getattr(torch, dtype), dropout=dropout, lens=lens, head_dim=head_dim,
                                 causal=causal, pairs=lambda: 123.0)


def test_fa4_is_a_method_and_not_importable_is_na(monkeypatch):
    assert "fa4" in attention_bench.KNOWN_METHODS
    monkeypatch.setattr(attention_bench, "_FA4", {})
    monkeypatch.setitem(sys.modules, "flash_attn", None)  # import flash_attn... raises ImportError
    monkeypatch.setitem(sys.modules, "flash_attn.cute", None)
    rec = attention_bench.run_method("fa4", problem(seqlen=32, dtype="bfloat16"), fake_args(timing="separate"))
    assert rec["status"] == "unsupported" and "FlashAttention-4 is not importable" in rec["reason"], rec
    assert "ImportError" in rec["reason"] or "ModuleNotFoundError" in rec["reason"]
    # A whole hopper run with fa4 goes on: its rows say n/a with the reason, the others are measured.
    monkeypatch.setattr(attention_bench, "_FA4", {})
    assert attention_bench.main(["--device", "cpu", "--setting", "hopper", "--rows", "32,64,0", "--dtype", "float32",
                                 "--tokens", "128", "--methods", "flashattn,fa4", "--repeats", "1", "--warmup", "0",
                                 "--json", os.devnull]) == 0


def test_fa4_importable_but_no_cuda_is_na(monkeypatch):
    calls = fake_fa4(monkeypatch)
    rec = attention_bench.run_method("fa4", problem(seqlen=32, dtype="bfloat16"), fake_args(timing="separate"))
    assert rec["status"] == "unsupported" and "CUDA only" in rec["reason"], rec
    assert calls == []


def test_fa4_case_calls_the_public_api_and_says_what_it_cannot_run(monkeypatch):
    import torch
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    calls = fake_fa4(monkeypatch)
    case = attention_bench.build("fa4", cuda_problem(causal=True))
    assert case.pairs == 123.0 and case.notes["fa4_api"] == "flash_attn.cute.flash_attn_func"
    q, k, v = (torch.ones(1, 4, 2, 8) for _ in range(3))
    out = case.fn(q, k, v)
    assert torch.equal(out, 3 * q)  # out of (out, lse)
    assert calls == [dict(causal=True, softmax_scale=None)]  # its default scale, 1 / sqrt(d), as every method
    for p, why in ((cuda_problem(dtype="float32"), "fp16 / bf16"), (cuda_problem(dropout=0.1), "dropout"),
                   (cuda_problem(head_dim=512), "head_dim"), (cuda_problem(head_dim=36), "head_dim"),
                   (cuda_problem(lens=[1]), "padding")):
        with pytest.raises(attention_bench.Unsupported, match=why):
            attention_bench.build("fa4", p)

    def refuses(q, k, v):
        raise AssertionError("(head_dim, head_dim_v)=(8, 8) is not supported on SM90.")
    fake_fa4(monkeypatch, fn=refuses)
    case = attention_bench.build("fa4", cuda_problem())
    # FA4 says "not supported" with asserts: run_method records NotImplementedError as unsupported, with the reason.
    with pytest.raises(NotImplementedError, match="not supported on SM90"):
        case.fn(q, k, v)


def test_fa4_timed_by_the_same_function(monkeypatch):
    """A mocked FA4 Case goes through run_method and time_method like every
    method (forward, backward on one graph, forward + backward)."""
    seen = []
    real = attention_bench.time_method

    def spy(fn, inputs, dout, mode, args, device):
        seen.append(mode)
        return real(fn, inputs, dout, mode, args, device)
    monkeypatch.setattr(attention_bench, "time_method", spy)
    monkeypatch.setattr(timing, "WARM_SECONDS", 0.0)
    calls = fake_fa4(monkeypatch, fn=lambda q, k, v: (q * k + v, None))
    monkeypatch.setattr(attention_bench, "build_fa4", lambda p: attention_bench.Case(
        lambda q, k, v: sys.modules["flash_attn.cute"].flash_attn_func(q, k, v, causal=p.causal)[0], p.pairs(),
        notes=dict(fa4_version="4.0.0b40")))
    rec = attention_bench.run_method("fa4", problem(seqlen=32), fake_args(timing="separate"))
    assert rec["status"] == "ok" and seen == ["separate"] and rec["fa4_version"] == "4.0.0b40", rec
    assert rec["samples_by_pass"] == dict(fwd=4, bwd=4, fwd_bwd=4) and len(calls) > 12


def test_hopper_markdown_has_fa4_column_and_ratio():
    import tables

    def rec(method, f, b, fb, status="ok", **kw):
        r = dict(method=method, head_dim=128, causal=False, seqlen=8192, dtype="bfloat16", status=status, **kw)
        if status == "ok":
            r.update(fwd_ms=1 / f, bwd_ms=1 / b, fwd_bwd_ms=1 / fb, fwd_tflops=f * 100, bwd_tflops=b * 100,
                     fwd_bwd_tflops=fb * 100)
        return r
    data = dict(setting="hopper", environment=dict(gpu="G"), config=dict(timing="separate", repeats=20, warmup=3),
                results=[rec("flashattn-sm90", 6.0, 5.0, 5.3), rec("sdpa-cudnn", 6.5, 5.8, 6.0),
                         rec("fa4", 6.6, 5.5, 5.3, fa4_version="4.0.0b40")])
    md = tables.markdown(data)
    assert "| flashattn-sm90 | sdpa-cudnn | FA4 | flashattn-sm90 / cuDNN fwd | bwd | fwd+bwd | " \
           "flashattn-sm90 / FA4 fwd | bwd | fwd+bwd |" in md
    # FA4's time over ours: 6.0 / 6.6 = 0.91, 5.0 / 5.5 = 0.91, 5.3 / 5.3 = 1.00
    assert "| 660 / 550 / 530 | 0.92x (bar met) | 0.86x (bar met) | 0.88x | 0.91x | 0.91x | 1.00x |" in md
    assert "FlashAttention-4 4.0.0b40." in md
    data["results"][2] = rec("fa4", 0, 0, 0, status="unsupported", reason="FlashAttention-4 is not importable: X")
    md = tables.markdown(data)
    assert "| n/a | 0.92x (bar met) | 0.86x (bar met) | 0.88x | - | - | - |" in md
    assert "- bfloat16, d 128, non-causal, 8192: FlashAttention-4 is not importable: X" in md
    data["results"].pop()  # no fa4 in the run: no FA4 columns
    assert "FA4" not in tables.markdown(data)


def test_bench_hopper_adds_fa4_when_importable(tmp_path):
    """scripts/bench-hopper off a GPU with a stand-in flash-attn-4 on
    PYTHONPATH: fa4 joins the default methods (n/a on the CPU, with the
    reason), and without it the run goes on and says why."""
    import subprocess
    repo = os.path.dirname(os.path.dirname(HERE))
    script = os.path.join(repo, "scripts", "bench-hopper")
    site = tmp_path / "site"
    (site / "flash_attn" / "cute").mkdir(parents=True)
    (site / "flash_attn" / "cute" / "__init__.py").write_text("def flash_attn_func(q, k, v, **kw):\n    raise RuntimeError\n")
    (site / "flash_attn_4-4.0.0b40.dist-info").mkdir()
    (site / "flash_attn_4-4.0.0b40.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: flash-attn-4\nVersion: 4.0.0b40\n")
    env = dict(os.environ, PYTHON=sys.executable, FLASHATTN_BENCH_DEVICE="cpu", FLASHATTN_BENCH_REPEATS="1",
               FLASHATTN_BENCH_ROWS="32,64,0,fp32", FLASHATTN_BENCH_BUILD=str(tmp_path / "no-build"))
    env.pop("FLASHATTN_BENCH_METHODS", None)
    run = subprocess.run([script, str(tmp_path / "a")], env=dict(env, PYTHONPATH=str(site)), capture_output=True,
                         text=True)
    assert "FlashAttention-4 4.0.0b40" in run.stdout and "method fa4 added" in run.stdout, run.stdout + run.stderr
    data = json.loads((tmp_path / "a" / "hopper.json").read_text())
    fa4 = [r for r in data["results"] if r["method"] == "fa4"]
    assert len(fa4) == 1 and fa4[0]["status"] == "unsupported" and "CUDA only" in fa4[0]["reason"]
    assert "| FA4 |" in (tmp_path / "a" / "table.md").read_text()
    run = subprocess.run([script, str(tmp_path / "b")], env=dict(env, PYTHONPATH=str(tmp_path / "nothing")),
                         capture_output=True, text=True)
    assert "FlashAttention-4 is not importable, no fa4 column" in run.stdout, run.stdout + run.stderr
    data = json.loads((tmp_path / "b" / "hopper.json").read_text())
    assert "fa4" not in {r["method"] for r in data["results"]}
