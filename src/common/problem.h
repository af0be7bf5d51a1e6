// The validated, resolved description of one attention call: what every
// backend reads instead of the raw argument structs. Produced only by
// check_forward / check_backward (validate.cpp).
#pragma once

#include <cstdint>

#include "flashattn/flashattn.h"
#include "mask.h"

namespace flashattn::detail {

struct Problem {
  Device device = Device::cpu;
  Algorithm algorithm = Algorithm::flash;
  DType dtype = DType::f32;
  std::int64_t batch = 0;                 // number of sequences
  std::int64_t seqlen_q = 0, seqlen_k = 0;  // dense: the lengths; varlen: the maxima
  std::int64_t heads_q = 0, heads_k = 0, head_dim = 0;
  float scale = 1.0f;
  WindowMask window;                      // causal folded in (right = 0)
  float dropout_p = 0.0f;
  std::uint64_t seed = 0, offset = 0;
  const Varlen* varlen = nullptr;
  const BlockMask* block_mask = nullptr;
  // e4m3 inputs: the [batch, heads_k] descale factors (null = 1).
  const float *q_descale = nullptr, *k_descale = nullptr, *v_descale = nullptr;

  bool is_varlen() const { return varlen != nullptr; }
  // The factor of sequence b, KV head hk, from one of the arrays above.
  float descale(const float* d, std::int64_t b, std::int64_t hk) const { return d ? d[b * heads_k + hk] : 1.0f; }
  bool has_dropout() const { return dropout_p > 0.0f; }
  std::int64_t group() const { return heads_q / heads_k; }  // query heads per kv head
};

// Row ranges of one sequence inside the q/o and k/v tensors. For dense
// batches the tensor's batch stride selects the sequence and the starts
// are 0; for varlen the starts come from the cumulative lengths.
struct SeqRange {
  std::int64_t q_start = 0, seqlen_q = 0, k_start = 0, seqlen_k = 0;
};

// Host-side (CPU pointers or host copies) sequence range of sequence b.
inline SeqRange seq_range(const Problem& p, const std::int32_t* cu_q, const std::int32_t* cu_k,
                          std::int64_t b) {
  if (!p.is_varlen()) return SeqRange{0, p.seqlen_q, 0, p.seqlen_k};
  return SeqRange{cu_q[b], cu_q[b + 1] - cu_q[b], cu_k[b], cu_k[b + 1] - cu_k[b]};
}

// A validated KV-cache call (check_kvcache). base.seqlen_k is the cache
// capacity; the per-sequence key count is cache_seqlens[b] + seqlen_new.
struct KvProblem {
  Problem base;
  std::int64_t seqlen_new = 0;   // rows appended per sequence (0 without k_new)
  std::int64_t capacity = 0;     // positions per sequence the cache can hold
  std::int64_t page_size = 0;    // 0: contiguous cache
  std::int64_t rotary_dim = 0;   // 0: no rotary
  bool has_new() const { return seqlen_new > 0; }
  bool paged() const { return page_size > 0; }
};

KvProblem check_kvcache(const KvCacheArgs& args, const Context& ctx);

// reference: the float64 oracle's call, whose o may be f32 or f64 where
// the library's must be bf16 (e4m3 inputs).
Problem check_forward(const ForwardArgs& args, const Context& ctx, bool reference = false);
Problem check_backward(const BackwardArgs& args, const Context& ctx);

// Block-mask lookups on host-readable arrays.
struct HostBlockMask {
  const BlockMask* m = nullptr;
  const std::int32_t *count = nullptr, *indices = nullptr, *full_count = nullptr,
                     *full_indices = nullptr;

  std::int64_t row(std::int64_t b, std::int64_t h, std::int64_t qb) const {
    const std::int64_t bb = m->batch == 1 ? 0 : b, hh = m->heads == 1 ? 0 : h;
    return (bb * m->heads + hh) * m->num_q_blocks + qb;
  }
};

// Block states of one query-block row, as used by the CPU backends.
enum : std::uint8_t { kBlockSkip = 0, kBlockPartial = 1, kBlockFull = 2 };

}  // namespace flashattn::detail
