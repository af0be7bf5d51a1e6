// The flashattn torch operators' packed options (the schemas of
// bindings/torch/ops.cpp): the order of option_tensors and
// option_ints, defined once for ops.cpp and for C++ callers of the
// operators (apps/trainer).
#pragma once

#include <ATen/core/List.h>
#include <ATen/core/Tensor.h>

#include <cstddef>
#include <optional>

namespace flashattn::op_options {

// The options shared by fwd and bwd. Keeping one list makes the forward
// and the backward see identical masks and dropout. fwd takes
// `deterministic` only so that its autograd formula, which sees just the
// forward's inputs, can hand it to bwd.
//
// They travel packed into four schema arguments, not as 18: a Python call
// into a custom op pays per argument (torch checks every Python object it is
// handed, list entries included, for __torch_function__ and converts each
// one), and a list costs less than its entries would as arguments. On the
// CPU machine (callgrind, seqlen 0) a call of fwd from Python went from 58k
// to 42k instructions. The lists' order is defined here, once: the X-lists
// below make the index enums and the names used by error messages and
// option_names(). flashattn/_ops.py (pack_options) writes the same order
// and checks it against option_names() at import, so the two sides cannot
// drift silently; C++ callers (apps/trainer) index with the enums below.
#define FLASHATTN_TENSOR_OPTIONS(X)                                                                \
  X(cu_seqlens_q) X(cu_seqlens_k) X(rng_state) X(kv_num_blocks) X(kv_indices) X(full_kv_num_blocks) \
      X(full_kv_indices)
// Booleans (causal, deterministic) ride as 0 / 1.
#define FLASHATTN_INT_OPTIONS(X)                                                                    \
  X(max_seqlen_q) X(max_seqlen_k) X(causal) X(window_left) X(window_right) X(block_q) X(block_k) \
      X(algorithm) X(deterministic)
#define FLASHATTN_OPTIONS_SCHEMA "Tensor?[] option_tensors, int[] option_ints, float dropout_p, float? softmax_scale"

#define FLASHATTN_OPTION_INDEX(name) name,
#define FLASHATTN_OPTION_NAME(name) #name,
// Indices into option_tensors (topt::rng_state, ...) and option_ints
// (iopt::causal, ...); `count` is each list's length.
namespace topt {
enum : std::size_t { FLASHATTN_TENSOR_OPTIONS(FLASHATTN_OPTION_INDEX) count };
}
namespace iopt {
enum : std::size_t { FLASHATTN_INT_OPTIONS(FLASHATTN_OPTION_INDEX) count };
}
constexpr const char* kTensorOptionNames[] = {FLASHATTN_TENSOR_OPTIONS(FLASHATTN_OPTION_NAME)};
constexpr const char* kIntOptionNames[] = {FLASHATTN_INT_OPTIONS(FLASHATTN_OPTION_NAME)};
#undef FLASHATTN_OPTION_INDEX
#undef FLASHATTN_OPTION_NAME

// The schema's Tensor?[] as C++ sees it.
using OptionTensors = c10::List<std::optional<at::Tensor>>;

}  // namespace flashattn::op_options
