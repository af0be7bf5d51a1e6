"""Greedy decoding with flashattn's KV cache, checked token for token against
recomputing the whole sequence.

The model is tiny_gpt.py's TinyGPT (GQA: 4 query heads, 2 KV heads, head_dim
64) with random weights from a fixed seed. Decode path: a batch of prompts of
different lengths goes into a KV cache (paged by default: pages of 16 rows in
shuffled order through a block table) with one flash_attn_with_kvcache call
per layer, then every greedy step appends the previous token's k / v through
the same call and takes the argmax of its logits. Reference path: each prompt
is decoded again without a cache, every step running the whole sequence
through the model with ordinary causal attention (torch SDPA, or
flashattn.flash_attn_func) and taking the argmax. The two must produce the
same tokens, with logits that agree to rounding; the script prints both and
exits with status 1 otherwise.

In float32 they agree (logits to about 1e-6). In 16-bit types the two paths
round differently, and where the two best logits of a step are that close
greedy decoding picks differently: with the whole model in bfloat16 that
happens for about a third of the seeds; the script then says whether the
first difference is such a tie. On CUDA, whose op takes float16 / bfloat16
only, the model stays float32 and q, k, v and the cache are float16.

  python bindings/python/examples/greedy_decode.py
  python bindings/python/examples/greedy_decode.py --cache contiguous --rotary
  python bindings/python/examples/greedy_decode.py --device cuda
"""
import argparse
import sys

import torch
import torch.nn.functional as F

import flashattn
from tiny_gpt import TinyGPT


class Rotary:
    """cos / sin tables (positions, head_dim / 2) in float32, as
    flash_attn_with_kvcache takes them, for the GPT-NeoX layout (the two
    halves of head_dim rotate against each other)."""

    def __init__(self, head_dim, positions, device, base=10000.0):
        inv = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
        angle = torch.arange(positions, dtype=torch.float64)[:, None] * inv
        self.cos, self.sin = angle.cos().float().to(device), angle.sin().float().to(device)

    def apply(self, x):
        """x (batch, seqlen, heads, head_dim) rotated at positions 0 .. seqlen - 1,
        in float32 and rounded once to x's dtype (what the op does)."""
        c, s = self.cos[: x.shape[1], None, :], self.sin[: x.shape[1], None, :]
        x1, x2 = x.float().chunk(2, dim=-1)
        return torch.cat((x1 * c - x2 * s, x1 * s + x2 * c), dim=-1).to(x.dtype)


def forward(model, idx, pos, attend, learned_positions=True, attn_dtype=None):
    """TinyGPT's logits for tokens idx (batch, n) at positions pos (batch, n),
    with attend(layer, q, k, v) -> (batch, n, heads, head_dim) as its
    attention, on q, k, v in attn_dtype (default: the model's). The same
    projections as tiny_gpt.Attention, so that the two decoders below differ
    in attention and the cache alone."""
    x = model.tok(idx)
    if learned_positions:
        x = x + model.pos(pos)
    for layer, blk in enumerate(model.blocks):
        a = blk.attn
        b, n, _ = x.shape
        h = blk.ln1(x)
        q = a.q(h).view(b, n, a.heads, a.head_dim)
        k, v = a.kv(h).view(b, n, 2, a.kv_heads, a.head_dim).unbind(2)
        if attn_dtype is not None:
            q, k, v = q.to(attn_dtype), k.to(attn_dtype), v.to(attn_dtype)
        x = x + a.out(attend(layer, q, k, v).to(x.dtype).reshape(b, n, -1))
        x = x + blk.mlp(blk.ln2(x))
    return model.head(model.ln(x))


class KVCache:
    """One k and one v cache per layer, paged or contiguous."""

    def __init__(self, layers, batch, capacity, kv_heads, head_dim, dtype, device, page_size=None, gen=None):
        if page_size:
            pages = -(-capacity // page_size)
            # Each sequence's pages are drawn in shuffled order from a pool
            # with spares, so the op must follow block_table rather than
            # find a sequence's rows next to each other.
            pool = batch * pages + 3
            self.block_table = torch.randperm(pool, generator=gen)[: batch * pages].view(batch, pages)
            self.block_table = self.block_table.to(device=device, dtype=torch.int32)
            shape = (pool, page_size, kv_heads, head_dim)
        else:
            self.block_table = None
            shape = (batch, capacity, kv_heads, head_dim)
        # NaN in every row never written: a read past a sequence's length
        # would turn its logits to NaN and its tokens into a mismatch.
        self.k = [torch.full(shape, float("nan"), dtype=dtype, device=device) for _ in range(layers)]
        self.v = [torch.full(shape, float("nan"), dtype=dtype, device=device) for _ in range(layers)]


def decode_with_cache(model, prompts, new_tokens, cache, rotary=None, num_splits=0):
    """Greedy tokens (batch, new_tokens) and their logits (batch, new_tokens,
    vocab) through flash_attn_with_kvcache."""
    device, attn_dtype = prompts[0].device, cache.k[0].dtype
    batch = len(prompts)
    lengths = torch.tensor([len(p) for p in prompts], dtype=torch.int32, device=device)

    def attend_cached(cache_seqlens):
        def attend(layer, q, k, v):
            # Appends k / v at rows cache_seqlens .. cache_seqlens + n - 1 of
            # each sequence IN PLACE, then q attends to all rows up to them.
            return flashattn.flash_attn_with_kvcache(
                q, cache.k[layer], cache.v[layer], k, v, cache_seqlens=cache_seqlens,
                block_table=cache.block_table, causal=True, num_splits=num_splits,
                rotary_cos=None if rotary is None else rotary.cos,
                rotary_sin=None if rotary is None else rotary.sin, rotary_interleaved=False)
        return attend

    # Prefill: the prompts right-padded to one length, one call per layer.
    # With an empty cache, causal row i sees keys 0 .. i, so a prompt's rows
    # never see its padding. The padding's k / v land past the prompt and
    # are overwritten by the first append, because the lengths the decode
    # steps pass are the prompts' own.
    longest = int(lengths.max())
    idx = torch.zeros(batch, longest, dtype=torch.long, device=device)
    for i, p in enumerate(prompts):
        idx[i, : len(p)] = p
    pos = torch.arange(longest, device=device).expand(batch, -1)
    empty = torch.zeros(batch, dtype=torch.int32, device=device)
    logits = forward(model, idx, pos, attend_cached(empty), rotary is None, attn_dtype)
    last = logits[torch.arange(batch, device=device), lengths.long() - 1]
    tokens, all_logits = [last.argmax(-1)], [last]

    # The op never advances cache_seqlens; the caller does, after each append.
    seqlens = lengths
    for _ in range(new_tokens - 1):
        logits = forward(model, tokens[-1][:, None], seqlens.long()[:, None], attend_cached(seqlens),
                         rotary is None, attn_dtype)
        seqlens = seqlens + 1
        all_logits.append(logits[:, -1])
        tokens.append(logits[:, -1].argmax(-1))
    return torch.stack(tokens, 1), torch.stack(all_logits, 1)


def decode_by_recompute(model, prompts, new_tokens, reference="sdpa", rotary=None, attn_dtype=None):
    """The same greedy decode without a cache: every step runs the whole
    sequence through the model with causal attention."""

    def attend(layer, q, k, v):
        if rotary is not None:
            q, k = rotary.apply(q), rotary.apply(k)
        if reference == "flashattn":
            return flashattn.flash_attn_func(q, k, v, causal=True)
        rep = q.shape[2] // k.shape[2]
        return F.scaled_dot_product_attention(q.transpose(1, 2), k.repeat_interleave(rep, 2).transpose(1, 2),
                                              v.repeat_interleave(rep, 2).transpose(1, 2),
                                              is_causal=True).transpose(1, 2)

    tokens, all_logits = [], []
    for p in prompts:
        seq, toks, lgs = p[None], [], []
        for _ in range(new_tokens):
            pos = torch.arange(seq.shape[1], device=seq.device)[None]
            logits = forward(model, seq, pos, attend, rotary is None, attn_dtype)[0, -1]
            toks.append(logits.argmax())
            lgs.append(logits)
            seq = torch.cat([seq, toks[-1].view(1, 1)], 1)
        tokens.append(torch.stack(toks))
        all_logits.append(torch.stack(lgs))
    return torch.stack(tokens), torch.stack(all_logits)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                    help="the model's weights and activations")
    ap.add_argument("--attn-dtype", default=None, choices=["float32", "bfloat16", "float16"],
                    help="q, k, v and the cache; default --dtype, but float16 where that is float32 on CUDA, "
                         "whose op takes 16-bit types only")
    ap.add_argument("--cache", default="paged", choices=["paged", "contiguous"])
    ap.add_argument("--page-size", type=int, default=16)
    ap.add_argument("--prompt-lens", default="7,16,33", help="comma-separated, one sequence each")
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--reference", default="sdpa", choices=["sdpa", "flashattn"],
                    help="the recompute path's attention: torch SDPA or flashattn.flash_attn_func")
    ap.add_argument("--rotary", action="store_true",
                    help="rotary embeddings (applied by the op) instead of learned positions")
    ap.add_argument("--num-splits", type=int, default=0, help="split-KV pieces, 0 = the op's heuristic")
    ap.add_argument("--vocab", type=int, default=128)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    attn_dtype = dtype if args.attn_dtype is None else getattr(torch, args.attn_dtype)
    if device.type == "cuda" and attn_dtype == torch.float32:
        if args.attn_dtype is not None:
            ap.error("--attn-dtype float32: flash_attn_with_kvcache on CUDA takes float16 or bfloat16")
        # float16 rather than bfloat16: its 3 more mantissa bits make a
        # rounding-level tie between the two best logits, which greedy
        # decoding cannot resolve the same way on both paths, rarer.
        attn_dtype = torch.float16
    lens = [int(n) for n in args.prompt_lens.split(",")]
    if min(lens) < 1 or args.new_tokens < 1:
        ap.error("prompts and --new-tokens need at least one token")

    # The last generated token is never appended, hence one row to spare.
    capacity = max(lens) + args.new_tokens
    torch.manual_seed(args.seed)
    # Only TinyGPT's modules are used (forward() above walks them), so its
    # attention argument does not matter.
    model = TinyGPT(args.vocab, args.dim, args.heads, args.kv_heads, args.layers, capacity, "sdpa")
    model = model.to(device, dtype).eval()
    gen = torch.Generator().manual_seed(args.seed + 1)
    prompts = [torch.randint(0, args.vocab, (n,), generator=gen).to(device) for n in lens]
    head_dim = args.dim // args.heads
    rotary = Rotary(head_dim, capacity, device) if args.rotary else None

    with torch.inference_mode():
        cache = KVCache(args.layers, len(lens), capacity, args.kv_heads, head_dim, attn_dtype, device,
                        args.page_size if args.cache == "paged" else None, gen)
        ours, our_logits = decode_with_cache(model, prompts, args.new_tokens, cache, rotary, args.num_splits)
        theirs, their_logits = decode_by_recompute(model, prompts, args.new_tokens, args.reference, rotary,
                                                   attn_dtype)
    ours, theirs = ours.cpu(), theirs.cpu()

    layout = f"paged (pages of {args.page_size}, shuffled)" if args.cache == "paged" else "contiguous"
    print(f"TinyGPT {args.layers} layers, {args.heads} query / {args.kv_heads} KV heads of {head_dim}, "
          f"{dtype} (attention {attn_dtype}), {device}; cache {layout}; reference {args.reference}"
          f"{'; rotary' if rotary else ''}")
    # Where the tokens agree, so do the contexts, and the logits of the two
    # paths differ by rounding alone: in units of the coarser type's epsilon
    # times the largest logit, up to about 6 in float32 (many roundings add
    # up) and under 1 in 16-bit types (the last rounding dominates), over
    # seeds 0-9 with and without --rotary. A wrong cache entry moves them by
    # far more, often without changing a token.
    eps = max(torch.finfo(dtype).eps, torch.finfo(attn_dtype).eps)
    tolerance = 64 * eps * their_logits.float().abs().max().item()
    same_tokens, max_diff = True, 0.0
    for i, p in enumerate(prompts):
        print(f"sequence {i}, prompt of {len(p)}: {' '.join(map(str, p.tolist()))}")
        print(f"  cache     : {' '.join(map(str, ours[i].tolist()))}")
        print(f"  recompute : {' '.join(map(str, theirs[i].tolist()))}")
        differ = (ours[i] != theirs[i]).nonzero()
        # Up to and including the first difference both paths saw the same
        # tokens, so their logits there are comparable.
        upto = int(differ[0]) + 1 if len(differ) else args.new_tokens
        diff = (our_logits[i, :upto].float() - their_logits[i, :upto].float()).abs().max().item()
        max_diff = max(max_diff, diff)
        if len(differ):
            same_tokens = False
            t = int(differ[0])
            a, b = int(ours[i, t]), int(theirs[i, t])
            ref = their_logits[i, t].float()
            gap = (ref[b] - ref[a]).item()
            # Two best logits closer than the paths' rounding: a tie that
            # the two broke differently, not a wrong cache.
            tie = diff <= tolerance and gap <= 2 * diff
            print(f"  first difference at new token {t}: cache {a}, recompute {b}; the recompute's logits "
                  f"there: {a}: {ref[a].item():.6f}, {b}: {ref[b].item():.6f}, gap {gap:.3g} "
                  f"({'a near tie' if tie else 'no tie: a wrong result'}); "
                  f"max |logit difference| up to there {diff:.3g}")
    print(f"max |logit difference| of the two paths: {max_diff:.3g} (tolerance {tolerance:.3g})")
    match = same_tokens and max_diff <= tolerance
    print("match" if match else "MISMATCH" + ("" if same_tokens else ": tokens differ")
          + ("" if max_diff <= tolerance else ": logits differ beyond rounding"))
    return dict(match=match, same_tokens=same_tokens, cache=ours, recompute=theirs, max_logit_diff=max_diff,
                tolerance=tolerance)


if __name__ == "__main__":
    sys.exit(0 if main()["match"] else 1)
