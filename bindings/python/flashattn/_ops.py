"""Loads the operator library and registers what PyTorch needs besides the
C++ kernels and their C++ autograd formula (csrc/ops.cpp): fake (meta)
kernels for tracing.

The operators (schemas in csrc/ops.cpp):
  torch.ops.flashattn.fwd(q, k, v, *options) -> (out, lse)
  torch.ops.flashattn.bwd(dout, q, k, v, out, lse, *options) -> (dq, dk, dv)
with options = pack_options(...) = (option_tensors, option_ints, dropout_p,
softmax_scale): the 18 options packed into four arguments (a Python call
into a custom op pays per argument), in the order of TENSOR_OPTIONS and
INT_OPTIONS below, for example
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
# FLASHATTN_INT_OPTIONS in csrc/ops.cpp (checked at import, below).
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
    or 1 (standard). Takes keywords or, where every call counts
    (interface.py), positions in this order: 18 keywords cost a call about
    10k instructions more (callgrind), over half of what packing the
    operators' schemas saved (17k)."""
    # Written out rather than looked up by name, for speed; _check_packing
    # holds it to TENSOR_OPTIONS / INT_OPTIONS. bools ride in the int list as
    # they are (torch takes them for int[]).
    return ([cu_seqlens_q, cu_seqlens_k, rng_state, kv_num_blocks, kv_indices, full_kv_num_blocks, full_kv_indices],
            [int(max_seqlen_q), int(max_seqlen_k), bool(causal), window_left, window_right, int(block_q),
             int(block_k), algorithm, bool(deterministic)],
            float(dropout_p), None if softmax_scale is None else float(softmax_scale))


def _check_packing():
    # The C++ side's order against the names above, then pack_options against
    # the names (each option changed on its own must land at its own index),
    # so that a change on one side fails at import, not as wrong masks later.
    names = tuple(tuple(n) for n in ops.option_names())
    if names != (TENSOR_OPTIONS, INT_OPTIONS):
        raise ImportError(f"flashattn: the packed options of {_libs[0]} are {names}, expected "
                          f"{(TENSOR_OPTIONS, INT_OPTIONS)}; rebuild the package")
    marker = object()
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


def _lse_shape(q, varlen):
    # Dense: [batch, heads_q, seqlen_q]; varlen: [heads_q, total_q].
    if varlen:
        return (q.shape[1], q.shape[0])
    return (q.shape[0], q.shape[2], q.shape[1])


@torch.library.register_fake("flashattn::fwd")
def _fwd_fake(q, k, v, option_tensors, option_ints, dropout_p, softmax_scale):
    varlen = option_tensors[_CU_SEQLENS_Q] is not None
    out = torch.empty_like(q, memory_format=torch.contiguous_format)
    lse = q.new_empty(_lse_shape(q, varlen), dtype=torch.float32)
    return out, lse


@torch.library.register_fake("flashattn::bwd")
def _bwd_fake(dout, q, k, v, out, lse, option_tensors, option_ints, dropout_p, softmax_scale):
    return (torch.empty_like(q, memory_format=torch.contiguous_format),
            torch.empty_like(k, memory_format=torch.contiguous_format),
            torch.empty_like(v, memory_format=torch.contiguous_format))
