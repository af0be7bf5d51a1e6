"""The attention benchmark of the FlashAttention paper (its Figure 3 and
Appendix E), issue 4's dense table on Hopper, and block-sparse attention,
with flashattn and the systems a user would pick instead, measured side by
side in one process on one device, every method through the same timing
code (flashattn through its PyTorch op, like every peer).

  python benchmarks/attention_bench.py --setting paper  --out OUT   # OUT/paper.json, OUT/paper.md
  python benchmarks/attention_bench.py --setting hopper --out OUT   # OUT/hopper.json, OUT/hopper.md
  python benchmarks/attention_bench.py --setting sparse --out OUT   # OUT/sparse.json, OUT/sparse.md
  python benchmarks/attention_bench.py --device cpu --seqlens 64,128 --batch 2 --json smoke.json

Settings:
  paper   Appendix E: batch 16, 8 heads, head_dim 64, fp16, dropout 0.1, a
          key-padding mask with random lengths in [seqlen - 20, seqlen],
          seqlens 128 .. 65536. Exact, approximate and block-sparse methods.
          The padded batch is packed (unpadded) once, outside the timed
          region, as a model keeps its batch packed across layers: flashattn
          runs its varlen op on the packed tensors (cu_seqlens on the device
          and max_seqlen as a Python int, both made once); the sdpa-*-njt
          methods give PyTorch's SDPA backends the same packed tensors as
          nested jagged tensors (offsets and min / max seqlen made once, so
          SDPA does not read them back from the GPU); sdpa-* (no -njt),
          pytorch-standard and the approximations run the padded batch with
          a boolean key mask (b, 1, 1, s), as HuggingFace models do.
  modern  bf16, head_dim 64 / 128 / 256, causal and not, 16k tokens per
          batch (batch = 16384 / seqlen), heads = 2048 / head_dim, no dropout,
          no padding. Exact methods, TFLOPS.
  hopper  issue 4's dense rows (HOPPER_ROWS: bf16, 16k tokens, heads =
          2048 / head_dim: d 64 8K, d 128 8K, d 128 causal 8K, d 256 8K,
          d 128 1K, d 128 causal 1K, and fp16 d 128 8K): flashattn's Hopper
          and sm80 kernels (FLASHATTN_CUDA_KERNELS set around the method),
          PyTorch's cuDNN and FlashAttention-2 SDPA backends, and
          FlashAttention-4 (method fa4, flash-attn-4's flash_attn.cute,
          when --methods names it: scripts/bench-hopper adds it when it is
          importable); --timing separate (below).
  sparse  block-sparse against density: bf16, batch 1, heads = 2048 /
          head_dim, head_dim 64 and 128, seqlens 16384 and 65536, densities
          1/2 .. 1/16, two block patterns (--patterns): random key blocks
          with the diagonal kept, and the butterfly pattern of the paper
          (Pixelfly's flat block butterfly, see block_pattern). flashattn
          block-sparse and FlexAttention get exactly the same block lists
          (built once, outside the timed region); dense flashattn (automatic
          kernels: Hopper on an H100, which block-sparse takes too) and dense
          flashattn-sm80 (the portable family) are the references.
--rows "d,seqlen,causal[,dtype];..." replaces the head_dims x causal x
seqlens product with those rows. Any flag given on the command line
overrides the setting's value.

Timing (the same code for every method): each method's inputs are leaf
tensors with requires_grad; the backward is torch.autograd.grad(out,
inputs, dout) (gradients returned, never accumulated into .grad, so no
method pays for accumulation kernels). --timing call (paper, modern,
sparse): one training-style call a sample, three marks: forward, backward,
and forward + backward are medians over the same calls. --timing separate
(hopper): three loops of their own, forward calls (grad mode on, as in
training), backward calls on one forward's graph (retain_graph=True), and
forward + backward calls. Each loop runs --warmup untimed calls (and at
least 0.2 s) then --repeats timed ones; --max-seconds caps a loop's wall
time (at least 1 warm-up and 3 samples), and each record says how many
samples its medians took. CUDA events on a GPU, perf_counter on the CPU.
On a GPU each timed call is queued behind a busy-wait kernel
(--queue-ahead-ms, 5 ms; torch.cuda._sleep): the host enqueues the call
while the GPU is still waiting, so the events time the GPU's work and not
the host's launch latency; a record counts the calls whose enqueue
outlasted the wait (queue_ahead_short). Nothing in a timed call reads from
the GPU: everything a call needs (packed tensors, cu_seqlens, max_seqlen,
block lists, FlexAttention's BlockMask) is made once when the method is
built, and on a GPU the timed region runs under
torch.cuda.set_sync_debug_mode("warn"): every synchronising call torch
makes there is counted (host_syncs in the record, a warning line printed).
Memory is the peak of torch's allocator during the timed loops above what
was allocated before them (inputs, dO): on a GPU
torch.cuda.max_memory_allocated, on the CPU not measured (null).
Out-of-memory is recorded as "oom" and longer sequences of that method are
not tried; a method that cannot express the problem (e.g. PyTorch's
FlashAttention backend with a key-padding mask) is recorded as
"unsupported" with the reason, never run on a different problem.
--require METHODS makes the exit status 1 unless every record of those
methods is "ok" without host synchronisations (the JSON is written anyway).

TFLOPS use the standard formula for exact attention: 4 * b * h * sq * sk * d
forward (the visible pairs only: halved for causal, the kept blocks for
block-sparse, the unpadded lengths for key padding), 2.5x for backward,
3.5x for forward + backward. Approximate methods get runtimes only.
"""
import argparse
import datetime
import json
import math
import os
import platform
import subprocess
import sys
import time
import warnings

# The installed flashattn package, not the source folder of the bindings.
sys.path[:] = [p for p in sys.path if not os.path.abspath(p or ".").endswith(os.path.join("bindings", "python"))]

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from timing import QueueAhead, sample, stopwatch  # noqa: E402
import tables  # noqa: E402

try:
    import flashattn  # noqa: E402
except ImportError as e:  # the harness still measures the peers, and says why ours is missing
    flashattn = None
    FLASHATTN_IMPORT_ERROR = str(e)
else:
    FLASHATTN_IMPORT_ERROR = ""

# Issue 4's dense rows: (head_dim, causal, seqlen, dtype), 16k tokens.
HOPPER_ROWS = [(64, False, 8192, "bfloat16"), (128, False, 8192, "bfloat16"), (128, True, 8192, "bfloat16"),
               (256, False, 8192, "bfloat16"), (128, False, 1024, "bfloat16"), (128, True, 1024, "bfloat16"),
               (128, False, 8192, "float16")]

SETTINGS = {
    "paper": dict(batch=16, heads=8, head_dims=[64], dtype="float16", dropout=0.1, padding=20, causal=[False],
                  seqlens=[128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536], tokens=0, rows=None,
                  timing="call", patterns=["random"],
                  methods=["flashattn", "flashattn-sparse", "flashattn-standard", "pytorch-standard", "sdpa-math",
                           "sdpa-flash", "sdpa-efficient", "sdpa-cudnn", "sdpa-flash-njt", "sdpa-efficient-njt",
                           "sdpa-cudnn-njt", "flex", "flex-sparse", "linformer", "performer", "linear", "local"]),
    "modern": dict(batch=0, heads=0, head_dims=[64, 128, 256], dtype="bfloat16", dropout=0.0, padding=0,
                   causal=[False, True], seqlens=[512, 1024, 2048, 4096, 8192, 16384], tokens=16384, rows=None,
                   timing="call", patterns=["random"],
                   methods=["flashattn", "sdpa-flash", "sdpa-cudnn", "sdpa-efficient", "flex"]),
    "hopper": dict(batch=0, heads=0, head_dims=None, dtype=None, dropout=0.0, padding=0, causal=None, seqlens=None,
                   tokens=16384, rows=HOPPER_ROWS, timing="separate", patterns=["random"],
                   methods=["flashattn-sm90", "flashattn-sm80", "sdpa-cudnn", "sdpa-flash"]),
    # Block-sparse against density and pattern (FlexAttention has no
    # dropout, so none here): dense flashattn is the density-1 reference.
    "sparse": dict(batch=1, heads=0, head_dims=[64, 128], dtype="bfloat16", dropout=0.0, padding=0, causal=[False],
                   seqlens=[16384, 65536], tokens=0, rows=None, density=[0.5, 0.25, 0.125, 0.0625],
                   timing="call", patterns=["random", "butterfly"],
                   methods=["flashattn", "flashattn-sm80", "flashattn-sparse", "flex-sparse"]),
}
APPROXIMATE = {"linformer", "performer", "linear", "local"}
SPARSE = {"flashattn-sparse", "flex-sparse"}
FLASHATTN_KERNELS = {"flashattn-sm80": "sm80", "flashattn-sm90": "sm90"}
SYNC_WARNING = "called a synchronizing CUDA operation"  # torch.cuda.set_sync_debug_mode's message


class Unsupported(Exception):
    """The method cannot express this problem; the reason goes into the JSON."""


class Case:
    """What a method times: fn(*inputs) -> out, and autograd.grad(out,
    inputs, dout). inputs / dout None: the problem's dense (b, s, h, d)
    q, k, v and dO. env: environment variables set while the method runs
    (its warm-up, forward and backward). pairs: the attended (query, key)
    pairs its TFLOPS count (None: approximate, runtimes only)."""

    def __init__(self, fn, pairs, inputs=None, dout=None, env=None, notes=None):
        self.fn, self.pairs, self.inputs, self.dout, self.env = fn, pairs, inputs, dout, env or {}
        self.notes = notes or {}


# ------------------------------------------------------------- problem ---

class Problem:
    """One benchmark problem: dense (b, s, h, d) tensors in flash-attn layout,
    plus, with key padding, the lengths and the packed (unpadded) tensors,
    made here once; and the block-sparse pattern (block_lists)."""

    def __init__(self, args, seqlen, head_dim, causal, dtype, device, gen):
        self.seqlen, self.head_dim, self.causal = seqlen, head_dim, causal
        self.batch = args.batch if args.batch > 0 else max(1, args.tokens // seqlen)
        self.heads = args.heads if args.heads > 0 else max(1, 2048 // head_dim)
        self.dtype = getattr(torch, dtype)
        self.dropout = args.dropout
        self.device = device
        shape = (self.batch, seqlen, self.heads, head_dim)
        # Drawn on the device (at 64K the paper's tensors are 0.5G elements
        # each), from a generator seeded per problem.
        dgen = torch.Generator(device=device).manual_seed(args.seed * 1000003 + seqlen * 7 + head_dim)
        self.q, self.k, self.v, self.dout = (torch.randn(shape, generator=dgen, device=device, dtype=self.dtype)
                                             for _ in range(4))
        # Key padding (the paper's setting): sequence i keeps its first
        # lens[i] tokens; queries and keys past it are padding.
        self.lens = None
        if args.padding > 0:
            lo = max(1, seqlen - args.padding)
            self.lens = torch.randint(lo, seqlen + 1, (self.batch,), generator=gen)
            self._pack()
        self.sparse_density = args.density[0]
        self.pattern = args.patterns[0]
        self.block = args.block
        self._gen = gen
        self._lists = {}

    def _pack(self):
        """The packed batch, made once as a model would (its batch stays
        packed across layers): (total, h, d) tensors of the real tokens,
        cu_seqlens int32 and offsets int64 on the device, max / min seqlen
        as Python ints."""
        lens = self.lens.tolist()
        valid = (torch.arange(self.seqlen)[None, :] < self.lens[:, None]).flatten()
        index = valid.nonzero().flatten().to(self.device)
        self.packed = tuple(t.flatten(0, 1).index_select(0, index) for t in (self.q, self.k, self.v, self.dout))
        cu = torch.zeros(self.batch + 1, dtype=torch.int64)
        cu[1:] = torch.cumsum(self.lens, 0)
        self.offsets = cu.to(self.device)
        self.cu_seqlens = cu.to(torch.int32).to(self.device)
        self.max_len, self.min_len = max(lens), min(lens)

    def without_padding(self):
        other = object.__new__(Problem)
        other.__dict__.update(self.__dict__, lens=None)
        return other

    def with_sparsity(self, density, pattern):
        other = object.__new__(Problem)
        other.__dict__.update(self.__dict__, sparse_density=density, pattern=pattern)
        return other

    def pairs(self):
        """Visible (query, key) pairs of the whole batch, per head (causal:
        half of them, the standard formula's convention)."""
        lens = self.lens.tolist() if self.lens is not None else [self.seqlen] * self.batch
        return sum(n * n / 2 if self.causal else n * n for n in lens)

    def key_mask(self):
        """Boolean (b, 1, 1, s) mask, True = attend, or None without padding."""
        if self.lens is None:
            return None
        ar = torch.arange(self.seqlen)
        return (ar[None, :] < self.lens[:, None]).to(self.device)[:, None, None, :]

    def block_states(self):
        """Kept key blocks of each query block (bool [nqb, nkb]) of this
        problem's pattern and density: block_pattern."""
        return block_pattern(self.pattern, -(-self.seqlen // self.block), self.sparse_density, self.causal,
                             seed=1234 + self.seqlen)

    def block_lists(self):
        """The compressed block lists of block_states() on the device, made
        once per (pattern, density) and shared by flashattn-sparse and
        flex-sparse: (partial count, partial index, full count, full index),
        int32 [1, 1, nqb] / [1, 1, nqb, nkb], and the kept-block matrix.
        Kept blocks cut by the causal diagonal are partial (the element rule
        applies inside them), every other kept block is full."""
        key = (self.pattern, self.sparse_density)
        if key not in self._lists:
            keep = self.block_states()
            n = keep.shape[0]
            diag = torch.eye(n, dtype=torch.bool) if self.causal else torch.zeros(n, n, dtype=torch.bool)

            def compress(states):
                count = states.sum(1).to(torch.int32)
                # Kept columns first, in increasing order (a stable sort of
                # "not kept"), the rest of each row unused.
                index = torch.sort((~states).to(torch.int8), dim=1, stable=True).indices.to(torch.int32)
                return count[None, None].to(self.device), index[None, None].contiguous().to(self.device)
            self._lists[key] = (*compress(keep & diag), *compress(keep & ~diag), keep)
        return self._lists[key]


def block_pattern(pattern, n, density, causal, seed):
    """Kept key blocks (bool [n, n]) of n query blocks x n key blocks.

    random:    the diagonal block plus others drawn at random, so that each
               query block keeps round(density x its candidates) blocks
               (candidates: every key block, or those at or left of the
               diagonal when causal), as in flashattn-bench.
    butterfly: the paper's fixed butterfly pattern (FlashAttention,
               Section 3.3, after Pixelfly, Chen et al. 2021): the flat
               block butterfly, block (i, j) kept iff (i // w) xor (j // w)
               is 0 or a power of two below 2^T, i.e. the identity plus
               butterfly factors of strides 1 .. 2^(T-1) over super-blocks
               of w blocks. Its density is w (T + 1) / n; for a density d
               the largest T (of the form 2^k - 1) with w = d n / (T + 1) a
               whole number and 2^T <= n / w is used (d 1/16 at n 128: T 7,
               w 1, the plain butterfly). Needs n a power of two and d n a
               whole number (an Unsupported otherwise); causal keeps the
               lower triangle of it.
    """
    if pattern == "random":
        keep = torch.zeros(n, n, dtype=torch.bool)
        g = torch.Generator().manual_seed(seed)
        for qb in range(n):
            cand = [kb for kb in range(n) if (kb <= qb or not causal) and kb != qb]
            want = max(1, round(density * (len(cand) + 1))) - 1
            keep[qb, qb] = True
            if want > 0 and cand:
                pick = torch.randperm(len(cand), generator=g)[:want]
                keep[qb, torch.tensor(cand)[pick]] = True
        return keep
    if pattern == "butterfly":
        kept = density * n
        if n & (n - 1) or abs(kept - round(kept)) > 1e-9 or round(kept) < 1:
            raise Unsupported(f"butterfly pattern: needs a power-of-two number of blocks and density x blocks a "
                              f"whole number, got {n} blocks at density {density:g}")
        kept = int(round(kept))
        choice = None
        for k in range(0, n.bit_length()):
            t = 2 ** k - 1
            if kept % (t + 1) == 0:
                w = kept // (t + 1)
                if w >= 1 and n % w == 0 and 2 ** t <= n // w:
                    choice = (t, w)  # the last that fits has the largest T
        if choice is None:
            raise Unsupported(f"butterfly pattern: no (factors, width) gives density {density:g} at {n} blocks")
        t, w = choice
        i = torch.arange(n) // w
        x = i[:, None] ^ i[None, :]
        keep = (x == 0) | ((x & (x - 1)) == 0) & (x < 2 ** t)
        if causal:
            keep &= torch.ones(n, n, dtype=torch.bool).tril()
        return keep
    raise ValueError(f"unknown block pattern {pattern!r}")


def to_bhsd(x):
    return x.transpose(1, 2)


def no_flashattn():
    if flashattn is None:
        raise Unsupported("flashattn is not installed: " + FLASHATTN_IMPORT_ERROR)


# ------------------------------------------------------------- methods ---
# Each builder returns a Case; fn takes and returns (b, s, h, d) tensors
# (packed methods: (total, h, d)).

def build_flashattn(p, algorithm="flash", kernels=None):
    no_flashattn()
    env = {}
    if kernels is not None:
        # The library reads FLASHATTN_CUDA_KERNELS at every forward and
        # backward: set for the whole run of the method (run_method).
        if p.q.device.type != "cuda":
            raise Unsupported(f"flashattn-{kernels} selects CUDA kernels; this run is on {p.q.device.type}")
        env = {"FLASHATTN_CUDA_KERNELS": kernels}
    if not flashattn.supported(p.q.device, p.dtype, p.head_dim, algorithm):
        raise Unsupported(f"flashattn.supported says no for {p.q.device.type} {p.dtype} d={p.head_dim} {algorithm}")
    if p.lens is None:
        return Case(lambda q, k, v: flashattn.flash_attn_func(q, k, v, dropout_p=p.dropout, causal=p.causal,
                                                              algorithm=algorithm), p.pairs(), env=env)
    # Key padding: the varlen op on the packed batch (made once in Problem).
    cu, max_len = p.cu_seqlens, p.max_len
    return Case(lambda q, k, v: flashattn.flash_attn_varlen_func(q, k, v, cu, cu, max_len, max_len,
                                                                 dropout_p=p.dropout, causal=p.causal,
                                                                 algorithm=algorithm),
                p.pairs(), inputs=p.packed[:3], dout=p.packed[3], env=env, notes=dict(padding_via="varlen, packed"))


def sparse_pairs(p, keep):
    """Visible pairs of the kept blocks (the causal diagonal blocks count
    half of theirs), over the whole batch."""
    bs, n = p.block, keep.shape[0]
    sizes = torch.tensor([min(bs, p.seqlen - i * bs) for i in range(n)], dtype=torch.float64)
    area = sizes[:, None] * sizes[None, :]
    if p.causal:
        area = area - torch.diag(sizes * sizes / 2)
    return float((area * keep).sum()) * p.batch


def build_flashattn_sparse(p):
    no_flashattn()
    pc, pi, fc, fi, keep = p.block_lists()
    return Case(lambda q, k, v: flashattn.flash_attn_block_sparse_func(q, k, v, pc, pi, fc, fi, block_size=p.block,
                                                                       dropout_p=p.dropout, causal=p.causal),
                sparse_pairs(p, keep), notes=sparse_notes(p, keep))


def sparse_notes(p, keep):
    return dict(pattern=p.pattern, kept_blocks=int(keep.sum()), blocks=keep.numel(),
                kept_share=float(keep.sum()) / keep.numel())


def build_pytorch_standard(p):
    """Attention as HuggingFace's GPT-2 writes it: S, softmax, dropout, PV."""
    mask = p.key_mask()
    scale = 1.0 / math.sqrt(p.head_dim)
    causal_mask = torch.ones(p.seqlen, p.seqlen, dtype=torch.bool, device=p.device).triu(1) if p.causal else None

    def fn(q, k, v):
        q, k, v = to_bhsd(q), to_bhsd(k), to_bhsd(v)
        s = torch.matmul(q, k.transpose(-1, -2)) * scale
        if causal_mask is not None:
            s = s.masked_fill(causal_mask, float("-inf"))
        if mask is not None:
            s = s.masked_fill(~mask, float("-inf"))
        a = torch.softmax(s.float(), dim=-1).to(q.dtype)
        a = F.dropout(a, p.dropout, training=True)
        return to_bhsd(torch.matmul(a, v))
    return Case(fn, p.pairs(), notes=dict(padding_via="attention mask, padded batch") if mask is not None else None)


SDPA_BACKENDS = {"sdpa-math": "MATH", "sdpa-flash": "FLASH_ATTENTION", "sdpa-efficient": "EFFICIENT_ATTENTION",
                 "sdpa-cudnn": "CUDNN_ATTENTION"}
SDPA_NJT = {f"{m}-njt": m for m in ("sdpa-math", "sdpa-flash", "sdpa-efficient", "sdpa-cudnn")}


def build_sdpa(p, name):
    from torch.nn.attention import SDPBackend, sdpa_kernel
    backend = getattr(SDPBackend, SDPA_BACKENDS[name])
    mask = p.key_mask()
    if mask is not None and p.causal:
        raise Unsupported("SDPA takes is_causal or attn_mask, not both")

    def fn(q, k, v):
        with sdpa_kernel(backend):
            return to_bhsd(F.scaled_dot_product_attention(to_bhsd(q), to_bhsd(k), to_bhsd(v), attn_mask=mask,
                                                          dropout_p=p.dropout, is_causal=p.causal))
    return Case(fn, p.pairs(), notes=dict(padding_via="attention mask, padded batch") if mask is not None else None)


def build_sdpa_njt(p, name):
    """SDPA on the packed batch as nested jagged tensors (the same packed
    tensors as flashattn's varlen op; offsets and min / max seqlen given,
    so nothing is read back from the GPU)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    if p.lens is None:
        raise Unsupported(f"{name} is the key-padding form of {SDPA_NJT[name]}; this problem has no padding")
    backend = getattr(SDPBackend, SDPA_BACKENDS[SDPA_NJT[name]])
    offsets, lo, hi = p.offsets, p.min_len, p.max_len

    def jagged(x):  # (total, h, d) -> nested (b, h, j, d)
        return torch.nested.nested_tensor_from_jagged(x, offsets, min_seqlen=lo, max_seqlen=hi).transpose(1, 2)

    def fn(q, k, v):
        with sdpa_kernel(backend):
            out = F.scaled_dot_product_attention(jagged(q), jagged(k), jagged(v), dropout_p=p.dropout,
                                                 is_causal=p.causal)
        return out.transpose(1, 2).values()
    return Case(fn, p.pairs(), inputs=p.packed[:3], dout=p.packed[3],
                notes=dict(padding_via="nested jagged tensors, packed"))


def flex_block_mask(p):
    """FlexAttention's BlockMask of exactly flashattn-sparse's block lists
    (BlockMask.from_kv_blocks; made once, outside the timed region). Its
    mask_mod is the same element mask (kept block, and causal): compiled
    kernels evaluate it in the partial blocks only (the causal diagonal;
    none without causal), and eager FlexAttention, which applies the
    mask_mod to every element and not the block lists, computes the same
    attention (the CPU test checks both against a dense reference)."""
    from torch.nn.attention.flex_attention import BlockMask
    pc, pi, fc, fi, keep = p.block_lists()
    keep_dev, bs, causal = keep.to(p.device), p.block, p.causal

    def mask_mod(b, h, qi, ki):
        ok = keep_dev[qi // bs, ki // bs]
        return ok & (qi >= ki) if causal else ok
    return BlockMask.from_kv_blocks(pc, pi, fc, fi, BLOCK_SIZE=bs, mask_mod=mask_mod, seq_lengths=(p.seqlen, p.seqlen))


def build_flex(p, sparse):
    try:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    except ImportError as e:
        raise Unsupported(f"FlexAttention is not available: {e}")
    if p.dropout > 0:
        raise Unsupported("FlexAttention has no dropout")
    if p.q.device.type != "cuda":
        raise Unsupported("FlexAttention is measured on CUDA only (on the CPU it needs a long inductor compile)")
    lens = p.lens.to(p.device) if p.lens is not None else None
    causal = p.causal
    pairs, notes = p.pairs(), {}

    def causal_mod(b, h, qi, ki):
        return qi >= ki
    block_mask = None
    if sparse:
        block_mask = flex_block_mask(p)
        keep = p.block_lists()[4]
        pairs, notes = sparse_pairs(p, keep), sparse_notes(p, keep)
    elif lens is not None:
        def mask_mod(b, h, qi, ki):
            return ki < lens[b]
        block_mask = create_block_mask(mask_mod, p.batch, None, p.seqlen, p.seqlen, device=p.device,
                                       BLOCK_SIZE=p.block)
        notes = dict(padding_via="BlockMask of the key lengths, padded batch")
    elif causal:
        block_mask = create_block_mask(causal_mod, None, None, p.seqlen, p.seqlen, device=p.device,
                                       BLOCK_SIZE=p.block)
    compiled = torch.compile(flex_attention, dynamic=False)
    return Case(lambda q, k, v: to_bhsd(compiled(to_bhsd(q), to_bhsd(k), to_bhsd(v), block_mask=block_mask)),
                pairs, notes=notes)


# The approximate baselines of the paper, written plainly in PyTorch. Their
# parameters are fixed random projections (the benchmark measures speed and
# memory, not quality).

def build_linformer(p):
    """Keys and values projected along the sequence to k = min(s/8, 256)."""
    kdim = max(1, min(p.seqlen // 8, 256))
    proj = torch.randn(kdim, p.seqlen, generator=p._gen).div_(math.sqrt(p.seqlen)).to(p.device, p.dtype)
    mask = p.key_mask()

    def fn(q, k, v):
        q, k, v = to_bhsd(q), to_bhsd(k), to_bhsd(v)
        if mask is not None:
            k = k.masked_fill(~mask[:, :, 0, :, None], 0)
            v = v.masked_fill(~mask[:, :, 0, :, None], 0)
        kp, vp = torch.matmul(proj, k), torch.matmul(proj, v)
        return to_bhsd(F.scaled_dot_product_attention(q, kp, vp, dropout_p=p.dropout))
    return fn, None


def build_performer(p):
    """FAVOR+ with positive random features (m = 256 orthogonal-free)."""
    m = 256
    w = torch.randn(p.head_dim, m, generator=p._gen).to(p.device, torch.float32)
    scale = p.head_dim ** -0.25
    mask = p.key_mask()

    def features(x):
        x = x.float() * scale
        return torch.exp(torch.matmul(x, w) - 0.5 * (x * x).sum(-1, keepdim=True)) / math.sqrt(m)

    def fn(q, k, v):
        q, k, v = to_bhsd(q), to_bhsd(k), to_bhsd(v)
        qf, kf = features(q), features(k)
        if mask is not None:
            kf = kf.masked_fill(~mask[:, :, 0, :, None], 0)
        if p.causal:
            kv = torch.cumsum(kf[..., :, None] * v.float()[..., None, :], dim=2)  # O(s m d) memory
            num = torch.einsum("bhsm,bhsmd->bhsd", qf, kv)
            den = torch.einsum("bhsm,bhsm->bhs", qf, torch.cumsum(kf, 2))[..., None]
        else:
            kv = torch.matmul(kf.transpose(-1, -2), v.float())
            num = torch.matmul(qf, kv)
            den = torch.matmul(qf, kf.sum(2, keepdim=True).transpose(-1, -2))
        return to_bhsd((num / (den + 1e-6)).to(q.dtype))
    return fn, None


def build_linear(p):
    """Linear attention with the elu + 1 feature map (Katharopoulos et al.)."""
    mask = p.key_mask()

    def fn(q, k, v):
        q, k, v = to_bhsd(q), to_bhsd(k), to_bhsd(v)
        qf, kf = F.elu(q.float()) + 1, F.elu(k.float()) + 1
        if mask is not None:
            kf = kf.masked_fill(~mask[:, :, 0, :, None], 0)
        kv = torch.matmul(kf.transpose(-1, -2), v.float())
        num = torch.matmul(qf, kv)
        den = torch.matmul(qf, kf.sum(2, keepdim=True).transpose(-1, -2))
        return to_bhsd((num / (den + 1e-6)).to(q.dtype))
    return fn, None


def build_local(p):
    """Sliding-window attention (window 256 each side), in blocks of 256
    queries against their neighbouring 3 key blocks, so memory is O(s w)."""
    w = 256
    mask = p.key_mask()
    scale = 1.0 / math.sqrt(p.head_dim)

    def fn(q, k, v):
        q, k, v = to_bhsd(q), to_bhsd(k), to_bhsd(v)
        b, h, s, d = q.shape
        nb = -(-s // w)
        pad = nb * w - s
        qp = F.pad(q, (0, 0, 0, pad)).view(b, h, nb, w, d)
        kp = F.pad(k, (0, 0, w, pad + w))
        vp = F.pad(v, (0, 0, w, pad + w))
        kw = kp.unfold(2, 3 * w, w).transpose(-1, -2)  # (b, h, nb, 3w, d)
        vw = vp.unfold(2, 3 * w, w).transpose(-1, -2)
        sc = torch.matmul(qp, kw.transpose(-1, -2)) * scale  # (b, h, nb, w, 3w)
        qi = torch.arange(nb * w, device=q.device).view(nb, w, 1)
        kj = (torch.arange(nb, device=q.device).view(nb, 1, 1) - 1) * w + torch.arange(3 * w, device=q.device)
        bad = ((kj - qi).abs() > w) | (kj < 0) | (kj >= s)
        if p.causal:
            bad = bad | (kj > qi)
        sc = sc.masked_fill(bad, float("-inf"))
        if mask is not None:
            km = F.pad(mask[:, 0, 0, :], (w, pad + w), value=False).unfold(1, 3 * w, w)  # (b, nb, 3w)
            sc = sc.masked_fill(~km[:, None, :, None, :], float("-inf"))
        a = torch.softmax(sc.float(), -1).nan_to_num(0.0).to(q.dtype)
        a = F.dropout(a, p.dropout, training=True)
        out = torch.matmul(a, vw).view(b, h, nb * w, d)[:, :, :s]
        return to_bhsd(out)
    return fn, None


# FlashAttention-4 (the PyPI package flash-attn-4: CuTe-DSL kernels for
# Hopper and Blackwell; scripts/fetch-peer-wheels and install-peer-wheels
# bring it to the GPU machine). Its public API is flash_attn.cute's
# flash_attn_func(q, k, v, softmax_scale=None, causal=False, ...) on
# (b, s, h, d) fp16 / bf16 CUDA tensors (head_dim 8 .. 256, a multiple of
# 8, on sm90; 8 .. 128 or (192, 128) / 256 on sm100), returning (out, lse)
# as an autograd Function (backward included); no dropout. Imported once,
# when the method is first built: the import loads the CuTe DSL compiler
# (seconds), and every problem's kernels are compiled in the first,
# untimed call.
_FA4 = {}


def fa4_api():
    """(flash_attn_func, version) of FlashAttention-4, or Unsupported with
    the reason it is not importable."""
    if not _FA4:
        try:
            from flash_attn.cute import flash_attn_func
        except Exception as e:  # noqa: BLE001 (ImportError, or the DSL's own RuntimeError on a bad install)
            _FA4.update(fn=None, error=f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}")
        else:
            try:
                from importlib.metadata import version
                ver = version("flash-attn-4")
            except Exception:  # noqa: BLE001 (importable from a source tree, no metadata)
                ver = "unknown"
            _FA4.update(fn=flash_attn_func, version=ver, error="")
    if _FA4["fn"] is None:
        raise Unsupported("FlashAttention-4 is not importable (flash-attn-4's flash_attn.cute; "
                          "scripts/fetch-peer-wheels, scripts/install-peer-wheels): " + _FA4["error"])
    return _FA4["fn"], _FA4["version"]


def build_fa4(p):
    flash_attn_func, version = fa4_api()
    if p.q.device.type != "cuda":
        raise Unsupported(f"FlashAttention-4 runs on CUDA only; this run is on {p.q.device.type}")
    if p.dtype not in (torch.float16, torch.bfloat16):
        raise Unsupported(f"FlashAttention-4 takes fp16 / bf16, not {str(p.dtype).replace('torch.', '')}")
    if p.dropout > 0:
        raise Unsupported("FlashAttention-4 has no dropout")
    if p.lens is not None:
        raise Unsupported("key padding: FlashAttention-4's varlen API is not wired in this harness")
    major = torch.cuda.get_device_capability(p.q.device)[0]
    if major == 9 and not (8 <= p.head_dim <= 256 and p.head_dim % 8 == 0):
        raise Unsupported(f"FlashAttention-4 on sm90 takes head_dim 8 .. 256, a multiple of 8, not {p.head_dim}")
    causal = p.causal

    def fn(q, k, v):
        try:
            out = flash_attn_func(q, k, v, causal=causal)
        except AssertionError as e:  # FA4 says "not supported" with asserts: a reason, not a crash
            raise NotImplementedError(f"FlashAttention-4: {e}") from e
        return out[0] if isinstance(out, tuple) else out  # (out, lse)
    return Case(fn, p.pairs(), notes=dict(fa4_version=version, fa4_api="flash_attn.cute.flash_attn_func",
                                          fa4_arch=f"sm{major}x"))


def build(method, p):
    if method == "fa4":
        return build_fa4(p)
    if method == "flashattn":
        return build_flashattn(p)
    if method in FLASHATTN_KERNELS:
        return build_flashattn(p, kernels=FLASHATTN_KERNELS[method])
    if method == "flashattn-standard":
        return build_flashattn(p, "standard")
    if method == "flashattn-sparse":
        return build_flashattn_sparse(p)
    if method == "pytorch-standard":
        return build_pytorch_standard(p)
    if method in SDPA_BACKENDS:
        return build_sdpa(p, method)
    if method in SDPA_NJT:
        return build_sdpa_njt(p, method)
    if method in ("flex", "flex-sparse"):
        return build_flex(p, method == "flex-sparse")
    fn, _ = {"linformer": build_linformer, "performer": build_performer, "linear": build_linear,
             "local": build_local}[method](p)
    mask = p.key_mask()
    return Case(fn, None, notes=dict(padding_via="key mask, padded batch") if mask is not None else None)


# -------------------------------------------------------------- timing ---

class SyncWatch:
    """On a GPU, on() / off() bracket the enqueue of a timed call with
    torch.cuda.set_sync_debug_mode("warn"): every synchronising call torch
    makes in between warns, and count() says how many did (read from the
    warnings recorded while watching). A no-op off CUDA."""

    def __init__(self, device):
        self.cuda = device.type == "cuda"
        self.caught = None

    def __enter__(self):
        self._ctx = warnings.catch_warnings(record=True)
        self.caught = self._ctx.__enter__()
        warnings.simplefilter("always")
        return self

    def __exit__(self, *exc):
        self.off()
        self._ctx.__exit__(*exc)

    def on(self):
        if self.cuda:
            torch.cuda.set_sync_debug_mode("warn")

    def off(self):
        if self.cuda:
            torch.cuda.set_sync_debug_mode(0)

    def count(self):
        return sum(SYNC_WARNING in str(w.message) for w in self.caught or [])


def time_method(fn, inputs, dout, mode, args, device):
    """The one timing function of every method: returns the medians
    (fwd_s, bwd_s, fwd_bwd_s), the sample counts, the calls that outlasted
    the queue-ahead wait and the host synchronisations counted in the
    timed calls. mode "call": one forward + backward call a sample, three
    marks; "separate": a loop of forward calls, one of backward calls on
    one forward's graph (retain_graph=True), one of forward + backward
    calls. Backward: torch.autograd.grad (nothing accumulates into .grad)."""
    stamp, seconds = stopwatch(device)
    queue = QueueAhead(device, args.queue_ahead_ms)
    short = 0  # timed calls whose enqueue outlasted the queue-ahead wait
    with SyncWatch(device) as watch:
        def timed():  # the timed calls begin: count theirs only
            queue.reset()
            watch.caught.clear()

        if mode == "call":
            def step():
                queue.hold()
                watch.on()
                t0 = stamp()
                out = fn(*inputs)
                t1 = stamp()
                torch.autograd.grad(out, inputs, dout)
                t2 = stamp()
                watch.off()
                queue.done()
                return seconds(t0, t1), seconds(t1, t2), seconds(t0, t2)
            (fwd, bwd, fb), n = sample(step, args.warmup, args.repeats, args.max_seconds, timed)
            samples = dict(fwd=n, bwd=n, fwd_bwd=n)
        elif mode == "separate":
            def fwd_step():
                queue.hold()
                watch.on()
                t0 = stamp()
                fn(*inputs)
                t1 = stamp()
                watch.off()
                queue.done()
                return (seconds(t0, t1),)

            graph = []

            def bwd_step():
                if not graph:
                    graph.append(fn(*inputs))  # one forward, its graph kept for every backward call
                queue.hold()
                watch.on()
                t0 = stamp()
                torch.autograd.grad(graph[0], inputs, dout, retain_graph=True)
                t1 = stamp()
                watch.off()
                queue.done()
                return (seconds(t0, t1),)

            def fb_step():
                queue.hold()
                watch.on()
                t0 = stamp()
                out = fn(*inputs)
                torch.autograd.grad(out, inputs, dout)
                t1 = stamp()
                watch.off()
                queue.done()
                return (seconds(t0, t1),)
            syncs = 0
            res = {}
            for name, step in (("fwd", fwd_step), ("bwd", bwd_step), ("fwd_bwd", fb_step)):
                res[name] = sample(step, args.warmup, args.repeats, args.max_seconds, timed)
                syncs += watch.count()
                short += queue.short
                graph.clear()
            fwd, bwd, fb = (res[k][0][0] for k in ("fwd", "bwd", "fwd_bwd"))
            samples = {k: res[k][1] for k in res}
            return (fwd, bwd, fb), samples, short, syncs, queue.ms
        else:
            raise ValueError(f"unknown timing mode {mode!r}")
        short += queue.short
        return (fwd, bwd, fb), samples, short, watch.count(), queue.ms


def run_method(method, p, args):
    """Times forward, backward and forward + backward of one method on one
    problem; returns the result record."""
    rec = dict(method=method, seqlen=p.seqlen, batch=p.batch, heads=p.heads, head_dim=p.head_dim,
               causal=p.causal, dtype=str(p.dtype).replace("torch.", ""), dropout=p.dropout,
               key_padding=p.lens is not None, timing=args.timing, status="ok")
    if method in SPARSE:
        rec.update(density=p.sparse_density, pattern=p.pattern)
    if method in SPARSE and p.lens is not None:
        # The block mask replaces the key-padding mask: the sparse rows run
        # the same tensors with every token valid (at most --padding tokens
        # more per sequence), and the record says so.
        p = p.without_padding()
        rec["key_padding"] = False
    try:
        case = build(method, p)
    except Unsupported as e:
        rec.update(status="unsupported", reason=str(e))
        return rec
    except Exception as e:  # noqa: BLE001 (a torch without an API the builder uses, ...): said, not fatal
        rec.update(status="error", reason=f"building the method failed: {type(e).__name__}: {str(e)[:300]}")
        return rec
    rec.update(case.notes)
    if method.startswith("flashattn"):
        rec["kernels"] = case.env.get("FLASHATTN_CUDA_KERNELS", os.environ.get("FLASHATTN_CUDA_KERNELS") or "auto")
    dev = p.q.device
    # Leaf views of the problem's tensors (no copies): the gradients are
    # returned by autograd.grad, never stored in them.
    inputs = tuple(t.detach().requires_grad_(True) for t in (case.inputs or (p.q, p.k, p.v)))
    dout = case.dout if case.dout is not None else p.dout
    saved_env = {k: os.environ.get(k) for k in case.env}
    os.environ.update(case.env)
    try:
        if dev.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        # A first call, untimed: a method that cannot run this problem fails
        # here (PyTorch's "kernel not used because ..." warnings silenced,
        # the error says it), and compiles / plans are made.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            torch.autograd.grad(case.fn(*inputs), inputs, dout)
        times, samples, short, syncs, queue_ms = time_method(case.fn, inputs, dout, args.timing, args, dev)
        mem = None
        if dev.type == "cuda":
            torch.cuda.synchronize()
            mem = torch.cuda.max_memory_allocated() - base
    except torch.cuda.OutOfMemoryError:
        rec.update(status="oom")
        return rec
    except (RuntimeError, ValueError, NotImplementedError, TypeError) as e:
        msg = str(e).splitlines()[0][:300] if str(e) else type(e).__name__
        if "out of memory" in msg.lower():
            rec.update(status="oom")
        else:
            rec.update(status="unsupported", reason=f"{type(e).__name__}: {msg}")
        return rec
    except Exception as e:  # noqa: BLE001 (e.g. a compiler's AssertionError): said, the run goes on
        rec.update(status="error", reason=f"{type(e).__name__}: {str(e)[:300]}")
        return rec
    finally:
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    fwd_s, bwd_s, fb_s = times
    rec.update(fwd_ms=fwd_s * 1e3, bwd_ms=bwd_s * 1e3, fwd_bwd_ms=fb_s * 1e3, peak_extra_bytes=mem,
               samples=min(samples.values()), samples_by_pass=samples, queue_ahead_ms=queue_ms,
               queue_ahead_short=short, host_syncs=syncs)
    if case.pairs is not None and method not in APPROXIMATE:
        flop = 4.0 * p.heads * p.head_dim * case.pairs
        rec.update(fwd_tflops=flop / fwd_s / 1e12, bwd_tflops=2.5 * flop / bwd_s / 1e12,
                   fwd_bwd_tflops=3.5 * flop / fb_s / 1e12, attended_pairs=case.pairs)
    return rec


# ----------------------------------------------------------- the run ---

def environment(device):
    env = dict(date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
               python=platform.python_version(), torch=torch.__version__, host=platform.node(),
               cpu=platform.processor() or platform.machine(),
               flashattn=getattr(flashattn, "__version__", None), flashattn_import_error=FLASHATTN_IMPORT_ERROR,
               flashattn_path=getattr(flashattn, "__file__", None),
               flashattn_cuda_kernels=os.environ.get("FLASHATTN_CUDA_KERNELS") or "auto")
    try:
        env["commit"] = os.environ.get("FLASHATTN_COMMIT") or subprocess.run(
            ["git", "-C", os.path.dirname(os.path.abspath(__file__)), "rev-parse", "HEAD"],
            capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        env["commit"] = "unknown"
    try:  # the files themselves (a copied tree's .git may name another commit): scripts/source-digest
        env["source_digest"] = subprocess.run(
            [os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "scripts", "source-digest")],
            capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        env["source_digest"] = "unknown"
    if device.type == "cuda":
        env.update(gpu=torch.cuda.get_device_name(device), cuda=torch.version.cuda,
                   cudnn=torch.backends.cudnn.version())
        try:
            env["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                           capture_output=True, text=True, check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            env["driver"] = "unknown"
    return env


def int_list(s):
    return [int(x) for x in s.split(",") if x]


def float_list(s):
    return [float(x) for x in s.split(",") if x]


DTYPES = {"float16": "float16", "fp16": "float16", "f16": "float16", "bfloat16": "bfloat16", "bf16": "bfloat16",
          "float32": "float32", "fp32": "float32", "f32": "float32"}


SHORT_DTYPE = {"float16": "fp16", "bfloat16": "bf16", "float32": "fp32"}


def row_list(s):
    """"d,seqlen,causal[,dtype];..." -> [(d, causal, seqlen, dtype or None)]."""
    rows = []
    for item in s.replace(" ", "").split(";"):
        if not item:
            continue
        parts = item.split(",")
        if len(parts) not in (3, 4) or parts[2] not in ("0", "1") or (len(parts) == 4 and parts[3] not in DTYPES):
            raise argparse.ArgumentTypeError(f"expected d,seqlen,causal(0|1)[,dtype] items, got {item!r}")
        rows.append((int(parts[0]), parts[2] == "1", int(parts[1]), DTYPES[parts[3]] if len(parts) == 4 else None))
    if not rows:
        raise argparse.ArgumentTypeError("expected at least one row")
    return rows


KNOWN_METHODS = {"flashattn", "flashattn-standard", "flashattn-sparse", *FLASHATTN_KERNELS, "pytorch-standard", "flex",
                 "flex-sparse", "fa4", *SDPA_BACKENDS, *SDPA_NJT, *APPROXIMATE}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--setting", choices=sorted(SETTINGS), default="paper")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--seqlens", type=int_list)
    ap.add_argument("--head-dims", type=int_list)
    ap.add_argument("--rows", type=row_list,
                    help='"d,seqlen,causal[,dtype];...": these problems instead of head_dims x causal x seqlens')
    ap.add_argument("--batch", type=int, help="batch size (0: tokens / seqlen)")
    ap.add_argument("--tokens", type=int, help="tokens per batch when --batch is 0")
    ap.add_argument("--heads", type=int, help="heads (0: 2048 / head_dim)")
    ap.add_argument("--dtype", choices=sorted(DTYPES))
    ap.add_argument("--dropout", type=float)
    ap.add_argument("--padding", type=int, help="key padding: random lengths in [seqlen - N, seqlen] (0: none)")
    ap.add_argument("--causal", choices=["no", "yes", "both"])
    ap.add_argument("--methods", type=lambda s: s.split(","))
    ap.add_argument("--density", type=float_list,
                    help="block-sparse: shares of key blocks kept, comma-separated (default 0.25; the sparse setting "
                         "0.5,0.25,0.125,0.0625); each sparse method runs once per density and pattern")
    ap.add_argument("--patterns", type=lambda s: s.split(","),
                    help="block-sparse patterns, comma-separated: random, butterfly (see block_pattern)")
    ap.add_argument("--block", type=int, default=128, help="block-sparse block size")
    ap.add_argument("--timing", choices=["call", "separate"], help="see above (default: the setting's)")
    ap.add_argument("--queue-ahead-ms", type=float, default=5.0,
                    help="GPU busy-wait queued before each timed call (0: none; see above)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--max-seconds", type=float, default=0.0,
                    help="stop warming up / sampling a loop once it took this long (after 1 warm-up and 3 samples); "
                         "0: always --warmup and --repeats")
    ap.add_argument("--require", type=lambda s: [m for m in s.split(",") if m], default=[],
                    help="methods whose every record must be ok without host synchronisations, else exit status 1")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="the JSON path (its markdown table goes next to it, .md)")
    ap.add_argument("--out", help="a folder: writes OUT/<setting>.json and OUT/<setting>.md")
    args = ap.parse_args(argv)

    if not args.json and not args.out:
        ap.error("expected --json PATH or --out DIR")
    for key, value in dict(SETTINGS[args.setting], **({} if "density" in SETTINGS[args.setting]
                                                            else {"density": [0.25]})).items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    if args.causal in ("no", "yes", "both"):
        args.causal = {"no": [False], "yes": [True], "both": [False, True]}[args.causal]
    if args.dtype is not None:
        args.dtype = DTYPES[args.dtype]
    if not 0 <= args.dropout < 1:
        ap.error(f"--dropout: expected a value in [0, 1), got {args.dropout}")
    if not args.density or not all(0 < x <= 1 for x in args.density):
        ap.error(f"--density: expected values in (0, 1], got {args.density}")
    if not args.patterns or not all(x in ("random", "butterfly") for x in args.patterns):
        ap.error(f"--patterns: expected names from ['butterfly', 'random'], got {args.patterns}")
    if args.max_seconds < 0:
        ap.error(f"--max-seconds: expected a value >= 0, got {args.max_seconds}")
    for m in args.methods + args.require:
        if m not in KNOWN_METHODS:
            ap.error(f"--methods / --require: expected names from {sorted(KNOWN_METHODS)}, got {m!r}")
    for m in args.require:
        if m not in args.methods:
            ap.error(f"--require: {m!r} is not among --methods")
    if args.rows is not None:
        rows = [(d, c, s, dt or args.dtype or "bfloat16") for d, c, s, dt in args.rows]
    else:
        if not (args.head_dims and args.causal and args.seqlens and args.dtype):
            ap.error("expected --rows, or --head-dims, --causal, --seqlens and --dtype")
        rows = [(d, c, s, args.dtype) for d in args.head_dims for c in args.causal for s in args.seqlens]
    device = torch.device(args.device)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        json_path = args.json or os.path.join(args.out, f"{args.setting}.json")
    else:
        json_path = args.json
    md_path = os.path.splitext(json_path)[0] + ".md"

    results = []
    env = environment(device)
    config = {k: v for k, v in vars(args).items() if k not in ("json", "out")}
    config["rows"] = rows

    def save():
        # Rewritten after every record: a run cut short (a time limit, a
        # crash) still leaves what it measured.
        data = dict(tool="benchmarks/attention_bench.py", setting=args.setting, environment=env, config=config,
                    results=results)
        with open(json_path, "w") as f:
            json.dump(data, f, indent=1)
        return data

    if device.type == "cuda":  # clocks up before the first problem
        x = torch.randn(4096, 4096, device=device, dtype=torch.float16)
        start = time.perf_counter()
        while time.perf_counter() - start < 1.0:
            for _ in range(10):
                x @ x
            torch.cuda.synchronize()
        del x
    gen = torch.Generator().manual_seed(args.seed)
    failed = set()  # (method, head_dim, causal, dtype, density, pattern) out of memory: longer seqlens not tried
    for head_dim, causal, seqlen, dtype in rows:
        p = Problem(args, seqlen, head_dim, causal, dtype, device, gen)
        runs = [(m, d, pat) for m in args.methods
                for d in (args.density if m in SPARSE else [None]) for pat in (args.patterns if m in SPARSE else [None])]
        for method, density, pattern in runs:
            key = (method, head_dim, causal, dtype, density, pattern)
            if key in failed:
                rec = dict(method=method, seqlen=seqlen, head_dim=head_dim, causal=causal, dtype=dtype,
                           status="oom", reason="out of memory at a shorter seqlen")
                if density is not None:
                    rec.update(density=density, pattern=pattern)
            else:
                rec = run_method(method, p if density is None else p.with_sparsity(density, pattern), args)
                if rec["status"] == "oom":
                    failed.add(key)
            results.append(rec)
            save()
            name = method if density is None else f"{method}@{pattern}:{density:g}"
            line = f"{SHORT_DTYPE[dtype]} d={head_dim:<4}causal={int(causal)} s={seqlen:<6}{name:<30}"
            if rec["status"] == "ok":
                tf = f"  {rec['fwd_tflops']:7.1f} / {rec['bwd_tflops']:7.1f} TFLOPS" if "fwd_tflops" in rec else ""
                mem = f"  {rec['peak_extra_bytes'] / 2**20:9.1f} MiB" if rec["peak_extra_bytes"] else ""
                short = f"  ({rec['queue_ahead_short']} calls outlasted the queue-ahead wait)" \
                    if rec.get("queue_ahead_short") else ""
                print(f"{line}{rec['fwd_ms']:9.3f} {rec['bwd_ms']:9.3f} {rec['fwd_bwd_ms']:9.3f} ms{tf}{mem}{short}",
                      flush=True)
                if rec["host_syncs"]:
                    print(f"WARNING: {name}: {rec['host_syncs']} host synchronisations in its timed calls "
                          f"(torch.cuda.set_sync_debug_mode)", flush=True)
            else:
                print(f"{line}{rec['status']}: {rec.get('reason', '')}", flush=True)
        del p
        if device.type == "cuda":
            torch.cuda.empty_cache()
    data = save()
    with open(md_path, "w") as f:
        f.write(tables.markdown(data))
    print(f"wrote {json_path} and {md_path}")
    status = 0 if any(r["status"] == "ok" for r in results) else 1
    for r in results:
        if r["method"] in args.require and (r["status"] != "ok" or r.get("host_syncs")):
            print(f"FAILED (--require): {r['method']} d={r['head_dim']} causal={int(r['causal'])} s={r['seqlen']}: "
                  f"{r['status']} {r.get('reason', '')}{' host_syncs=%d' % r['host_syncs'] if r.get('host_syncs') else ''}",
                  flush=True)
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
