"""HuggingFace GPT-2 small training throughput, the peer of fa-train's
GPT-2 measurements: random init, bf16 autocast, fused AdamW,
random tokens, one JSON line per attention implementation.

  python benchmarks/hf_gpt2.py --attn eager,sdpa --batch 16 --context 1024 --steps 30

Needs transformers; without it, prints one JSON line saying so and exits 0
(the GPU machine may not have it, and nothing can be installed there)."""
import argparse
import json
import time

import torch


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--attn", default="eager,sdpa")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--context", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=10)
    args = ap.parse_args()
    try:
        import transformers
        from transformers import GPT2Config, GPT2LMHeadModel
    except ImportError as e:
        print(json.dumps(dict(tool="hf_gpt2", status="unavailable", reason=str(e))))
        return 0
    for attn in args.attn.split(","):
        torch.manual_seed(0)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        rec = dict(tool="hf_gpt2", transformers=transformers.__version__, torch=torch.__version__,
                   gpu=torch.cuda.get_device_name(), attn=attn, batch=args.batch, context=args.context)
        try:
            cfg = GPT2Config(n_positions=max(1024, args.context), attn_implementation=attn)
            model = GPT2LMHeadModel(cfg).cuda().train()
            opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
            x = torch.randint(0, cfg.vocab_size, (args.batch, args.context), device="cuda")
            for i in range(args.warmup + args.steps):
                if i == args.warmup:
                    torch.cuda.synchronize()
                    t = time.perf_counter()
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    loss = model(input_ids=x, labels=x).loss
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
            torch.cuda.synchronize()
            secs = time.perf_counter() - t
            rec.update(status="ok", tokens_per_s=args.batch * args.context * args.steps / secs,
                       step_ms=1e3 * secs / args.steps, peak_mem_bytes=torch.cuda.max_memory_allocated(),
                       params=sum(p.numel() for p in model.parameters()), loss=float(loss))
        except torch.cuda.OutOfMemoryError:
            rec.update(status="oom")
        print(json.dumps(rec), flush=True)
        model = opt = None
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
