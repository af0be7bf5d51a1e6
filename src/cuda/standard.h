// Standard attention on the GPU: the materialising baseline (the "PyTorch
// attention" of the paper's Figure 3) and a second, independent GPU oracle
// for the flash kernels. S = scale QK^T and P = softmax(S) are written to
// device memory in full (O(N^2) workspace) and every matrix product goes
// through cuBLAS. Called by the CUDA dispatcher (api.cu) when
// ctx.algorithm == Algorithm::standard; see standard.cu for the precision
// choices.
#pragma once

#include <cstddef>

#include "common/problem.h"

namespace flashattn::detail {

void cuda_standard_forward(const Problem& p, const ForwardArgs& a, const Context& ctx);
void cuda_standard_backward(const Problem& p, const BackwardArgs& a, const Context& ctx);
std::size_t cuda_standard_forward_workspace_bytes(const Problem& p, const ForwardArgs& a, const Context& ctx);
std::size_t cuda_standard_backward_workspace_bytes(const Problem& p, const BackwardArgs& a, const Context& ctx);

}  // namespace flashattn::detail
