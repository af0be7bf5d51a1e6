// The entry points each backend provides to the dispatcher (src/api.cpp).
// All of them receive an already validated Problem.
#pragma once

#include <cstddef>

#include "common/problem.h"

namespace flashattn::detail {

// CPU: the tiled FlashAttention algorithm (src/cpu/flash.cpp).
void cpu_flash_forward(const Problem& p, const ForwardArgs& a, const Context& ctx);
void cpu_flash_backward(const Problem& p, const BackwardArgs& a, const Context& ctx);

// CPU: standard attention materialising S and P, in float (Acc = float) or
// in double for the reference (src/cpu/standard.cpp).
void cpu_standard_forward(const Problem& p, const ForwardArgs& a, int num_threads, bool float64);
void cpu_standard_backward(const Problem& p, const BackwardArgs& a, int num_threads, bool float64);

// CPU: attention over a KV cache (src/cpu/kvcache.cpp), in float, and in
// double with one split for the reference.
void cpu_forward_kvcache(const KvProblem& p, const KvCacheArgs& a, const Context& ctx);
void cpu_reference_kvcache(const KvProblem& p, const KvCacheArgs& a, int num_threads);

// CUDA (src/cuda/api.cu). Without CUDA in the build these throw Error.
std::size_t cuda_forward_workspace_bytes(const Problem& p, const ForwardArgs& a, const Context& ctx);
std::size_t cuda_backward_workspace_bytes(const Problem& p, const BackwardArgs& a, const Context& ctx);
void cuda_forward(const Problem& p, const ForwardArgs& a, const Context& ctx);
void cuda_backward(const Problem& p, const BackwardArgs& a, const Context& ctx);
void cuda_forward_kvcache(const KvProblem& p, const KvCacheArgs& a, const Context& ctx);

}  // namespace flashattn::detail
