"""Loads the operator library and registers what PyTorch needs besides the
C++ kernels: fake (meta) kernels for tracing and the autograd formula.

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

# Positions of the inputs of fwd that the backward needs (see the schema).
_N_TENSOR_ARGS = 3  # q, k, v
_OPTION_NAMES = (
    "cu_seqlens_q", "cu_seqlens_k", "max_seqlen_q", "max_seqlen_k", "dropout_p",
    "softmax_scale", "causal", "window_left", "window_right", "rng_state",
    "kv_num_blocks", "kv_indices", "full_kv_num_blocks", "full_kv_indices",
    "block_q", "block_k", "algorithm", "deterministic",
)


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


def _setup_context(ctx, inputs, output):
    q, k, v = inputs[:_N_TENSOR_ARGS]
    options = inputs[_N_TENSOR_ARGS:]
    out, lse = output
    # Tensors among the options (cu_seqlens, rng_state, block mask) go
    # through save_for_backward like q, k, v; the rest is plain data.
    tensor_slots = [i for i, x in enumerate(options) if isinstance(x, torch.Tensor)]
    ctx.tensor_slots = tensor_slots
    ctx.options = [None if i in tensor_slots else x for i, x in enumerate(options)]
    ctx.save_for_backward(q, k, v, out, lse, *[options[i] for i in tensor_slots])
    ctx.mark_non_differentiable(lse)


def _backward(ctx, dout, dlse):
    # dlse is ignored: the log-sum-exp is returned for inspection, not as a
    # differentiable output (as in flash-attn).
    q, k, v, out, lse, *saved = ctx.saved_tensors
    options = list(ctx.options)
    for slot, t in zip(ctx.tensor_slots, saved):
        options[slot] = t
    if dout.stride(-1) != 1:
        dout = dout.contiguous()
    dq, dk, dv = ops.bwd(dout, q, k, v, out, lse, *options)
    return (dq, dk, dv) + (None,) * len(options)


torch.library.register_autograd("flashattn::fwd", _backward, setup_context=_setup_context)
