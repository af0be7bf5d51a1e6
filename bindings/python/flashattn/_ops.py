"""Loads the operator library and registers what PyTorch needs besides the
C++ kernels and their C++ autograd formula (bindings/torch/ops.cpp): fake
(meta) kernels for tracing.

The operators (schemas in bindings/torch/ops.cpp):
  torch.ops.flashattn.fwd(q, k, v, *options) -> (out, lse)
  torch.ops.flashattn.bwd(dout, q, k, v, out, lse, *options) -> (dq, dk, dv)
  torch.ops.flashattn.fwd_fp8(q, k, v, q_descale, k_descale, v_descale, *options) -> (out, lse)
  torch.ops.flashattn.fwd_kvcache(...) -> (out, lse)   (flash_attn_with_kvcache's; schema in ops.cpp)
with options = pack_options(...) = (option_tensors, option_ints, dropout_p,
softmax_scale): the 18 options packed into four arguments (a Python call
into a custom op pays per argument), in the order of TENSOR_OPTIONS and
INT_OPTIONS below (option_tensors may also be [], all None), for example
  torch.ops.flashattn.fwd(q, k, v, *pack_options(causal=True))
"""
import glob
import os

import torch

_here = os.path.dirname(os.path.abspath(__file__))
_libs = glob.glob(os.path.join(_here, "_flashattn_ops*.so"))
if not _libs:
    raise ImportError(
        f"flashattn: the operator library _flashattn_ops.so is missing from {_here}; "
        "install the package (pip install --no-build-isolation bindings/python) instead of "
        "importing it from the source tree")
torch.ops.load_library(_libs[0])

ops = torch.ops.flashattn

# The packed options' order, that of FLASHATTN_TENSOR_OPTIONS /
# FLASHATTN_INT_OPTIONS in bindings/torch/ops.cpp (checked at import, below).
TENSOR_OPTIONS = ("cu_seqlens_q", "cu_seqlens_k", "rng_state", "kv_num_blocks", "kv_indices", "full_kv_num_blocks",
                  "full_kv_indices")
INT_OPTIONS = ("max_seqlen_q", "max_seqlen_k", "causal", "window_left", "window_right", "block_q", "block_k",
               "algorithm", "deterministic")
_CU_SEQLENS_Q = TENSOR_OPTIONS.index("cu_seqlens_q")


def pack_options(cu_seqlens_q=None, cu_seqlens_k=None, max_seqlen_q=0, max_seqlen_k=0, dropout_p=0.0,
                 softmax_scale=None, causal=False, window_left=-1, window_right=-1, rng_state=None,
                 kv_num_blocks=None, kv_indices=None, full_kv_num_blocks=None, full_kv_indices=None, block_q=128,
                 block_k=128, algorithm=0, deterministic=False):
    """The 18 options of fwd / bwd as their last four arguments:
    (option_tensors, option_ints, dropout_p, softmax_scale). The defaults are
    those of a dense call without masks or dropout; algorithm is 0 (flash)
    or 1 (standard). option_tensors is [] when all seven are None (the
    operators read [] as all None; it costs a call less to convert)."""
    # bools ride in the int list as they are (torch takes them for int[]).
    return _pack(cu_seqlens_q, cu_seqlens_k, int(max_seqlen_q), int(max_seqlen_k), float(dropout_p),
                 None if softmax_scale is None else float(softmax_scale), bool(causal), window_left, window_right,
                 rng_state, kv_num_blocks, kv_indices, full_kv_num_blocks, full_kv_indices, int(block_q),
                 int(block_k), algorithm, bool(deterministic))


def _pack(cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p, softmax_scale, causal, window_left,
          window_right, rng_state, kv_num_blocks, kv_indices, full_kv_num_blocks, full_kv_indices, block_q, block_k,
          algorithm, deterministic):
    """pack_options without its conversions, for callers whose values are
    already int / bool / float (interface.py, where every call counts: the
    conversions cost about as much as the rest of the packing, callgrind).
    The one place that writes the lists' order; _check_packing holds it to
    TENSOR_OPTIONS / INT_OPTIONS. Positional only, for speed."""
    if (cu_seqlens_q is None and cu_seqlens_k is None and rng_state is None and kv_num_blocks is None
            and kv_indices is None and full_kv_num_blocks is None and full_kv_indices is None):
        tensors = []
    else:
        tensors = [cu_seqlens_q, cu_seqlens_k, rng_state, kv_num_blocks, kv_indices, full_kv_num_blocks,
                   full_kv_indices]
    return (tensors, [max_seqlen_q, max_seqlen_k, causal, window_left, window_right, block_q, block_k, algorithm,
                      deterministic], dropout_p, softmax_scale)


def _check_packing():
    # The C++ side's order against the names above, then pack_options against
    # the names (each option changed on its own must land at its own index),
    # so that a change on one side fails at import, not as wrong masks later.
    names = tuple(tuple(n) for n in ops.option_names())
    if names != (TENSOR_OPTIONS, INT_OPTIONS):
        raise ImportError(f"flashattn: the packed options of {_libs[0]} are {names}, expected "
                          f"{(TENSOR_OPTIONS, INT_OPTIONS)}; rebuild the package")
    marker = object()
    if pack_options()[0] != []:
        raise ImportError("flashattn: pack_options() does not give [] for option_tensors without tensors")
    default_ints = pack_options()[1]
    for j, name in enumerate(TENSOR_OPTIONS):
        tensors = pack_options(**{name: marker})[0]
        if [i for i, t in enumerate(tensors) if t is marker] != [j] or len(tensors) != len(TENSOR_OPTIONS):
            raise ImportError(f"flashattn: pack_options does not put {name} at option_tensors[{j}]")
    for j, name in enumerate(INT_OPTIONS):
        ints = pack_options(**{name: 7})[1]  # 7: no option's default, and True for the bools
        if [i for i, (a, b) in enumerate(zip(ints, default_ints)) if a != b] != [j] or len(ints) != len(INT_OPTIONS):
            raise ImportError(f"flashattn: pack_options does not put {name} at option_ints[{j}]")


_check_packing()


_Tensor = torch.Tensor
_FP8 = torch.float8_e4m3fn
_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64, _FP8)


def _check_inputs(q, k, v, ndim: int, names=("q", "k", "v")):
    """What flash_attn_func and friends check of q, k, v before a call the
    kernels do not see first (tracing) and what the fake kernel checks (meta
    tensors, where no C++ kernel runs). The common case with as few tensor
    attribute reads as possible (each costs about as much as a small Python
    call); anything else goes to _input_error, which names the first
    problem."""
    if isinstance(q, _Tensor) and isinstance(k, _Tensor) and isinstance(v, _Tensor):
        dtype, device = q.dtype, q.device
        if (q.dim() == ndim and k.dim() == ndim and v.dim() == ndim and dtype in _DTYPES and k.dtype == dtype
                and v.dtype == dtype and k.device == device and v.device == device):
            return
    _input_error(q, k, v, ndim, names)


def _input_error(q, k, v, ndim: int, names=("q", "k", "v")):
    for name, t in zip(names, (q, k, v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"flashattn: {name}: expected a torch.Tensor, got {type(t).__name__}")
        if t.dim() != ndim:
            layout = "(total, heads, head_dim)" if ndim == 3 else "(batch, seqlen, heads, head_dim)"
            raise ValueError(f"flashattn: {name}: expected a {ndim}-D tensor {layout}, got shape {list(t.shape)}")
        if t.dtype not in _DTYPES:
            raise ValueError(f"flashattn: {name}.dtype: expected float32, float16, bfloat16, float64 or float8_e4m3fn, "
                             f"got {t.dtype}")
        if t.dtype != q.dtype:
            raise ValueError(f"flashattn: {name}.dtype: expected the dtype of q ({q.dtype}), got {t.dtype}")
        if t.device != q.device:
            raise ValueError(f"flashattn: {name}.device: expected the device of q ({q.device}), got {t.device}")
    raise AssertionError("flashattn: _input_error called on valid inputs")


def _check_devices(q, named):
    """The device of every tensor in `named` ((name, tensor or None) pairs)
    is q's. The fake kernels check it: a call whose tensors are all on q's
    device never reaches them, so one that does has a tensor on another
    device (a meta tensor picks the fake kernel, whose output would be
    uninitialised memory on q's device)."""
    for name, t in named:
        if t is not None and t.device != q.device:
            raise ValueError(f"flashattn: {name}.device: expected the device of q ({q.device}), got {t.device}")


def _device_options(option_tensors):
    """(name, tensor) of the option tensors that live on q's device (all
    but rng_state, a CPU tensor whatever the device)."""
    return [(n, t) for n, t in zip(TENSOR_OPTIONS, option_tensors) if n != "rng_state"]


def _lse_shape(q, varlen):
    # Dense: [batch, heads_q, seqlen_q]; varlen: [heads_q, total_q].
    if varlen:
        return (q.shape[1], q.shape[0])
    return (q.shape[0], q.shape[2], q.shape[1])


@torch.library.register_fake("flashattn::fwd")
def _fwd_fake(q, k, v, option_tensors, option_ints, dropout_p, softmax_scale):
    varlen = len(option_tensors) > 0 and option_tensors[_CU_SEQLENS_Q] is not None  # [] stands for all None
    # The real kernels check these (and more); here so that meta tensors, or
    # a q and a k on different devices, do not pass unchecked.
    _check_inputs(q, k, v, 3 if varlen else 4)
    _check_devices(q, _device_options(option_tensors))
    # e4m3 inputs give a bf16 output (flashattn.h, ForwardArgs).
    out = torch.empty_like(q, memory_format=torch.contiguous_format,
                           dtype=torch.bfloat16 if q.dtype == _FP8 else q.dtype)
    lse = q.new_empty(_lse_shape(q, varlen), dtype=torch.float32)
    return out, lse


@torch.library.register_fake("flashattn::fwd_fp8")
def _fwd_fp8_fake(q, k, v, q_descale, k_descale, v_descale, option_tensors, option_ints, dropout_p, softmax_scale):
    _check_devices(q, (("q_descale", q_descale), ("k_descale", k_descale), ("v_descale", v_descale)))
    return _fwd_fake(q, k, v, option_tensors, option_ints, dropout_p, softmax_scale)


@torch.library.register_fake("flashattn::bwd")
def _bwd_fake(dout, q, k, v, out, lse, option_tensors, option_ints, dropout_p, softmax_scale):
    _check_devices(q, [("dout", dout), ("k", k), ("v", v), ("out", out), ("lse", lse)] +
                   _device_options(option_tensors))
    return (torch.empty_like(q, memory_format=torch.contiguous_format),
            torch.empty_like(k, memory_format=torch.contiguous_format),
            torch.empty_like(v, memory_format=torch.contiguous_format))


@torch.library.register_fake("flashattn::fwd_kvcache")
def _fwd_kvcache_fake(q, k_cache, v_cache, k, v, cache_seqlens, block_table, cache_batch_idx, rotary_cos, rotary_sin,
                      rotary_interleaved, softmax_scale, causal, window_left, window_right, num_splits):
    _check_inputs(q, k_cache, v_cache, 4, ("q", "k_cache", "v_cache"))
    _check_devices(q, (("k", k), ("v", v), ("cache_seqlens", cache_seqlens), ("block_table", block_table),
                       ("cache_batch_idx", cache_batch_idx), ("rotary_cos", rotary_cos), ("rotary_sin", rotary_sin)))
    out = torch.empty_like(q, memory_format=torch.contiguous_format)
    lse = q.new_empty(_lse_shape(q, False), dtype=torch.float32)
    return out, lse
