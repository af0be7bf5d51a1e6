"""Loads the operator library and registers what PyTorch needs besides the
C++ kernels and their C++ autograd formula (csrc/ops.cpp): fake (meta)
kernels for tracing.

The operators (schemas in csrc/ops.cpp):
  torch.ops.flashattn.fwd(q, k, v, *options) -> (out, lse)
  torch.ops.flashattn.bwd(dout, q, k, v, out, lse, *options) -> (dq, dk, dv)
with options = (cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
dropout_p, softmax_scale, causal, window_left, window_right, rng_state,
kv_num_blocks, kv_indices, full_kv_num_blocks, full_kv_indices, block_q,
block_k, algorithm, deterministic).
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


def _lse_shape(q, varlen):
    # Dense: [batch, heads_q, seqlen_q]; varlen: [heads_q, total_q].
    if varlen:
        return (q.shape[1], q.shape[0])
    return (q.shape[0], q.shape[2], q.shape[1])


@torch.library.register_fake("flashattn::fwd")
def _fwd_fake(q, k, v, cu_seqlens_q, cu_seqlens_k, *options):
    varlen = cu_seqlens_q is not None
    out = torch.empty_like(q, memory_format=torch.contiguous_format)
    lse = q.new_empty(_lse_shape(q, varlen), dtype=torch.float32)
    return out, lse


@torch.library.register_fake("flashattn::bwd")
def _bwd_fake(dout, q, k, v, out, lse, *options):
    return (torch.empty_like(q, memory_format=torch.contiguous_format),
            torch.empty_like(k, memory_format=torch.contiguous_format),
            torch.empty_like(v, memory_format=torch.contiguous_format))
