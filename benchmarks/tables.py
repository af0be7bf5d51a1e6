"""Markdown tables of benchmarks/attention_bench.py JSON (written next to
every JSON it saves; benchmarks/hopper_table.py prints the hopper one).

  markdown(data) -> str: the table(s) of one run, chosen by its setting:
    hopper  one row per problem: TFLOPS forward / backward / forward +
            backward of each method, and ours / cuDNN for each pass against
            issue 4's bars (forward >= 0.9x, backward >= 0.85x), and ours /
            FA4 (FlashAttention-4, method fa4) when it is in the run;
    sparse  per (head_dim, seqlen): dense flashattn (automatic kernels and
            sm80), then block-sparse flashattn and FlexAttention with the
            same block lists at each (pattern, density), with the sparse /
            dense and FlexAttention / ours time ratios;
    others  per (dtype, head_dim, mask): milliseconds forward / backward /
            forward + backward of every method against seqlen, the peak
            extra memory, and each peer's forward + backward time divided by
            flashattn's.
A cell is "OOM" (out of memory), "n/a" (the method cannot express the
problem; the JSON has the reason) or "-" (not run).
"""
from collections import OrderedDict

FWD_BAR, BWD_BAR = 0.9, 0.85
PASSES = ("fwd", "bwd", "fwd_bwd")


def header(data):
    env, cfg = data.get("environment", {}), data.get("config", {})
    where = env.get("gpu") or env.get("cpu") or "?"
    versions = f"torch {env.get('torch')}"
    if env.get("cuda"):
        versions += f", CUDA {env.get('cuda')}, cuDNN {env.get('cudnn')}, driver {env.get('driver')}"
    timing = cfg.get("timing", "call")
    how = ("forward, backward (autograd.grad on one forward's graph, retain_graph) and forward + backward "
           "timed in loops of their own" if timing == "separate" else
           "forward, backward (autograd.grad) and forward + backward: medians over the same training-style calls")
    return (f"{where}; {versions}; commit {str(env.get('commit'))[:12]}; {env.get('date', '')}; "
            f"flashattn {env.get('flashattn_path') or 'not installed'}.\n\n"
            f"Setting {data.get('setting')}: {how}; CUDA events, median of up to {cfg.get('repeats')} samples "
            f"after {cfg.get('warmup')} warm-up calls (perf_counter on a CPU; records: samples), every method through the same "
            f"timing code, flashattn through its PyTorch op.")


def status_cell(r):
    if r is None:
        return "-"
    return {"oom": "OOM", "unsupported": "n/a"}.get(r["status"], r["status"])


def triple(r, key):
    """'a / b / c' of the three passes, or a status cell."""
    if r is None or r["status"] != "ok" or r.get(f"fwd_{key}") is None:
        return status_cell(r)
    def fmt(x):
        return f"{x:.0f}" if key == "tflops" and x >= 10 else f"{x:.3g}"
    return " / ".join(fmt(r[f"{p}_{key}"]) for p in PASSES)


def index(results):
    by = OrderedDict()
    for r in results:
        key = (r.get("dtype"), r["head_dim"], r["causal"], r["seqlen"])
        by.setdefault(key, {})[(r["method"], r.get("pattern"), r.get("density"))] = r
    return by


def label(dtype, d, causal, s):
    return f"{dtype or '?'}, d {d}, {'causal' if causal else 'non-causal'}, {s}"


# ------------------------------------------------------------- hopper ---

def ours_method(results):
    """The flashattn column the ratios use: the Hopper kernels if they ran,
    else the automatic choice, else sm80."""
    ok = {r["method"] for r in results if r["status"] == "ok"}
    present = {r["method"] for r in results}
    for pool in (ok, present):
        for m in ("flashattn-sm90", "flashattn", "flashattn-sm80"):
            if m in pool:
                return m
    return None


# Column names of methods that have a shorter one.
DISPLAY = {"fa4": "FA4"}


def speedups(a, c, bars=(None, None, None)):
    """c's time over a's for each pass ('1.10x': a is 1.1 times as fast),
    against the bars where given; '-' unless both ran."""
    if not (a and c and a["status"] == "ok" and c["status"] == "ok"):
        return ["-", "-", "-"]
    out = []
    for p, bar in zip(PASSES, bars):
        x = c[f"{p}_ms"] / a[f"{p}_ms"]
        out.append(f"{x:.2f}x" + ("" if bar is None else " (bar met)" if x >= bar else " (bar missed)"))
    return out


def hopper_md(data):
    results = data["results"]
    methods = list(OrderedDict.fromkeys(r["method"] for r in results))
    ours = ours_method(results)
    fa4 = "fa4" in methods
    what = f"{ours}'s over sdpa-cudnn's, against the bars (forward >= {FWD_BAR}x, backward >= {BWD_BAR}x)"
    if fa4:
        what += f"; then {ours}'s over FlashAttention-4's (FA4: flash-attn-4's flash_attn.cute)"
    title = "flashattn against PyTorch's SDPA backends" + (" and FlashAttention-4" if fa4 else "")
    head = f" | {ours} / cuDNN fwd | bwd | fwd+bwd |" + (f" {ours} / FA4 fwd | bwd | fwd+bwd |" if fa4 else "")
    lines = [f"# Dense attention: {title}", "", header(data) + fa4_versions(results), "",
             "TFLOPS forward / backward / forward + backward (4 b h s^2 d forward, halved when causal, 2.5x "
             f"backward); the ratio columns (time of the other over time of ours, > 1: ours faster): {what}.", "",
             "| dtype, head_dim, mask, seqlen | " + " | ".join(DISPLAY.get(x, x) for x in methods) + head,
             "| --- | " + " | ".join("---:" for _ in methods) + " | ---: | ---: | ---: |" + (" ---: | ---: | ---: |"
                                                                                      if fa4 else "")]
    for (dtype, d, causal, s), m in index(results).items():
        cells = [triple(m.get((x, None, None)), "tflops") for x in methods]
        a = m.get((ours, None, None))
        ratio = speedups(a, m.get(("sdpa-cudnn", None, None)), (FWD_BAR, BWD_BAR, None))
        if fa4:
            ratio += speedups(a, m.get(("fa4", None, None)))
        lines.append(f"| {label(dtype, d, causal, s)} | " + " | ".join(cells) + " | " + " | ".join(ratio) + " |")
    notes = sync_notes(results) + fa4_notes(results)
    return "\n".join(lines + notes) + "\n"


def fa4_versions(results):
    versions = sorted({r["fa4_version"] for r in results if r.get("fa4_version")})
    return f" FlashAttention-4 {', '.join(versions)}." if versions else ""


def fa4_notes(results):
    """Why FA4 did not run where it did not (its import, an unsupported row)."""
    why = OrderedDict()
    for r in results:
        if r["method"] == "fa4" and r["status"] != "ok":
            why.setdefault(r.get("reason") or r["status"], []).append(
                label(r.get("dtype"), r["head_dim"], r["causal"], r["seqlen"]))
    return (["", "FA4 did not run:"] + [f"- {', '.join(rows)}: {reason}" for reason, rows in why.items()]) if why else []


def sync_notes(results):
    bad = [r for r in results if r.get("host_syncs")]
    if not bad:
        return ["", "No host synchronisation in any timed call (torch.cuda.set_sync_debug_mode; GPU runs only)."]
    return ["", "Host synchronisations in timed calls (torch.cuda.set_sync_debug_mode):"] + [
        f"- {r['method']} {label(r.get('dtype'), r['head_dim'], r['causal'], r['seqlen'])}: {r['host_syncs']}"
        for r in bad]


# ------------------------------------------------------------- sparse ---

def ratio3(a, b):
    """a's time over b's, per pass."""
    if not a or not b or a["status"] != "ok" or b["status"] != "ok":
        return "-"
    return " / ".join(f"{a[f'{p}_ms'] / b[f'{p}_ms']:.2f}" for p in PASSES)


def sparse_md(data):
    results = data["results"]
    lines = ["# Block-sparse attention against density", "", header(data), "",
             "Milliseconds forward / backward / forward + backward. flashattn-sparse and flex-sparse get the same "
             "block lists (built once); sparse / dense: block-sparse flashattn's time over dense flashattn's "
             "(automatic kernels: Hopper on an H100, which block-sparse takes too) and over dense "
             "flashattn-sm80's (the portable family); time in proportion to density would equal the kept share. "
             "flex / ours: FlexAttention's time over block-sparse flashattn's (> 1: ours faster)."]
    for (dtype, d, causal, s), m in index(results).items():
        dense, dense80 = m.get(("flashattn", None, None)), m.get(("flashattn-sm80", None, None))
        lines += ["", f"## {label(dtype, d, causal, s)}", "",
                  f"Dense flashattn: {triple(dense, 'ms')} ms; flashattn-sm80: {triple(dense80, 'ms')} ms.", "",
                  "| pattern | density | kept share | flashattn-sparse ms | sparse / dense | sparse / dense sm80 "
                  "| flex-sparse ms | flex / ours |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        keys = sorted({(pat, den) for (meth, pat, den) in m if pat is not None}, key=lambda k: (k[0], -k[1]))
        for pat, den in keys:
            ours, flex = m.get(("flashattn-sparse", pat, den)), m.get(("flex-sparse", pat, den))
            share = next((r.get("kept_share") for r in (ours, flex) if r and r.get("kept_share") is not None), None)
            lines.append(f"| {pat} | {den:g} | {'-' if share is None else f'{share:.3f}'} | {triple(ours, 'ms')} "
                         f"| {ratio3(ours, dense)} | {ratio3(ours, dense80)} | {triple(flex, 'ms')} "
                         f"| {ratio3(flex, ours)} |")
        reasons = OrderedDict()
        for (meth, pat, den), r in m.items():
            if r["status"] == "unsupported":
                reasons.setdefault((meth, r.get("reason")), []).append(f"{pat} {den:g}" if pat else "dense")
        for (meth, reason), where in reasons.items():
            lines.append(f"\n{meth} ({', '.join(where)}): n/a, {reason}")
    return "\n".join(lines + sync_notes(results)) + "\n"


# ------------------------------------------------------------ runtime ---

def runtime_md(data):
    results = data["results"]
    lines = [f"# Attention benchmark: {data.get('setting')} setting", "", header(data)]
    groups = OrderedDict()
    for (dtype, d, causal, s), m in index(results).items():
        groups.setdefault((dtype, d, causal), OrderedDict())[s] = m
    for (dtype, d, causal), by_s in groups.items():
        cols = list(OrderedDict.fromkeys(k for m in by_s.values() for k in m))
        names = [meth if pat is None else f"{meth} {pat} {den:g}" for meth, pat, den in cols]
        padded = next((r for m in by_s.values() for r in m.values() if r.get("key_padding")), None)
        lines += ["", f"## {dtype}, head_dim {d}, {'causal' if causal else 'non-causal'}"
                  + (", key padding" if padded else ""), ""]
        via = OrderedDict()
        for m in by_s.values():
            for (meth, _, _), r in m.items():
                if r.get("padding_via"):
                    via[meth] = r["padding_via"]
        if via:
            lines += ["Padding given as: " + "; ".join(f"{k}: {v}" for k, v in via.items()) + ".", ""]
        lines += ["Milliseconds forward / backward / forward + backward:", "",
                  "| seqlen | " + " | ".join(names) + " |", "| ---: | " + " | ".join("---:" for _ in cols) + " |"]
        for s, m in by_s.items():
            lines.append(f"| {s} | " + " | ".join(triple(m.get(c), "ms") for c in cols) + " |")
        lines += ["", "Peak memory beyond the inputs during forward + backward (MiB):", "",
                  "| seqlen | " + " | ".join(names) + " |", "| ---: | " + " | ".join("---:" for _ in cols) + " |"]
        for s, m in by_s.items():
            cells = []
            for c in cols:
                r = m.get(c)
                cells.append(f"{r['peak_extra_bytes'] / 2**20:.0f}" if r and r["status"] == "ok"
                             and r.get("peak_extra_bytes") is not None else status_cell(r) if r and r["status"] != "ok"
                             else "-")
            lines.append(f"| {s} | " + " | ".join(cells) + " |")
        ours = ("flashattn", None, None)
        peers = [c for c in cols if c != ours]
        if any(ours in m for m in by_s.values()) and peers:
            lines += ["", "Each peer's time over flashattn's, forward / backward / forward + backward "
                      "(> 1: flashattn faster):", "",
                      "| seqlen | " + " | ".join(n for c, n in zip(cols, names) if c != ours) + " |",
                      "| ---: | " + " | ".join("---:" for _ in peers) + " |"]
            for s, m in by_s.items():
                lines.append(f"| {s} | " + " | ".join(ratio3(m.get(c), m.get(ours)) for c in peers) + " |")
    return "\n".join(lines + sync_notes(results)) + "\n"


def markdown(data):
    setting = data.get("setting")
    if setting == "hopper":
        return hopper_md(data)
    if setting == "sparse":
        return sparse_md(data)
    return runtime_md(data)
