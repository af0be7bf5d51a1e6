"""flashattn: FlashAttention (IO-aware exact attention) for PyTorch.

The kernels are those of the flashattn C++ library of this repository; this
package registers them as torch.library operators (torch.ops.flashattn.fwd /
bwd, with autograd and fake kernels, so they work under
torch.compile(fullgraph=True)) and exposes flash-attn compatible functions.
See docs/python.md.
"""
from ._ops import ops
from ._info import build_info
from .interface import (
    block_mask_args,
    built_with_cuda,
    dropout_mask,
    flash_attn_block_sparse_func,
    flash_attn_func,
    flash_attn_kvpacked_func,
    flash_attn_qkvpacked_func,
    flash_attn_varlen_func,
    flash_attn_with_kvcache,
    supported,
)

__version__ = "0.1.0"
library_version = ops.version

__all__ = [
    "block_mask_args", "built_with_cuda", "dropout_mask", "flash_attn_block_sparse_func", "flash_attn_func",
    "flash_attn_kvpacked_func", "flash_attn_qkvpacked_func", "flash_attn_varlen_func", "flash_attn_with_kvcache", "supported",
    "library_version", "build_info",
]
