"""Decode benchmark: one new token per sequence attending to a KV cache
(flashattn.flash_attn_with_kvcache, its PyTorch op) against PyTorch SDPA
(enable_gqa; cuDNN, FLASH and EFFICIENT backends, contiguous caches only)
and FlashInfer's batch decode (its CUDA-core kernel, and with
use_tensor_cores; a contiguous cache as one page a sequence) when it is
importable (on the offline GPU
machine: scripts/flashinfer-pack here, carry .whl/flashinfer, then
scripts/flashinfer-pack --install and its PYTHONPATH there).

  python benchmarks/decode_bench.py --out OUT            # OUT/decode.json, OUT/decode.md
  python benchmarks/decode_bench.py --quick --out OUT    # a small subset

bf16, head_dim 128, heads (q/kv) 32/8 and 64/8, batch 1, 8, 64, 256,
cache lengths 1K, 8K, 32K, 128K (points whose K + V exceed --max-cache-gib,
default 40, are skipped); layouts contiguous (head-major storage (b, hk, L,
d), SDPA's; flashattn reads the (b, L, hk, d) view of it), contiguous-nhd
(flash-attn's own cache layout (b, L, hk, d): one head's rows are 2 d bytes
every 2 d hk bytes, as in a page; SDPA left out, it would need a copy),
paged 16 and paged 64 ((blocks, page, hk, d), pages in random order), and,
asked for only, paged16-inorder / paged64-inorder (the same with every
sequence's pages in address order: the page table's cost without scattered
addresses).
--heads / --batches / --caches / --layouts / --methods pick a subset.
flashattn appends the new token (cache_seqlens = L - 1) and attends to L
keys; the peers attend to the same L keys (they have no append).

Decode reads every K and V byte once and does little math, so the figure of
merit is bandwidth: bytes of K and V read / time, against the
device-to-device copy bandwidth measured in the same process (a 1 GiB
tensor copied: read + write bytes / time). Timing (benchmarks/timing.py, as
every harness): CUDA events around each call, each queued behind a 2 ms GPU
busy-wait (so that host dispatch is not timed), median after a warm-up.
"""
import argparse
import json
import os
import platform
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import timing  # noqa: E402

D = 128
DTYPE = torch.bfloat16
HEADS = [(32, 8), (64, 8)]
BATCHES = [1, 8, 64, 256]
CACHES = [1024, 8192, 32768, 131072]
LAYOUTS = ["contiguous", "contiguous-nhd", "paged16", "paged64"]
DIAGNOSTIC_LAYOUTS = ["paged16-inorder", "paged64-inorder"]  # --layouts only
QUICK = dict(heads=[(32, 8)], batches=[1, 64], caches=[8192, 32768], layouts=["contiguous", "paged16"])


def time_calls(fn, warmup=3, iters=20, budget_s=0.15):
    """Median milliseconds of fn() (timing.time_call: CUDA events, each call
    queued behind a 2 ms busy-wait, so that the events time the GPU's work
    and not the host's launch latency; a call is tens of microseconds at the
    small points, about what its host dispatch costs). At most budget_s of
    wall time a loop (at least 3 samples), and no minimum warm-up time: the
    points run back to back, so the clocks are up after the first."""
    return timing.time_call(fn, torch.device("cuda"), warmup, iters, budget_s, 2.0, warm_seconds=0).seconds * 1e3


def copy_bandwidth_gbs():
    """Device-to-device copy of a 1 GiB tensor: (read + write) bytes / time."""
    n = (1 << 30) // 2
    src = torch.empty(n, dtype=torch.bfloat16, device="cuda").normal_()
    dst = torch.empty_like(src)
    ms = time_calls(lambda: dst.copy_(src), iters=20)
    del src, dst
    return 2 * (1 << 30) / (ms * 1e-3) / 1e9


METHODS = ["flashattn", "sdpa-cudnn", "sdpa-flash", "sdpa-efficient", "flashinfer", "flashinfer-tc"]


def methods_for(layout, chosen=None):
    """The methods run at a layout: SDPA on the head-major contiguous cache
    only (another layout would be a copy inside the timed call)."""
    ms = [m for m in METHODS if not m.startswith("sdpa") or layout == "contiguous"]
    return [m for m in ms if chosen is None or m in chosen]


def sdpa_fn(backend, q, k, v):
    from torch.nn.attention import SDPBackend, sdpa_kernel
    be = {"sdpa-cudnn": SDPBackend.CUDNN_ATTENTION, "sdpa-flash": SDPBackend.FLASH_ATTENTION,
          "sdpa-efficient": SDPBackend.EFFICIENT_ATTENTION}[backend]

    def fn():
        with sdpa_kernel(be):
            return F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
    return fn


def flashinfer_fn(q, k_pages, v_pages, table, L, page, layout="NHD", tensor_cores=False):
    """FlashInfer's batch decode over pages. A contiguous cache is one page of
    L keys a sequence in FlashInfer's HND layout ((b, hk, L, d): SDPA's
    storage, no copy). tensor_cores: its prefill-style kernel, which
    FlashInfer advises for grouped heads; without: its CUDA-core decode
    kernel."""
    import flashinfer  # noqa: F401 (ImportError: reported as not available)
    b, hq = q.shape[0], q.shape[2]
    hk = k_pages.shape[2] if layout == "NHD" else k_pages.shape[1]
    pages_per_seq = table.shape[1]
    indptr = torch.arange(0, b + 1, dtype=torch.int32, device="cuda") * pages_per_seq
    indices = table.reshape(-1).contiguous()
    last = torch.full((b,), L - (pages_per_seq - 1) * page, dtype=torch.int32, device="cuda")
    ws = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")
    w = flashinfer.BatchDecodeWithPagedKVCacheWrapper(ws, kv_layout=layout, use_tensor_cores=tensor_cores)
    w.plan(indptr, indices, last, hq, hk, D, page, q_data_type=DTYPE, kv_data_type=DTYPE)
    q3 = q.reshape(b, hq, D)
    return lambda: w.run(q3, (k_pages, v_pages))


def make_cache(b, hk, L, layout, dev="cuda"):
    """K and V caches of b sequences of L keys in a layout of LAYOUTS (or
    DIAGNOSTIC_LAYOUTS), random normal: (k_cache, v_cache, block_table or
    None, k_store, v_store), the stores being SDPA's head-major tensors
    (b, hk, L, d) of a contiguous cache (else None)."""
    table = k_store = v_store = None
    if layout == "contiguous":
        # Head-major storage (b, hk, L, d): SDPA's layout; flashattn gets the
        # (b, L, hk, d) view of the same bytes (last dimension contiguous).
        k_store = torch.empty(b, hk, L, D, dtype=DTYPE, device=dev).normal_()
        v_store = torch.empty(b, hk, L, D, dtype=DTYPE, device=dev).normal_()
        k_cache, v_cache = k_store.transpose(1, 2), v_store.transpose(1, 2)
    elif layout == "contiguous-nhd":
        # flash-attn's layout (b, L, hk, d), stored so.
        k_cache = torch.empty(b, L, hk, D, dtype=DTYPE, device=dev).normal_()
        v_cache = torch.empty(b, L, hk, D, dtype=DTYPE, device=dev).normal_()
    else:
        page = int(layout[len("paged"):].split("-")[0])
        if L % page:
            raise ValueError(f"cache length {L}: expected a multiple of the page size {page}")
        per_seq = L // page
        k_cache = torch.empty(b * per_seq, page, hk, D, dtype=DTYPE, device=dev).normal_()
        v_cache = torch.empty_like(k_cache).normal_()
        if layout.endswith("-inorder"):
            table = torch.arange(b * per_seq, device=dev, dtype=torch.int32).reshape(b, per_seq)
        else:
            table = torch.randperm(b * per_seq, device=dev, dtype=torch.int64).to(torch.int32).reshape(b, per_seq)
    return k_cache, v_cache, table, k_store, v_store


def run_point(flashattn, hq, hk, b, L, layout, copy_gbs, methods=None):
    """Records of every method at one point (one cache allocation)."""
    recs = []
    dev = "cuda"
    q = torch.randn(b, 1, hq, D, dtype=DTYPE, device=dev)
    kn = torch.randn(b, 1, hk, D, dtype=DTYPE, device=dev)
    vn = torch.randn(b, 1, hk, D, dtype=DTYPE, device=dev)
    lens = torch.full((b,), L - 1, dtype=torch.int32, device=dev)
    k_cache, v_cache, table, k_store, v_store = make_cache(b, hk, L, layout, dev)
    kv_bytes = 2 * b * L * hk * D * 2
    for m in methods_for(layout, methods):
        rec = dict(method=m, heads_q=hq, heads_k=hk, batch=b, cache=L, layout=layout, head_dim=D, dtype="bf16",
                   kv_bytes=kv_bytes)
        try:
            if m == "flashattn":
                fn = lambda: flashattn.flash_attn_with_kvcache(q, k_cache, v_cache, kn, vn, cache_seqlens=lens,
                                                               block_table=table, causal=True)
            elif m.startswith("sdpa"):
                fn = sdpa_fn(m, q.transpose(1, 2), k_store, v_store)
            elif layout.startswith("contiguous"):
                one_page = torch.arange(b, dtype=torch.int32, device=dev).reshape(b, 1)
                if layout == "contiguous":
                    fn = flashinfer_fn(q, k_store, v_store, one_page, L, L, "HND", m == "flashinfer-tc")
                else:
                    fn = flashinfer_fn(q, k_cache, v_cache, one_page, L, L, "NHD", m == "flashinfer-tc")
            else:
                fn = flashinfer_fn(q, k_cache, v_cache, table, L, page, "NHD", m == "flashinfer-tc")
            ms = time_calls(fn)
            rec.update(ms=ms, gbs=kv_bytes / (ms * 1e-3) / 1e9)
            rec["of_copy"] = rec["gbs"] / copy_gbs
        except Exception as e:  # a backend that does not apply, or is missing
            rec.update(ms=None, error=f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}")
        recs.append(rec)
        print(json.dumps(rec), flush=True)
    del k_cache, v_cache
    torch.cuda.empty_cache()
    return recs


def markdown(meta, recs):
    lines = [f"# Decode (one new token), bf16, head_dim {D}", "",
             f"{meta['gpu']}; copy bandwidth {meta['copy_gbs']:.0f} GB/s (1 GiB device-to-device, read + write); "
             f"torch {meta['torch']}; commit {meta['commit']}.", "",
             "| heads q/kv | batch | cache | layout | method | time (us) | K+V GB/s | of copy |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in recs:
        if r.get("ms") is None:
            t, g, c = "n/a (" + r.get("error", "") + ")", "", ""
        else:
            t, g, c = f"{r['ms'] * 1e3:.1f}", f"{r['gbs']:.0f}", f"{r['of_copy']:.2f}"
        lines.append(f"| {r['heads_q']}/{r['heads_k']} | {r['batch']} | {r['cache'] // 1024}K | {r['layout']} | "
                     f"{r['method']} | {t} | {g} | {c} |")
    return "\n".join(lines) + "\n"


def positive_ints(flag, text, sep=","):
    """The positive integers of a flag's list, or an exit naming the flag."""
    try:
        vals = [int(x) for x in text.split(sep)]
    except ValueError:
        vals = []
    if not vals or min(vals) <= 0:
        sys.exit(f"decode_bench: {flag}: expected positive integers separated by '{sep}', got '{text}'")
    return vals


def subset(flag, text, allowed):
    """The comma-separated names of a flag, each one of allowed, or an exit naming the flag."""
    names = text.split(",")
    bad = [x for x in names if x not in allowed]
    if bad:
        sys.exit(f"decode_bench: {flag}: unknown {bad} (expected some of {allowed})")
    return names


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="folder for decode.json and decode.md")
    ap.add_argument("--quick", action="store_true", help="32/8 heads, batch 1 and 64, caches 8K and 32K")
    ap.add_argument("--max-cache-gib", type=float, default=40.0, help="skip points whose K + V exceed this")
    ap.add_argument("--heads", help="heads q/kv pairs, e.g. 32/8,64/8")
    ap.add_argument("--batches", help="comma-separated batch sizes")
    ap.add_argument("--caches", help="comma-separated cache lengths")
    ap.add_argument("--layouts", help="comma-separated subset of " + ",".join(LAYOUTS + DIAGNOSTIC_LAYOUTS))
    ap.add_argument("--methods", help="comma-separated subset of " + ",".join(METHODS))
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("decode_bench: needs a CUDA GPU")
    import flashattn
    if not flashattn.built_with_cuda():
        sys.exit("decode_bench: this flashattn build has no CUDA operators")
    os.makedirs(args.out, exist_ok=True)
    heads, batches, caches, layouts = HEADS, BATCHES, CACHES, LAYOUTS
    if args.quick:
        heads, batches, caches, layouts = QUICK["heads"], QUICK["batches"], QUICK["caches"], QUICK["layouts"]
    if args.heads:
        heads = [tuple(positive_ints("--heads", hh, "/")) for hh in args.heads.split(",")]
        if any(len(hh) != 2 or hh[0] % hh[1] for hh in heads):
            sys.exit(f"decode_bench: --heads: expected q/kv pairs with kv dividing q, got '{args.heads}'")
    if args.batches:
        batches = positive_ints("--batches", args.batches)
    if args.caches:
        caches = positive_ints("--caches", args.caches)
    if args.layouts:
        layouts = subset("--layouts", args.layouts, LAYOUTS + DIAGNOSTIC_LAYOUTS)
    methods = subset("--methods", args.methods, METHODS) if args.methods else None
    try:
        import flashinfer  # noqa: F401
        fi = getattr(flashinfer, "__version__", "yes")
    except Exception as e:
        fi = f"not importable ({type(e).__name__}); its rows say so"
    commit = "unknown"
    try:
        commit = flashattn.build_info()["commit"]
    except Exception:
        pass
    copy_gbs = copy_bandwidth_gbs()
    meta = dict(gpu=torch.cuda.get_device_name(), torch=torch.__version__, cuda=torch.version.cuda,
                host=platform.node(), date=time.strftime("%Y-%m-%d %H:%M:%S"), commit=commit, flashinfer=fi,
                copy_gbs=copy_gbs, quick=args.quick)
    print(json.dumps(meta), flush=True)
    recs = []
    t0 = time.time()
    for hq, hk in heads:
        for b in batches:
            for L in caches:
                if 2 * b * L * hk * D * 2 > args.max_cache_gib * (1 << 30):
                    continue
                for layout in layouts:
                    recs += run_point(flashattn, hq, hk, b, L, layout, copy_gbs, methods)
                    with open(os.path.join(args.out, "decode.json"), "w") as f:
                        json.dump(dict(meta=meta, records=recs), f, indent=1)
    meta["seconds"] = time.time() - t0
    with open(os.path.join(args.out, "decode.json"), "w") as f:
        json.dump(dict(meta=meta, records=recs), f, indent=1)
    with open(os.path.join(args.out, "decode.md"), "w") as f:
        f.write(markdown(meta, recs))
    print(f"decode_bench: {len(recs)} records in {meta['seconds']:.0f} s -> {args.out}", flush=True)


if __name__ == "__main__":
    main()
