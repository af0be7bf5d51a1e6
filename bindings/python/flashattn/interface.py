"""flash-attn compatible functions over the flashattn operators.

Tensors are (batch, seqlen, heads, head_dim) as in flash-attn (varlen:
(total_tokens, heads, head_dim) with int32 cumulative sequence lengths).
Argument names, defaults and semantics follow flash-attn 2: causal masks are
aligned to the bottom-right corner when seqlen_q != seqlen_k, window_size =
(left, right) with -1 for unbounded, GQA/MQA when k/v have fewer heads than
q. Extensions, all keyword-only: `seed` and `generator` (dropout RNG, see
_rng_state) and `algorithm` ("flash" or "standard").

FP8 (flash-attn 3's API): q, k, v of dtype torch.float8_e4m3fn with the
keyword-only q_descale, k_descale, v_descale (float32 (batch, heads_k),
or anything that broadcasts to it; None = 1), output bfloat16, forward
only; on CUDA a GPU of compute capability 9.0; see _descale and
docs/python.md.
"""
import operator
from typing import Optional, Sequence, Tuple, Union

import torch

from ._ops import _check_inputs, _pack, _Tensor, ops

_ALGORITHMS = {"flash": 0, "standard": 1}
_NO_WINDOW = (-1, -1)  # window_size's default, recognised by identity
# The operator's overload, bound once: calling it skips the packet's lookup
# (torch.ops.flashattn.fwd(...) resolves the overload on every call).
_fwd = ops.fwd.default

# The same operator through the dispatcher's boxed entry, for eager calls on
# plain tensors (see _attention). What torch.ops adds on top of it, the
# search of every argument (list entries included) for __torch_function__
# overrides and the overload's Python frame, is a fifth of the operator's
# cost from Python (callgrind: 8.6k of 40k instructions a call). Dispatch
# (autograd, the device kernels, torch_dispatch modes, functorch, the
# profiler) is the same: both end in the dispatcher's callBoxed, with the
# GIL released, and raise the same errors.
_call_boxed = getattr(torch._C, "_dispatch_call_boxed", None)
_fwd_handle = torch._C._dispatch_find_schema_or_throw("flashattn::fwd", "") if _call_boxed else None
# Dynamo must trace the OpOverload (it treats this as True); other tracers
# run Python on tensor subclasses or under a TorchFunctionMode, which the
# checks in _attention send the torch.ops way anyway. (is_compiling() costs a
# call more: it asks torch.jit.is_scripting() first.)
_is_compiling = getattr(torch.compiler, "is_dynamo_compiling", torch.compiler.is_compiling)
_torch_function_mode = torch._C._is_torch_function_mode_enabled


def _plain_tensors(tensors) -> bool:
    # None or exactly torch.Tensor each (no subclass, which could override
    # __torch_function__).
    for t in tensors:
        if t is not None and type(t) is not _Tensor:
            return False
    return True


def _index(x, name: str, lo: int = -2 ** 63, hi: int = 2 ** 63 - 1) -> int:
    """An integer argument (operator.index: no float truncation, no
    strings), in [lo, hi] (default: int64, what the schema carries)."""
    try:
        i = operator.index(x)
    except TypeError:
        raise TypeError(f"flashattn: {name}: expected an integer, got {type(x).__name__} {x!r}") from None
    if not lo <= i <= hi:
        raise ValueError(f"flashattn: {name}: expected an integer in [{lo}, {hi}], got {i}")
    return i


def _as_int64(x: int, name: str) -> int:
    """An unsigned 64-bit seed/offset as the signed int the schema carries."""
    x = _index(x, name, 0, 2 ** 64 - 1)
    return x - 2 ** 64 if x >= 2 ** 63 else x


def _rng_state(dropout_p: float, seed, generator) -> Optional[torch.Tensor]:
    """The (seed, offset) pair of the Philox dropout stream, as a CPU int64
    tensor [2], or None without dropout.

    - seed=int or seed=(seed, offset): used as given (offset 0 for an int):
      the dropout mask is then fully reproducible and equals
      flashattn.dropout_mask(seed, offset, ...).
    - otherwise both are drawn from `generator` (a CPU torch.Generator;
      torch.default_generator when None, so torch.manual_seed makes runs
      repeatable). A generator object breaks torch.compile's graph; the
      default one does not.
    """
    if dropout_p == 0.0:
        return None
    if seed is not None:
        if isinstance(seed, int):
            s, o = seed, 0
        elif isinstance(seed, (tuple, list)) and len(seed) == 2:
            s, o = seed
        else:
            raise TypeError(f"flashattn: seed: expected an integer or a (seed, offset) pair, got {seed!r}")
        return torch.tensor([_as_int64(s, "seed"), _as_int64(o, "seed offset")], dtype=torch.int64)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"flashattn: generator: expected a torch.Generator or None, got {type(generator).__name__}")
    return torch.randint(0, 2 ** 63 - 1, (2,), dtype=torch.int64, generator=generator, device="cpu")


def _last_dim_contiguous(x: torch.Tensor) -> torch.Tensor:
    # The library takes any strides but a strided last dimension and heads
    # that overlap (stride_head < head_dim, e.g. KV heads broadcast by
    # expand()): such an input is copied.
    if x.stride(-1) == 1 and (x.shape[-2] <= 1 or x.stride(-2) >= x.shape[-1]):
        return x
    return x.contiguous()


def _unsupported(softcap, alibi_slopes):
    if softcap != 0.0:
        raise NotImplementedError(f"flashattn: softcap: expected 0.0 (soft-capping is not supported), got {softcap}")
    if alibi_slopes is not None:
        raise NotImplementedError("flashattn: alibi_slopes: expected None (ALiBi is not supported), got a value")


def _window(window_size: Sequence[int]) -> Tuple[int, int]:
    if window_size is _NO_WINDOW:  # the default, by identity: no len() / int() calls
        return -1, -1
    if not isinstance(window_size, (tuple, list)):
        raise TypeError(f"flashattn: window_size: expected (left, right), got {type(window_size).__name__} "
                        f"{window_size!r}")
    if len(window_size) != 2:
        raise ValueError(f"flashattn: window_size: expected (left, right), got {window_size!r}")
    return _window_side(window_size[0]), _window_side(window_size[1])


def _window_side(x) -> int:
    # -1 = unbounded, and any value at least the sequence length is
    # unbounded too; below -1 is the library's error (window_left / _right).
    return _index(x, "window_size")


def _real(x, name: str) -> float:
    # float() would also parse strings ("0.1"): only numbers are accepted.
    if isinstance(x, (str, bytes, bytearray)):
        raise TypeError(f"flashattn: {name}: expected a number, got {type(x).__name__} {x!r}")
    try:
        return float(x)
    except (TypeError, ValueError):
        raise TypeError(f"flashattn: {name}: expected a number, got {type(x).__name__} {x!r}") from None


def _algorithm(algorithm: str) -> int:
    if not isinstance(algorithm, str) or algorithm not in _ALGORITHMS:
        raise ValueError(f"flashattn: algorithm: expected 'flash' or 'standard', got {algorithm!r}")
    return _ALGORITHMS[algorithm]


def _block_size(block_size) -> Tuple[int, int]:
    """block_size: an int (block_q = block_k) or a (block_q, block_k) pair."""
    if isinstance(block_size, (tuple, list)):
        if len(block_size) != 2:
            raise ValueError(f"flashattn: block_size: expected an integer or (block_q, block_k), got {block_size!r}")
        return _index(block_size[0], "block_size[0]"), _index(block_size[1], "block_size[1]")
    b = _index(block_size, "block_size")
    return b, b


def _attention(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p, softmax_scale, causal,
               window_size, deterministic, return_attn_probs, seed, generator, algorithm, block_mask, block_size):
    # Positional parameters only, as every entry point calls this once a
    # call: keywords cost more to pass (callgrind). max_seqlen_q / _k and
    # block_size come as ints from the callers.
    #
    # Eager calls whose tensors are all exactly torch.Tensor, with no
    # TorchFunctionMode active, take the boxed entry (_call_boxed): torch.ops
    # would search them for __torch_function__ overrides and find none, as
    # the other arguments are Python ints, floats, bools and None, built
    # below. Those calls reach the kernels, which check what _check_inputs
    # does (dims, dtypes, devices: bindings/torch/ops.cpp and the library,
    # with their messages; the fake kernel for meta tensors), so it is
    # skipped there (7k instructions a call, callgrind). Everything else,
    # torch.compile's tracing included (_is_compiling() is a constant there,
    # and Dynamo traces the OpOverload), is checked here and calls the
    # operator as such.
    boxed = (not _is_compiling() and _call_boxed is not None and type(q) is _Tensor and type(k) is _Tensor
             and type(v) is _Tensor and not _torch_function_mode()
             and (cu_seqlens_q is None or _plain_tensors((cu_seqlens_q, cu_seqlens_k)))
             and (block_mask is None or _plain_tensors(block_mask)))
    if not boxed:
        _check_inputs(q, k, v, 4 if cu_seqlens_q is None else 3)
    window_left, window_right = _window(window_size)
    if type(dropout_p) is not float:
        dropout_p = _real(dropout_p, "dropout_p")
    if dropout_p == 0.0:
        rng_state = None
    else:
        rng_state = _rng_state(dropout_p, seed, generator)
        if boxed and type(rng_state) is not _Tensor:  # a torch_dispatch mode may have made a subclass
            boxed = False
            _check_inputs(q, k, v, 4 if cu_seqlens_q is None else 3)
    if block_mask is None:
        kv_num_blocks = kv_indices = full_kv_num_blocks = full_kv_indices = None
        block_q = block_k = 128
    else:
        kv_num_blocks, kv_indices, full_kv_num_blocks, full_kv_indices = block_mask
        block_q, block_k = _block_size(block_size)
    # The conversions of pack_options, skipped where the value already has
    # its type (bool() / float() cost as much as a small function call).
    if causal is not True and causal is not False:
        causal = bool(causal)
    if deterministic is not True and deterministic is not False:
        deterministic = bool(deterministic)
    if softmax_scale is not None and type(softmax_scale) is not float:
        softmax_scale = _real(softmax_scale, "softmax_scale")
    # is_contiguous() first: it costs a third of stride(-1) (callgrind).
    q = q if q.is_contiguous() else _last_dim_contiguous(q)
    k = k if k.is_contiguous() else _last_dim_contiguous(k)
    v = v if v.is_contiguous() else _last_dim_contiguous(v)
    options = _pack(cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p, softmax_scale, causal,
                    window_left, window_right, rng_state, kv_num_blocks, kv_indices, full_kv_num_blocks,
                    full_kv_indices, block_q, block_k, 0 if algorithm == "flash" else _algorithm(algorithm),
                    deterministic)
    if boxed:
        out, lse = _call_boxed(_fwd_handle, q, k, v, *options)
    else:
        out, lse = _fwd(q, k, v, *options)
    if return_attn_probs:
        # flash-attn returns (out, softmax_lse, S_dmask); the attention
        # matrix is never materialised here, so the third element is the
        # dropout RNG state instead (see _rng_state), None without dropout.
        return out, lse, rng_state
    return out


def _descale(x, name: str, batch: int, heads_k: int, q):
    """An FP8 descale argument as the operator takes it: None, or a float32
    tensor on q's device broadcast to (batch, heads_k) and made contiguous
    (a scalar tensor is one factor for all; (batch, 1) one a sequence). The
    real value of an element is its e4m3 value times the factor of its
    sequence and KV head; a query head uses its KV head's factor, as in
    flash-attn 3."""
    if x is None:
        return None
    if not isinstance(x, _Tensor):
        raise TypeError(f"flashattn: {name}: expected a float32 tensor or None, got {type(x).__name__}")
    if x.dtype != torch.float32:
        raise ValueError(f"flashattn: {name}.dtype: expected float32, got {x.dtype}")
    if x.device != q.device:
        raise ValueError(f"flashattn: {name}.device: expected the device of q ({q.device}), got {x.device}")
    try:
        return torch.broadcast_to(x, (batch, heads_k)).contiguous()
    except RuntimeError:
        raise ValueError(f"flashattn: {name}: expected a shape that broadcasts to (batch, heads_k) = "
                         f"({batch}, {heads_k}), got {list(x.shape)}") from None


def _attention_fp8(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p, softmax_scale, causal,
                   window_size, return_attn_probs, algorithm, q_descale, k_descale, v_descale, block_mask=None,
                   block_size=128):
    """The FP8 forward (fwd_fp8): no autograd formula and no dropout (no RNG
    state is drawn, so dropout_p is checked here). The library checks the
    rest (descales with other dtypes, o's dtype, head_dim, algorithm, the
    GPU) with its messages."""
    varlen = cu_seqlens_q is not None
    _check_inputs(q, k, v, 3 if varlen else 4)
    batch = cu_seqlens_q.shape[0] - 1 if varlen else q.shape[0]
    heads_k = k.shape[-2]
    descales = [_descale(x, n, batch, heads_k, q) for x, n in ((q_descale, "q_descale"), (k_descale, "k_descale"),
                                                               (v_descale, "v_descale"))]
    window_left, window_right = _window(window_size)
    dropout_p = _real(dropout_p, "dropout_p")
    if dropout_p != 0.0:
        raise ValueError(f"flashattn: dropout_p: expected 0 with float8_e4m3fn inputs (the FP8 forward has no "
                         f"dropout), got {dropout_p}")
    block_mask = block_mask or (None, None, None, None)
    block_q, block_k = _block_size(block_size)
    options = _pack(cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, 0.0,
                    None if softmax_scale is None else _real(softmax_scale, "softmax_scale"), bool(causal),
                    window_left, window_right, None, *block_mask, block_q, block_k, _algorithm(algorithm), False)
    out, lse = ops.fwd_fp8.default(_last_dim_contiguous(q), _last_dim_contiguous(k), _last_dim_contiguous(v),
                                   *descales, *options)
    if return_attn_probs:
        return out, lse, None
    return out


def flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False, window_size=_NO_WINDOW,
                    softcap=0.0, alibi_slopes=None, deterministic=False, return_attn_probs=False, *,
                    seed=None, generator=None, algorithm="flash", q_descale=None, k_descale=None, v_descale=None):
    """Attention over (batch, seqlen, heads, head_dim) tensors.

    Returns out (the shape of q), or (out, softmax_lse [batch, heads, seqlen_q]
    float32, rng_state) with return_attn_probs=True.

    FP8: q, k, v of dtype torch.float8_e4m3fn give a bfloat16 out, with the
    descales (flash-attn 3's q_descale, k_descale, v_descale; see
    _descale). Forward only; dropout_p must be 0. CPU tensors run (the CPU
    computes in float32 from the exactly dequantised inputs). CUDA tensors
    run the Hopper FP8 kernel on a GPU of compute capability 9.0 (H100,
    H200): head_dim 64, 128 or 256, algorithm "flash", causal, windows,
    GQA, varlen and (flash_attn_block_sparse_func) block masks; P is
    rounded to e4m3 for the PV product (as flash-attn 3). Other GPUs raise
    ValueError naming ctx.device.
    """
    if softcap != 0.0 or alibi_slopes is not None:
        _unsupported(softcap, alibi_slopes)
    if q_descale is not None or k_descale is not None or v_descale is not None:
        return _attention_fp8(q, k, v, None, None, 0, 0, dropout_p, softmax_scale, causal, window_size,
                              return_attn_probs, algorithm, q_descale, k_descale, v_descale)
    return _attention(q, k, v, None, None, 0, 0, dropout_p, softmax_scale, causal, window_size, deterministic,
                      return_attn_probs, seed, generator, algorithm, None, None)


def flash_attn_qkvpacked_func(qkv, dropout_p=0.0, softmax_scale=None, causal=False, window_size=_NO_WINDOW,
                              softcap=0.0, alibi_slopes=None, deterministic=False, return_attn_probs=False, *,
                              seed=None, generator=None, algorithm="flash"):
    """qkv: (batch, seqlen, 3, heads, head_dim). The views are passed with
    their strides (no copy), and the gradient flows back into qkv."""
    if not isinstance(qkv, _Tensor):
        raise TypeError(f"flashattn: qkv: expected a torch.Tensor, got {type(qkv).__name__}")
    if qkv.dim() != 5 or qkv.shape[2] != 3:
        raise ValueError(f"flashattn: qkv: expected shape (batch, seqlen, 3, heads, head_dim), got {tuple(qkv.shape)}")
    q, k, v = qkv.unbind(2)
    return flash_attn_func(q, k, v, dropout_p, softmax_scale, causal, window_size, softcap, alibi_slopes,
                           deterministic, return_attn_probs, seed=seed, generator=generator, algorithm=algorithm)


def flash_attn_kvpacked_func(q, kv, dropout_p=0.0, softmax_scale=None, causal=False, window_size=_NO_WINDOW,
                             softcap=0.0, alibi_slopes=None, deterministic=False, return_attn_probs=False, *,
                             seed=None, generator=None, algorithm="flash"):
    """kv: (batch, seqlen_k, 2, heads_k, head_dim)."""
    if not isinstance(kv, _Tensor):
        raise TypeError(f"flashattn: kv: expected a torch.Tensor, got {type(kv).__name__}")
    if kv.dim() != 5 or kv.shape[2] != 2:
        raise ValueError(f"flashattn: kv: expected shape (batch, seqlen, 2, heads, head_dim), got {tuple(kv.shape)}")
    k, v = kv.unbind(2)
    return flash_attn_func(q, k, v, dropout_p, softmax_scale, causal, window_size, softcap, alibi_slopes,
                           deterministic, return_attn_probs, seed=seed, generator=generator, algorithm=algorithm)


def flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p=0.0,
                           softmax_scale=None, causal=False, window_size=_NO_WINDOW, softcap=0.0,
                           alibi_slopes=None, deterministic=False, return_attn_probs=False, block_table=None, *,
                           seed=None, generator=None, algorithm="flash", q_descale=None, k_descale=None,
                           v_descale=None):
    """Packed variable-length batch: q (total_q, heads, head_dim), k/v
    (total_k, heads_k, head_dim); sequence b owns rows
    [cu_seqlens_q[b], cu_seqlens_q[b+1]) of q. cu_seqlens_* are int32 on the
    device of q. softmax_lse is [heads, total_q]. The dropout mask of
    sequence b uses batch index b and positions inside the sequence. FP8
    as flash_attn_func, the descales (num_sequences, heads_k)."""
    _unsupported(softcap, alibi_slopes)
    if block_table is not None:
        raise NotImplementedError("flashattn: block_table: expected None (paged KV caches are read by "
                                  "flash_attn_with_kvcache only), got a value")
    for name, t in (("cu_seqlens_q", cu_seqlens_q), ("cu_seqlens_k", cu_seqlens_k)):
        if not isinstance(t, torch.Tensor) or t.dtype != torch.int32 or t.dim() != 1:
            got = f"{t.dtype} {tuple(t.shape)}" if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"flashattn: {name}: expected a 1-D int32 tensor, got {got}")
    if q_descale is not None or k_descale is not None or v_descale is not None:
        return _attention_fp8(q, k, v, cu_seqlens_q.contiguous(), cu_seqlens_k.contiguous(),
                              _index(max_seqlen_q, "max_seqlen_q"), _index(max_seqlen_k, "max_seqlen_k"), dropout_p,
                              softmax_scale, causal, window_size, return_attn_probs, algorithm, q_descale, k_descale,
                              v_descale)
    return _attention(q, k, v, cu_seqlens_q.contiguous(), cu_seqlens_k.contiguous(), _index(max_seqlen_q, "max_seqlen_q"),
                      _index(max_seqlen_k, "max_seqlen_k"), dropout_p, softmax_scale, causal, window_size,
                      deterministic, return_attn_probs, seed, generator, algorithm, None, None)


def flash_attn_block_sparse_func(q, k, v, kv_num_blocks, kv_indices, full_kv_num_blocks=None, full_kv_indices=None,
                                 block_size: Union[int, Tuple[int, int]] = 128, dropout_p=0.0, softmax_scale=None,
                                 causal=False, window_size=_NO_WINDOW, deterministic=False, return_attn_probs=False,
                                 *, seed=None, generator=None, algorithm="flash", q_descale=None, k_descale=None,
                                 v_descale=None):
    """Block-sparse attention with a FlexAttention-style compressed mask.

    Queries are cut into blocks of block_q rows, keys into blocks of block_k
    columns (block_size = block_q = block_k, or (block_q, block_k)). For query
    block i of (batch b, head h), the key blocks
      kv_indices[b, h, i, :kv_num_blocks[b, h, i]]            are "partial":
        attended with the causal / window rule applied to each element;
      full_kv_indices[b, h, i, :full_kv_num_blocks[b, h, i]]  are "full":
        attended with no element mask;
    every other key block is skipped. kv_num_blocks: int32 [B, H, num_q_blocks],
    kv_indices: int32 [B, H, num_q_blocks, num_kv_blocks] with B and H equal
    to the batch / query heads or 1 (broadcast). A torch FlexAttention
    BlockMask converts with flashattn.block_mask_args(block_mask). Note that
    FlexAttention applies its mask_mod inside partial blocks; here the
    partial blocks get the causal / window rule of this call. FP8 as
    flash_attn_func (float8_e4m3fn q, k, v; the descales (batch, heads_k)).
    """
    def int32(t, name):
        if t is None:
            return None
        if not isinstance(t, torch.Tensor) or t.dtype != torch.int32:
            got = t.dtype if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"flashattn: {name}: expected an int32 tensor, got {got}")
        return t.contiguous()

    mask = (int32(kv_num_blocks, "kv_num_blocks"), int32(kv_indices, "kv_indices"),
            int32(full_kv_num_blocks, "full_kv_num_blocks"), int32(full_kv_indices, "full_kv_indices"))
    if q_descale is not None or k_descale is not None or v_descale is not None:
        return _attention_fp8(q, k, v, None, None, 0, 0, dropout_p, softmax_scale, causal, window_size,
                              return_attn_probs, algorithm, q_descale, k_descale, v_descale, mask, block_size)
    return _attention(q, k, v, None, None, 0, 0, dropout_p, softmax_scale, causal, window_size, deterministic,
                      return_attn_probs, seed, generator, algorithm, mask, block_size)


def block_mask_args(block_mask) -> dict:
    """The keyword arguments of flash_attn_block_sparse_func for a torch
    FlexAttention BlockMask (torch.nn.attention.flex_attention.BlockMask)."""
    return dict(kv_num_blocks=block_mask.kv_num_blocks.to(torch.int32),
                kv_indices=block_mask.kv_indices.to(torch.int32),
                full_kv_num_blocks=None if block_mask.full_kv_num_blocks is None
                else block_mask.full_kv_num_blocks.to(torch.int32),
                full_kv_indices=None if block_mask.full_kv_indices is None
                else block_mask.full_kv_indices.to(torch.int32),
                block_size=tuple(block_mask.BLOCK_SIZE))


def flash_attn_with_kvcache(q, k_cache, v_cache, k=None, v=None, rotary_cos=None, rotary_sin=None,
                            cache_seqlens: Optional[Union[int, torch.Tensor]] = None, cache_batch_idx=None,
                            cache_leftpad=None, block_table=None, softmax_scale=None, causal=False,
                            window_size=_NO_WINDOW, softcap=0.0, rotary_interleaved=True, alibi_slopes=None,
                            num_splits=0, return_softmax_lse=False):
    """Attention over a KV cache, as flash-attn's flash_attn_with_kvcache
    (inference: decode, speculative and chunked prefill). No gradient.

    q: (batch, seqlen_q, heads, head_dim). The cache is contiguous
    (batch_cache, seqlen_cache, heads_k, head_dim), or paged
    (num_blocks, page_size, heads_k, head_dim) with block_table int32
    (batch, max_blocks_per_seq) giving each sequence's pages in order
    (page_size a multiple of 16 in [16, 256]).
    cache_seqlens (int32 (batch,) or an int): each sequence's cache length
    BEFORE this call; None means the whole cache (then k, v cannot be
    appended). k, v (batch, seqlen_new, heads_k, head_dim), when given, are
    written into k_cache / v_cache IN PLACE at positions cache_seqlens ..
    cache_seqlens + seqlen_new - 1 (the caller advances its own lengths).
    q then attends to the cache_seqlens + seqlen_new entries of its
    sequence; causal / window_size are aligned to the bottom-right corner
    (query row i sees key j <= cache_seqlens + seqlen_new - seqlen_q + i).
    rotary_cos / rotary_sin (seqlen_ro, rotary_dim / 2), float32 or q's
    dtype: k is rotated at positions cache_seqlens + t before it is stored;
    q at cache_seqlens + i when causal or windowed, else at cache_seqlens
    for every row. rotary_interleaved: pairs (0, 1), (2, 3) ... (GPT-J)
    rather than the two halves (GPT-NeoX). cache_batch_idx (int32 (batch,))
    picks the cache row of each sequence (contiguous caches only).
    num_splits: split-KV pieces per (sequence, KV head), 0 = heuristic.
    Returns out, or (out, softmax_lse [batch, heads, seqlen_q] float32).
    CPU and CUDA tensors (CUDA: f16 / bf16, head_dim 64, 128 or 256).
    """
    _unsupported(softcap, alibi_slopes)
    if cache_leftpad is not None:
        raise NotImplementedError("flashattn: cache_leftpad: expected None (left padding is not supported), got a value")
    _check_inputs(q, k_cache, v_cache, 4, ("q", "k_cache", "v_cache"))
    # The op has no backward: a result that autograd would record would
    # silently give no gradient (PyTorch only warns at backward time).
    if torch.is_grad_enabled():
        for name, t in (("q", q), ("k", k), ("v", v), ("k_cache", k_cache), ("v_cache", v_cache)):
            if isinstance(t, _Tensor) and t.requires_grad:
                raise ValueError(f"flashattn: {name}: flash_attn_with_kvcache has no backward; expected a tensor that "
                                 f"does not require grad (call it under torch.no_grad() or torch.inference_mode(), "
                                 f"or detach it), got requires_grad=True")
    for name, t in (("k_cache", k_cache), ("v_cache", v_cache)):
        if t.stride(-1) != 1:
            raise ValueError(f"flashattn: {name}: expected a contiguous last dimension (it is written in place), "
                             f"got stride {t.stride(-1)}")
    batch = q.shape[0]

    def int32(t, name):
        if t is None:
            return None
        if not isinstance(t, _Tensor) or t.dtype not in (torch.int32, torch.int64):
            got = t.dtype if isinstance(t, _Tensor) else type(t).__name__
            raise ValueError(f"flashattn: {name}: expected an int32 tensor, got {got}")
        if t.dtype == torch.int64 and t.device.type == "cpu" and t.numel() > 0:
            # A value past int32 would wrap into range. On the CPU, where the
            # library checks the contents anyway, say so; on CUDA the
            # contents are not read on the host (flashattn.h, KvCacheArgs).
            lo, hi = t.min().item(), t.max().item()
            if lo < -2 ** 31 or hi >= 2 ** 31:
                raise ValueError(f"flashattn: {name}: expected int32 values, got {hi if hi >= 2 ** 31 else lo}")
        return t.to(torch.int32).contiguous()

    for name, t in (("k", k), ("v", v), ("rotary_cos", rotary_cos), ("rotary_sin", rotary_sin)):
        if t is not None and not isinstance(t, _Tensor):
            raise TypeError(f"flashattn: {name}: expected a torch.Tensor or None, got {type(t).__name__}")
    if (k is None) != (v is None):
        raise ValueError("flashattn: k / v: expected both or neither, got only one")
    if (rotary_cos is None) != (rotary_sin is None):
        raise ValueError("flashattn: rotary_cos / rotary_sin: expected both or neither, got only one")
    block_table = int32(block_table, "block_table")
    if block_table is not None and block_table.dim() != 2:
        raise ValueError(f"flashattn: block_table: expected a 2-D tensor (batch, max_blocks_per_seq), got shape "
                         f"{list(block_table.shape)}")
    if cache_seqlens is None:
        if k is not None:
            raise ValueError("flashattn: cache_seqlens: expected the cache lengths before the append (k and v are "
                             "appended at those positions), got None")
        cache_seqlens = k_cache.shape[1] * (block_table.shape[1] if block_table is not None else 1)
    if not isinstance(cache_seqlens, _Tensor):
        cache_seqlens = torch.full((batch,), _index(cache_seqlens, "cache_seqlens", -2 ** 31, 2 ** 31 - 1),
                                   dtype=torch.int32, device=q.device)
    if rotary_cos is not None:
        rotary_cos, rotary_sin = rotary_cos.contiguous(), rotary_sin.contiguous()
    window_left, window_right = _window(window_size)
    out, lse = ops.fwd_kvcache.default(
        _last_dim_contiguous(q), k_cache, v_cache, None if k is None else _last_dim_contiguous(k),
        None if v is None else _last_dim_contiguous(v), int32(cache_seqlens, "cache_seqlens"),
        block_table, int32(cache_batch_idx, "cache_batch_idx"), rotary_cos, rotary_sin,
        bool(rotary_interleaved), None if softmax_scale is None else _real(softmax_scale, "softmax_scale"),
        bool(causal), window_left, window_right, _index(num_splits, "num_splits"))
    if k is not None and not k_cache.is_inference():
        # The caches were written in place: tell autograd's version counters,
        # so that a graph that saved them before notices (inference tensors
        # have none).
        torch.autograd.graph.increment_version(k_cache)
        torch.autograd.graph.increment_version(v_cache)
    return (out, lse) if return_softmax_lse else out


def dropout_mask(seed: int, offset: int, dropout_p: float, batch: int, heads_q: int, head: int, rows: int,
                 cols: int) -> torch.Tensor:
    """The dropout keep-mask (bool [rows, cols], True = kept and scaled by
    1/(1-p)) that every backend applies to the attention matrix of sequence
    `batch`, query head `head` of `heads_q`, for rows / cols positions
    inside the sequence. Bit-identical to the kernels (same Philox stream)."""
    return ops.dropout_mask(_as_int64(seed, "seed"), _as_int64(offset, "offset"), _real(dropout_p, "dropout_p"),
                            _index(batch, "batch"), _index(heads_q, "heads_q"), _index(head, "head"),
                            _index(rows, "rows"), _index(cols, "cols"))


def supported(device, dtype: torch.dtype, head_dim: int, algorithm: str = "flash") -> bool:
    """Whether this build runs attention for (device, dtype, head_dim)."""
    device_type = torch.device(device).type
    return bool(ops.supports(device_type, dtype, int(head_dim), _algorithm(algorithm)))


def built_with_cuda() -> bool:
    """Whether CUDA tensors are served by this build."""
    return bool(ops.built_with_cuda())
