// The KV-cache kernels' parameters and host entry (sm80/kvcache.cuh), one
// instantiation per row of kKvTiles (dispatch.h) and dtype, in
// kvcache_f16.cu / kvcache_bf16.cu. Filled by api.cu from a validated
// KvProblem.
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

#include "../common.cuh"
#include "common/kvcache.h"

namespace flashattn::detail::sm80 {

// Strides in elements, as Tensor's.
struct KvParams {
  // q as the attention reads it: the caller's, or the rotated copy.
  const void* q = nullptr;
  std::int64_t q_sb = 0, q_ss = 0, q_sh = 0;
  // Rotary: the caller's q (input) and the dense [batch, seqlen_q, heads_q,
  // head_dim] copy the append kernel writes.
  const void* q_in = nullptr;
  std::int64_t qi_sb = 0, qi_ss = 0, qi_sh = 0;
  void* q_rot = nullptr;
  void *k_cache = nullptr, *v_cache = nullptr;
  KvCacheLayout kl, vl;
  const void *k_new = nullptr, *v_new = nullptr;  // null: nothing appended
  std::int64_t kn_sb = 0, kn_ss = 0, kn_sh = 0, vn_sb = 0, vn_ss = 0, vn_sh = 0;
  void* o = nullptr;
  std::int64_t o_sb = 0, o_ss = 0, o_sh = 0;
  float* lse = nullptr;                       // optional, [batch, heads_q, seqlen_q]
  // Split-KV partials: row r (of the group's rows) of split s of (b, kv
  // head h) at ((b heads_k + h) splits + s) rows + r (times head_dim for O).
  float *part_o = nullptr, *part_lse = nullptr;
  const std::int32_t* cache_seqlens = nullptr;  // device, lengths before the append
  int batch = 0, heads_q = 0, heads_k = 0, group = 1, seqlen_q = 0, seqlen_new = 0, head_dim = 0;
  int capacity = 0;                           // positions a sequence can hold
  int rows = 0;                               // group * seqlen_q: the M dimension of a (b, kv head)
  int splits = 1;
  // The attention kernel appends k_new / v_new itself (no rotary): its
  // first CTA of each (sequence, KV head) writes them into the cache, and
  // every CTA reads positions L0 .. L0 + seqlen_new - 1 from k_new / v_new.
  bool append_in_attention = false;
  float scale_log2 = 1.f;                     // softmax scale * log2(e)
  WindowMask window;                          // causal folded in
  // Rotary (rotary_dim = 0: none).
  const void *rot_cos = nullptr, *rot_sin = nullptr;
  bool rot_f32 = true;                        // else q's dtype
  bool rot_interleaved = true;
  bool q_per_row = false;                     // q row i at L0 + i (causal / window), else at L0
  int rotary_dim = 0, rotary_seqlen = 0;
};

template <class T, int kD>
void launch_kvcache(const KvParams& p, cudaStream_t stream);

// CTAs of the attention kernel that one SM holds at once for a problem of
// `rows` query rows a KV head: with the SM count, the workers among which
// the split-KV heuristic spreads the work.
template <class T, int kD>
int kvcache_ctas_per_sm(int rows);

}  // namespace flashattn::detail::sm80
