"""One attention call to profile with Nsight Compute (scripts/ncu-rows).

  python benchmarks/ncu_target.py fwd|bwd|fp8 --head-dim D [--seqlen N] [--causal]
  python benchmarks/ncu_target.py decode --method flashattn|sdpa-cudnn --layout contiguous|paged16|paged64
                                         --batch B --cache L

fwd / bwd / fp8: bench-hopper's shapes (16K tokens a batch, heads = 2048 /
head_dim, bf16; fp8: e4m3 inputs quantised as benchmarks/fp8_bench.py
does); bwd runs the forward and torch.autograd.grad. decode: one new token
per sequence, 32 query / 8 KV heads, d 128, bf16, as
benchmarks/decode_bench.py (no append; the cache holds L keys).

The call runs twice: the first outside any profiler range (warm-up), the
second between cudaProfilerStart and cudaProfilerStop, so that `ncu
--profile-from-start off` profiles exactly the kernels of one call.
"""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

TOKENS = 16384


def dense_call(kind, d, seqlen, causal):
    import flashattn
    b, h = max(1, TOKENS // seqlen), 2048 // d
    gen = torch.Generator(device="cuda").manual_seed(1)
    x = [torch.randn(b, seqlen, h, d, device="cuda", generator=gen) for _ in range(3)]
    if kind == "fp8":
        from fp8_bench import quantise
        (q, qs), (k, ks), (v, vs) = (quantise(t, h) for t in x)

        def call():
            with torch.no_grad():
                flashattn.flash_attn_func(q, k, v, causal=causal, q_descale=qs, k_descale=ks, v_descale=vs)
        return call
    q, k, v = (t.bfloat16().requires_grad_(kind == "bwd") for t in x)
    if kind == "fwd":
        def call():
            with torch.no_grad():
                flashattn.flash_attn_func(q, k, v, causal=causal)
        return call
    do = torch.randn_like(q)

    def call():
        o = flashattn.flash_attn_func(q, k, v, causal=causal)
        torch.autograd.grad(o, (q, k, v), do)
    return call


def decode_call(method, layout, batch, cache):
    import decode_bench as db
    if method != "flashattn" and layout != "contiguous":
        raise SystemExit(f"--method {method}: only --layout contiguous (SDPA has no paged cache)")
    hq, hk = 32, 8
    q = torch.randn(batch, 1, hq, db.D, dtype=db.DTYPE, device="cuda")
    lens = torch.full((batch,), cache, dtype=torch.int32, device="cuda")
    try:
        kc, vc, table, ks, vs = db.make_cache(batch, hk, cache, layout)
    except ValueError as e:
        raise SystemExit(f"--cache: {e}")
    if method == "flashattn":
        import flashattn

        def call():
            flashattn.flash_attn_with_kvcache(q, kc, vc, cache_seqlens=lens, block_table=table, causal=True)
        return call
    fn = db.sdpa_fn(method, q.transpose(1, 2), ks, vs)

    def call():
        with torch.no_grad():
            fn()
    return call


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("kind", choices=["fwd", "bwd", "fp8", "decode"])
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--seqlen", type=int, default=8192)
    ap.add_argument("--causal", action="store_true")
    ap.add_argument("--method", choices=["flashattn", "sdpa-cudnn"], default="flashattn")
    ap.add_argument("--layout", choices=["contiguous", "paged16", "paged64"], default="contiguous")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--cache", type=int, default=8192)
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("ncu_target.py: needs a CUDA GPU")
    if args.kind == "decode":
        call = decode_call(args.method, args.layout, args.batch, args.cache)
    else:
        call = dense_call(args.kind, args.head_dim, args.seqlen, args.causal)
    call()
    torch.cuda.synchronize()
    torch.cuda.cudart().cudaProfilerStart()
    call()
    torch.cuda.synchronize()
    torch.cuda.cudart().cudaProfilerStop()


if __name__ == "__main__":
    main()
