"""Replacing the attention of a small PyTorch model with flashattn.

A GPT-style decoder whose attention is one function call; `--attention`
picks flashattn.flash_attn_func or torch's scaled_dot_product_attention and
nothing else in the model changes. Both train on the same random token
stream from the same initial weights, and their losses are printed side by
side (they agree to rounding).

  python bindings/python/examples/tiny_gpt.py --steps 20
  python bindings/python/examples/tiny_gpt.py --device cuda --dtype bfloat16 --seqlen 2048
"""
import argparse

import torch
import torch.nn as nn
import torch.nn.functional as F

import flashattn


class Attention(nn.Module):
    def __init__(self, dim, heads, kv_heads, attention):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, dim // heads
        self.q = nn.Linear(dim, dim, bias=False)
        self.kv = nn.Linear(dim, 2 * kv_heads * self.head_dim, bias=False)
        self.out = nn.Linear(dim, dim, bias=False)
        self.attention = attention

    def forward(self, x):
        b, s, _ = x.shape
        # flash-attn layout: (batch, seqlen, heads, head_dim), no transposes.
        q = self.q(x).view(b, s, self.heads, self.head_dim)
        k, v = self.kv(x).view(b, s, 2, self.kv_heads, self.head_dim).unbind(2)
        if self.attention == "flashattn":
            y = flashattn.flash_attn_func(q, k, v, causal=True)  # GQA: fewer k/v heads are fine
        else:
            rep = self.heads // self.kv_heads
            y = F.scaled_dot_product_attention(q.transpose(1, 2), k.repeat_interleave(rep, 2).transpose(1, 2),
                                               v.repeat_interleave(rep, 2).transpose(1, 2),
                                               is_causal=True).transpose(1, 2)
        return self.out(y.reshape(b, s, -1))


class Block(nn.Module):
    def __init__(self, dim, heads, kv_heads, attention):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, kv_heads, attention)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class TinyGPT(nn.Module):
    def __init__(self, vocab, dim, heads, kv_heads, layers, seqlen, attention):
        super().__init__()
        self.tok, self.pos = nn.Embedding(vocab, dim), nn.Embedding(seqlen, dim)
        self.blocks = nn.ModuleList(Block(dim, heads, kv_heads, attention) for _ in range(layers))
        self.ln, self.head = nn.LayerNorm(dim), nn.Linear(dim, vocab, bias=False)

    def forward(self, idx):
        x = self.tok(idx) + self.pos(torch.arange(idx.shape[1], device=idx.device))
        for blk in self.blocks:
            x = blk(x)
        return self.head(self.ln(x))


def train(args, attention):
    torch.manual_seed(args.seed)
    dtype = getattr(torch, args.dtype)
    model = TinyGPT(args.vocab, args.dim, args.heads, args.kv_heads, args.layers, args.seqlen, attention)
    model = model.to(args.device, dtype)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr)
    gen = torch.Generator().manual_seed(args.seed + 1)
    losses = []
    for _ in range(args.steps):
        # A learnable stream: each token is the previous one plus one, mod vocab, from a random start.
        start = torch.randint(0, args.vocab, (args.batch, 1), generator=gen)
        seq = (start + torch.arange(args.seqlen + 1)) % args.vocab
        seq = seq.to(args.device)
        logits = model(seq[:, :-1])
        loss = F.cross_entropy(logits.float().reshape(-1, args.vocab), seq[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seqlen", type=int, default=128)
    ap.add_argument("--vocab", type=int, default=64)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    ours, theirs = train(args, "flashattn"), train(args, "sdpa")
    for step, (a, b) in enumerate(zip(ours, theirs), 1):
        print(f"step {step:4d}  flashattn {a:.5f}  sdpa {b:.5f}")
    return ours, theirs


if __name__ == "__main__":
    main()
