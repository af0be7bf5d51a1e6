"""The attention benchmark of the FlashAttention paper (its Figure 3 and
Appendix E), with flashattn and the systems a user would pick instead,
measured side by side in one process on one device.

  python benchmarks/attention_bench.py --setting paper  --json paper.json
  python benchmarks/attention_bench.py --setting modern --json modern.json
  python benchmarks/attention_bench.py --device cpu --seqlens 64,128 --batch 2 --json smoke.json

Settings:
  paper   Appendix E: batch 16, 8 heads, head_dim 64, fp16, dropout 0.1, a
          key-padding mask with random lengths in [seqlen - 20, seqlen],
          seqlens 128 .. 65536. Exact, approximate and block-sparse methods.
  modern  bf16, head_dim 64 / 128 / 256, causal and not, 16k tokens per
          batch (batch = 16384 / seqlen), heads = 2048 / head_dim, no dropout,
          no padding. Exact methods, TFLOPS.
  sparse  block-sparse against density (0.125, 0.25, 0.5) in the paper's
          shapes without dropout or padding, seqlens 1024 / 4096 / 16384:
          flashattn block-sparse, FlexAttention with the same block mask,
          dense flashattn as the density-1 reference.
Any flag given on the command line overrides the setting's value.

Every method runs forward + backward, --warmup times untimed and then
--repeats times with three marks per call (CUDA events on a GPU,
perf_counter on the CPU): the forward, backward and forward + backward times
are medians over the same calls. --max-seconds caps the wall time of each
loop (at least 1 warm-up and 3 samples), and each record says how many
samples its medians took. On a GPU each timed call is queued behind a
busy-wait kernel (--queue-ahead-ms, 5 ms; torch.cuda._sleep): the host
enqueues the forward and the backward while the GPU is still waiting, so
the events time the GPU's work and not the host's launch latency (cuDNN's
graph lookup, autograd), which would otherwise count against the short
problems of the Python methods; a record counts the calls whose enqueue
outlasted the wait (queue_ahead_short), whose times include host time.
Memory is the peak of torch's allocator during
forward + backward above what was allocated before it (inputs, dO): on a
GPU torch.cuda.max_memory_allocated, on the CPU not measured (null).
Out-of-memory is recorded as "oom" and longer sequences of that method are
not tried; a method that cannot express the problem (e.g. PyTorch's
FlashAttention backend with a key-padding mask) is recorded as
"unsupported" with the reason, never run on a different problem.

TFLOPS use the standard formula for exact attention: 4 * b * h * sq * sk * d
forward (the visible pairs only: halved for causal, the kept blocks for
block-sparse, the unpadded lengths for key padding), 2.5x for backward.
Approximate methods get runtimes only.
"""
import argparse
import datetime
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
import warnings

# The installed flashattn package, not the source folder of the bindings.
sys.path[:] = [p for p in sys.path if not os.path.abspath(p or ".").endswith(os.path.join("bindings", "python"))]

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from gpu_queue import QueueAhead  # noqa: E402

try:
    import flashattn  # noqa: E402
except ImportError as e:  # the harness still measures the peers, and says why ours is missing
    flashattn = None
    FLASHATTN_IMPORT_ERROR = str(e)
else:
    FLASHATTN_IMPORT_ERROR = ""

SETTINGS = {
    "paper": dict(batch=16, heads=8, head_dims=[64], dtype="float16", dropout=0.1, padding=20, causal=[False],
                  seqlens=[128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536], tokens=0,
                  methods=["flashattn", "flashattn-sparse", "flashattn-standard", "pytorch-standard", "sdpa-math",
                           "sdpa-flash", "sdpa-efficient", "sdpa-cudnn", "flex", "flex-sparse", "linformer",
                           "performer", "linear", "local"]),
    "modern": dict(batch=0, heads=0, head_dims=[64, 128, 256], dtype="bfloat16", dropout=0.0, padding=0,
                   causal=[False, True], seqlens=[512, 1024, 2048, 4096, 8192, 16384], tokens=16384,
                   methods=["flashattn", "sdpa-flash", "sdpa-cudnn", "sdpa-efficient", "flex"]),
    # Block-sparse against density, in the paper's shapes without dropout and
    # padding (FlexAttention has no dropout): dense flashattn is the
    # density-1 reference, FlexAttention gets the same block mask.
    "sparse": dict(batch=16, heads=8, head_dims=[64], dtype="float16", dropout=0.0, padding=0, causal=[False],
                   seqlens=[1024, 4096, 16384], tokens=0, density=[0.125, 0.25, 0.5],
                   methods=["flashattn", "flashattn-sparse", "flex-sparse"]),
}
APPROXIMATE = {"linformer", "performer", "linear", "local"}
SPARSE = {"flashattn-sparse", "flex-sparse"}


class Unsupported(Exception):
    """The method cannot express this problem; the reason goes into the JSON."""


# ------------------------------------------------------------- problem ---

class Problem:
    """One benchmark problem: dense (b, s, h, d) tensors in flash-attn layout,
    plus the key-padding lengths and the block-sparse pattern it implies."""

    def __init__(self, args, seqlen, head_dim, causal, device, gen):
        self.seqlen, self.head_dim, self.causal = seqlen, head_dim, causal
        self.batch = args.batch if args.batch > 0 else max(1, args.tokens // seqlen)
        self.heads = args.heads if args.heads > 0 else max(1, 2048 // head_dim)
        self.dtype = getattr(torch, args.dtype)
        self.dropout = args.dropout
        self.device = device
        shape = (self.batch, seqlen, self.heads, head_dim)
        self.q, self.k, self.v, self.dout = (torch.randn(shape, generator=gen).to(device, self.dtype)
                                             for _ in range(4))
        # Key padding (the paper's setting): sequence i keeps its first
        # lens[i] tokens; queries and keys past it are padding.
        if args.padding > 0:
            lo = max(1, seqlen - args.padding)
            self.lens = torch.randint(lo, seqlen + 1, (self.batch,), generator=gen)
        else:
            self.lens = None
        self.sparse_density = args.density[0]
        self.block = args.block
        self._gen = gen

    def without_padding(self):
        other = object.__new__(Problem)
        other.__dict__.update(self.__dict__, lens=None)
        return other

    def with_density(self, density):
        other = object.__new__(Problem)
        other.__dict__.update(self.__dict__, sparse_density=density)
        return other

    def pairs(self):
        """Visible (query, key) pairs of the whole batch, per head."""
        lens = self.lens.tolist() if self.lens is not None else [self.seqlen] * self.batch
        return sum(n * (n + 1) / 2 if self.causal else n * n for n in lens)

    def key_mask(self):
        """Boolean (b, 1, 1, s) mask, True = attend, or None without padding."""
        if self.lens is None:
            return None
        ar = torch.arange(self.seqlen)
        return (ar[None, :] < self.lens[:, None]).to(self.device)[:, None, None, :]

    def block_states(self):
        """Kept key blocks of each query block (bool [nqb, nkb]): the diagonal
        plus random others, density of the causal candidates as in
        flashattn-bench; the same pattern for flashattn and FlexAttention."""
        n = -(-self.seqlen // self.block)
        keep = torch.zeros(n, n, dtype=torch.bool)
        g = torch.Generator().manual_seed(1234 + self.seqlen)
        for qb in range(n):
            cand = [kb for kb in range(n) if (kb <= qb or not self.causal) and kb != qb]
            want = max(1, round(self.sparse_density * (len(cand) + 1))) - 1
            keep[qb, qb] = True
            if want > 0 and cand:
                pick = torch.randperm(len(cand), generator=g)[:want]
                keep[qb, torch.tensor(cand)[pick]] = True
        return keep


def to_bhsd(x):
    return x.transpose(1, 2)


# ------------------------------------------------------------- methods ---
# Each builder returns fn(q, k, v) -> out in (b, s, h, d) layout, plus the
# number of attended pairs its TFLOPS are counted on (None: approximate).

def build_flashattn(p, algorithm="flash"):
    if flashattn is None:
        raise Unsupported("flashattn is not installed: " + FLASHATTN_IMPORT_ERROR)
    if not flashattn.supported(p.q.device, p.dtype, p.head_dim, algorithm):
        raise Unsupported(f"flashattn.supported says no for {p.q.device.type} {p.dtype} d={p.head_dim} {algorithm}")
    if p.lens is None:
        return (lambda q, k, v: flashattn.flash_attn_func(q, k, v, dropout_p=p.dropout, causal=p.causal,
                                                          algorithm=algorithm)), p.pairs()
    # Key padding through the varlen path: only the real tokens are packed,
    # and the output is scattered back to (b, s, h, d) with zeros at padding,
    # as a model with padded batches would do. The pack/unpack copies are
    # timed too.
    lens = p.lens.to(torch.int32)
    cu = torch.zeros(p.batch + 1, dtype=torch.int32)
    cu[1:] = torch.cumsum(lens, 0)
    cu = cu.to(p.device)
    valid = p.key_mask()[:, 0, 0, :]
    max_len = int(lens.max())

    def fn(q, k, v):
        out = flashattn.flash_attn_varlen_func(q[valid], k[valid], v[valid], cu, cu, max_len, max_len,
                                               dropout_p=p.dropout, causal=p.causal, algorithm=algorithm)
        full = out.new_zeros(q.shape)
        full[valid] = out
        return full
    return fn, p.pairs()


def sparse_pairs(p, keep):
    """Visible pairs of the kept blocks (the causal diagonal blocks count
    their lower triangle), over the whole batch."""
    bs, pairs = p.block, 0.0
    for qb in range(keep.shape[0]):
        rows = min(bs, p.seqlen - qb * bs)
        for kb in keep[qb].nonzero().flatten().tolist():
            cols = min(bs, p.seqlen - kb * bs)
            pairs += rows * (rows + 1) / 2 if (p.causal and kb == qb) else rows * cols
    return pairs * p.batch


def build_flashattn_sparse(p):
    if flashattn is None:
        raise Unsupported("flashattn is not installed: " + FLASHATTN_IMPORT_ERROR)
    keep = p.block_states()
    n = keep.shape[0]
    # Kept blocks cut by the causal diagonal are partial (the element rule
    # applies inside them), every other kept block is full.
    diag = torch.eye(n, dtype=torch.bool) if p.causal else torch.zeros(n, n, dtype=torch.bool)

    def compress(states):
        count = states.sum(1).to(torch.int32)
        index = torch.zeros(n, n, dtype=torch.int32)
        for qb in range(n):
            cols = states[qb].nonzero().flatten().to(torch.int32)
            index[qb, :len(cols)] = cols
        return count[None, None].to(p.device), index[None, None].to(p.device)
    pc, pi = compress(keep & diag)
    fc, fi = compress(keep & ~diag)
    return (lambda q, k, v: flashattn.flash_attn_block_sparse_func(q, k, v, pc, pi, fc, fi, block_size=p.block,
                                                                   dropout_p=p.dropout, causal=p.causal)), \
        sparse_pairs(p, keep)


def build_pytorch_standard(p):
    """Attention as HuggingFace's GPT-2 writes it: S, softmax, dropout, PV."""
    mask = p.key_mask()
    scale = 1.0 / math.sqrt(p.head_dim)

    def fn(q, k, v):
        q, k, v = to_bhsd(q), to_bhsd(k), to_bhsd(v)
        s = torch.matmul(q, k.transpose(-1, -2)) * scale
        if p.causal:
            s = s.masked_fill(torch.ones(s.shape[-2:], dtype=torch.bool, device=s.device).triu(1), float("-inf"))
        if mask is not None:
            s = s.masked_fill(~mask, float("-inf"))
        a = torch.softmax(s.float(), dim=-1).to(q.dtype)
        a = F.dropout(a, p.dropout, training=True)
        return to_bhsd(torch.matmul(a, v))
    return fn, p.pairs()


SDPA_BACKENDS = {"sdpa-math": "MATH", "sdpa-flash": "FLASH_ATTENTION", "sdpa-efficient": "EFFICIENT_ATTENTION",
                 "sdpa-cudnn": "CUDNN_ATTENTION"}


def build_sdpa(p, name):
    from torch.nn.attention import SDPBackend, sdpa_kernel
    backend = getattr(SDPBackend, SDPA_BACKENDS[name])
    mask = p.key_mask()
    if mask is not None and p.causal:
        raise Unsupported("SDPA takes is_causal or attn_mask, not both")

    def fn(q, k, v):
        with sdpa_kernel(backend), warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "kernel not used because ..." (the error says it)
            return to_bhsd(F.scaled_dot_product_attention(to_bhsd(q), to_bhsd(k), to_bhsd(v), attn_mask=mask,
                                                          dropout_p=p.dropout, is_causal=p.causal))
    return fn, p.pairs()


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
    pairs = p.pairs()
    if sparse:
        keep = p.block_states().to(p.device)
        bs = p.block

        def mask_mod(b, h, qi, ki):
            ok = keep[qi // bs, ki // bs]
            return ok & (qi >= ki) if causal else ok
        pairs = sparse_pairs(p, keep.cpu())
    elif lens is not None:
        def mask_mod(b, h, qi, ki):
            return ki < lens[b]
    elif causal:
        def mask_mod(b, h, qi, ki):
            return qi >= ki
    else:
        mask_mod = None
    block_mask = None
    if mask_mod is not None:
        block_mask = create_block_mask(mask_mod, p.batch if lens is not None else None, None, p.seqlen, p.seqlen,
                                       device=p.device, BLOCK_SIZE=p.block)
    compiled = torch.compile(flex_attention, dynamic=False)
    return (lambda q, k, v: to_bhsd(compiled(to_bhsd(q), to_bhsd(k), to_bhsd(v), block_mask=block_mask))), pairs


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


def build(method, p):
    if method == "flashattn":
        return build_flashattn(p)
    if method == "flashattn-standard":
        return build_flashattn(p, "standard")
    if method == "flashattn-sparse":
        return build_flashattn_sparse(p)
    if method == "pytorch-standard":
        return build_pytorch_standard(p)
    if method in SDPA_BACKENDS:
        return build_sdpa(p, method)
    if method in ("flex", "flex-sparse"):
        return build_flex(p, method == "flex-sparse")
    return {"linformer": build_linformer, "performer": build_performer, "linear": build_linear,
            "local": build_local}[method](p)


# -------------------------------------------------------------- timing ---

def stopwatch(device):
    """stamp() marks a point in the device's work; seconds(a, b) is the time
    between two marks (CUDA events on a GPU, perf_counter on the CPU)."""
    if device.type == "cuda":
        def stamp():
            e = torch.cuda.Event(enable_timing=True)
            e.record()
            return e

        def seconds(a, b):
            b.synchronize()
            return a.elapsed_time(b) / 1e3
    else:
        stamp = time.perf_counter

        def seconds(a, b):
            return b - a
    return stamp, seconds


WARM_SECONDS = 0.2


def sample(step, warmup, repeats, max_seconds, timed=lambda: None):
    """`warmup` untimed calls of step(), then up to `repeats` timed ones;
    step() returns a tuple of seconds, and the result is the median of each
    component (and the number of samples). With max_seconds > 0 each of the
    two loops stops once that much wall time went into it (after one
    warm-up call and three samples at least): at 64K tokens one forward +
    backward takes seconds, and the full sweep must fit one GPU call."""
    start, calls = time.perf_counter(), 0
    # At least WARM_SECONDS of warm-up too: a few calls of a short problem
    # do not bring an idle GPU's clocks back up (e.g. after a compile).
    while warmup > 0 and (calls < warmup or time.perf_counter() - start < WARM_SECONDS):
        step()
        calls += 1
        if max_seconds > 0 and time.perf_counter() - start > max_seconds:
            break
    samples, start = [], time.perf_counter()
    timed()  # the timed calls begin
    while len(samples) < repeats:
        samples.append(step())
        if max_seconds > 0 and len(samples) >= min(3, repeats) and time.perf_counter() - start > max_seconds:
            break
    return [statistics.median(column) for column in zip(*samples)], len(samples)


def run_method(method, p, args):
    """Times forward, backward and forward + backward of one method on one
    problem; returns the result record."""
    rec = dict(method=method, seqlen=p.seqlen, batch=p.batch, heads=p.heads, head_dim=p.head_dim,
               causal=p.causal, dtype=str(p.dtype).replace("torch.", ""), dropout=p.dropout,
               key_padding=p.lens is not None, status="ok")
    if method in SPARSE:
        rec["density"] = p.sparse_density
    if method in SPARSE and p.lens is not None:
        # The block mask replaces the key-padding mask: the sparse rows run
        # the same tensors with every token valid (at most --padding tokens
        # more per sequence), and the record says so.
        p = p.without_padding()
        rec["key_padding"] = False
    try:
        fn, pairs = build(method, p)
    except Unsupported as e:
        rec.update(status="unsupported", reason=str(e))
        return rec
    dev = p.q.device
    q, k, v = (t.detach().clone().requires_grad_(True) for t in (p.q, p.k, p.v))
    stamp, seconds = stopwatch(dev)
    queue = QueueAhead(dev, args.queue_ahead_ms)

    def step():
        # One training-style call, three marks: forward, backward, and the
        # two together are medians over the same calls.
        queue.hold()
        t0 = stamp()
        out = fn(q, k, v)
        t1 = stamp()
        out.backward(p.dout)
        t2 = stamp()
        queue.done()
        return seconds(t0, t1), seconds(t1, t2), seconds(t0, t2)
    try:
        if dev.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        (fwd_s, bwd_s, fb_s), n = sample(step, args.warmup, args.repeats, args.max_seconds, queue.reset)
        mem = None
        if dev.type == "cuda":
            torch.cuda.synchronize()
            mem = torch.cuda.max_memory_allocated() - base
    except torch.cuda.OutOfMemoryError:
        rec.update(status="oom")
        return rec
    except (RuntimeError, ValueError, NotImplementedError) as e:
        msg = str(e).splitlines()[0][:300] if str(e) else type(e).__name__
        if "out of memory" in msg.lower():
            rec.update(status="oom")
        else:
            rec.update(status="unsupported", reason=f"{type(e).__name__}: {msg}")
        return rec
    finally:
        q.grad = k.grad = v.grad = None
    rec.update(fwd_ms=fwd_s * 1e3, bwd_ms=bwd_s * 1e3, fwd_bwd_ms=fb_s * 1e3, peak_extra_bytes=mem,
               samples=n, queue_ahead_ms=queue.ms, queue_ahead_short=queue.short)
    if pairs is not None and method not in APPROXIMATE:
        flop = 4.0 * p.heads * p.head_dim * pairs
        rec.update(fwd_tflops=flop / fwd_s / 1e12, bwd_tflops=2.5 * flop / bwd_s / 1e12,
                   fwd_bwd_tflops=3.5 * flop / fb_s / 1e12, attended_pairs=pairs)
    return rec


# ----------------------------------------------------------- the run ---

def environment(device):
    env = dict(date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
               python=platform.python_version(), torch=torch.__version__, host=platform.node(),
               cpu=platform.processor() or platform.machine(),
               flashattn=getattr(flashattn, "__version__", None), flashattn_import_error=FLASHATTN_IMPORT_ERROR)
    try:
        env["commit"] = os.environ.get("FLASHATTN_COMMIT") or subprocess.run(
            ["git", "-C", os.path.dirname(os.path.abspath(__file__)), "rev-parse", "HEAD"],
            capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        env["commit"] = "unknown"
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


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--setting", choices=sorted(SETTINGS), default="paper")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--seqlens", type=int_list)
    ap.add_argument("--head-dims", type=int_list)
    ap.add_argument("--batch", type=int, help="batch size (0: tokens / seqlen)")
    ap.add_argument("--tokens", type=int, help="tokens per batch when --batch is 0")
    ap.add_argument("--heads", type=int, help="heads (0: 2048 / head_dim)")
    ap.add_argument("--dtype", choices=["float16", "bfloat16", "float32"])
    ap.add_argument("--dropout", type=float)
    ap.add_argument("--padding", type=int, help="key padding: random lengths in [seqlen - N, seqlen] (0: none)")
    ap.add_argument("--causal", choices=["no", "yes", "both"])
    ap.add_argument("--methods", type=lambda s: s.split(","))
    ap.add_argument("--density", type=float_list,
                    help="block-sparse: shares of key blocks kept, comma-separated (default 0.25; the sparse setting "
                         "0.125,0.25,0.5); each sparse method runs once per density")
    ap.add_argument("--block", type=int, default=128, help="block-sparse block size")
    ap.add_argument("--queue-ahead-ms", type=float, default=5.0,
                    help="GPU busy-wait queued before each timed call (0: none; see above)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--max-seconds", type=float, default=0.0,
                    help="stop warming up / sampling a pass once it took this long (after 1 warm-up and 3 samples); "
                         "0: always --warmup and --repeats")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", required=True)
    args = ap.parse_args(argv)

    for key, value in dict(SETTINGS[args.setting], **({} if "density" in SETTINGS[args.setting]
                                                            else {"density": [0.25]})).items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    if args.causal in ("no", "yes", "both"):
        args.causal = {"no": [False], "yes": [True], "both": [False, True]}[args.causal]
    if not 0 <= args.dropout < 1:
        ap.error(f"--dropout: expected a value in [0, 1), got {args.dropout}")
    if not args.density or not all(0 < x <= 1 for x in args.density):
        ap.error(f"--density: expected values in (0, 1], got {args.density}")
    if args.max_seconds < 0:
        ap.error(f"--max-seconds: expected a value >= 0, got {args.max_seconds}")
    known = {"flashattn", "flashattn-standard", "flashattn-sparse", "pytorch-standard", "flex", "flex-sparse",
             *SDPA_BACKENDS, *APPROXIMATE}
    for m in args.methods:
        if m not in known:
            ap.error(f"--methods: expected names from {sorted(known)}, got {m!r}")
    device = torch.device(args.device)

    results = []
    env = environment(device)
    config = {k: v for k, v in vars(args).items() if k != "json"}

    def save():
        # Rewritten after every record: a run cut short (a time limit, a
        # crash) still leaves what it measured.
        with open(args.json, "w") as f:
            json.dump(dict(tool="benchmarks/attention_bench.py", setting=args.setting, environment=env,
                           config=config, results=results), f, indent=1)

    if device.type == "cuda":  # clocks up before the first problem
        x = torch.randn(4096, 4096, device=device, dtype=torch.float16)
        start = time.perf_counter()
        while time.perf_counter() - start < 1.0:
            for _ in range(10):
                x @ x
            torch.cuda.synchronize()
        del x
    gen = torch.Generator().manual_seed(args.seed)
    for head_dim in args.head_dims:
        for causal in args.causal:
            failed = set()  # (method, density) that ran out of memory: longer sequences are not tried
            for seqlen in args.seqlens:
                p = Problem(args, seqlen, head_dim, causal, device, gen)
                runs = [(m, d) for m in args.methods for d in (args.density if m in SPARSE else [None])]
                for method, density in runs:
                    if (method, density) in failed:
                        rec = dict(method=method, seqlen=seqlen, head_dim=head_dim, causal=causal,
                                   status="oom", reason="out of memory at a shorter seqlen")
                        if density is not None:
                            rec["density"] = density
                    else:
                        rec = run_method(method, p if density is None else p.with_density(density), args)
                        if rec["status"] == "oom":
                            failed.add((method, density))
                    results.append(rec)
                    save()
                    name = method if density is None else f"{method}@{density:g}"
                    line = f"d={head_dim:<4}causal={int(causal)} s={seqlen:<6}{name:<22}"
                    if rec["status"] == "ok":
                        tf = f"  {rec['fwd_tflops']:7.1f} / {rec['bwd_tflops']:7.1f} TFLOPS" \
                            if "fwd_tflops" in rec else ""
                        mem = f"  {rec['peak_extra_bytes'] / 2**20:9.1f} MiB" if rec["peak_extra_bytes"] else ""
                        short = f"  ({rec['queue_ahead_short']}/{rec['samples']} calls outlasted the queue-ahead wait)" \
                            if rec.get("queue_ahead_short") else ""
                        print(f"{line}{rec['fwd_ms']:9.3f} {rec['bwd_ms']:9.3f} {rec['fwd_bwd_ms']:9.3f} ms{tf}{mem}{short}",
                              flush=True)
                    else:
                        print(f"{line}{rec['status']}: {rec.get('reason', '')}", flush=True)
                del p
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    save()
    print(f"wrote {args.json}")
    ok = sum(r["status"] == "ok" for r in results)
    return 0 if ok > 0 else 1

if __name__ == "__main__":
    sys.exit(main())
