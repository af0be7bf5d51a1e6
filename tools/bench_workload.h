// One benchmark problem: random host inputs, the block mask of the sparse
// rows, the FLOP count, and the argument structs over a set of buffers
// (host for the CPU runner, device for the CUDA runner).
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "bench_config.h"
#include "bench_measure.h"
#include "flashattn/flashattn.h"

namespace bench {

struct Workload {
  Method method = Method::flash;
  std::int64_t batch = 0, seqlen = 0, heads = 0, head_dim = 0;
  flashattn::DType dtype = flashattn::DType::f32;
  // Q, K, V and dO, dense (batch, seqlen, heads, head_dim) in dtype storage,
  // filled with N(0, 1) values (never zeros: zeros make softmax uniform and
  // let a backend skip work it would otherwise do).
  std::vector<unsigned char> q, k, v, dout;
  // Key padding (Config::key_padding): the tensors are the packed
  // (1, total, heads, head_dim) rows of the real tokens, and cu_seqlens
  // (batch + 1 entries) gives each sequence's rows. The runner points
  // options.varlen at a Varlen over its copy of cu_seqlens.
  bool padded = false;
  std::vector<std::int32_t> cu_seqlens;
  std::int64_t max_len = 0;
  std::int64_t rows() const { return padded ? cu_seqlens.back() : batch * seqlen; }
  flashattn::Varlen varlen_over(const std::int32_t* cu, const std::int32_t* cu_host) const {
    return flashattn::Varlen{cu, cu, batch, max_len, max_len, cu_host, cu_host};
  }
  // Options of every call; block_mask is set per device by the runner.
  flashattn::Options options;
  bool deterministic = false;

  // Block-sparse rows only: the mask's shape (pointers left null) and its
  // host arrays, broadcast over batch and heads.
  bool sparse = false;
  flashattn::BlockMask mask;
  std::vector<std::int32_t> kv_count, kv_indices, full_kv_count, full_kv_indices;

  // (query, key) pairs one (batch, head) computes: sq*sk dense, halved when
  // causal; for block-sparse, the visible elements of the kept blocks.
  double attended_pairs = 0;
  // Kept key blocks / key blocks not masked out entirely (1 when dense).
  double density = 1;

  std::size_t tensor_bytes() const;  // bytes of one of q, k, v, o, dout, dq, dk, dv
  std::size_t lse_floats() const { return static_cast<std::size_t>(rows() * heads); }
  double forward_flop() const { return 4.0 * static_cast<double>(batch * heads * head_dim) * attended_pairs; }
  double backward_flop() const { return 2.5 * forward_flop(); }
};

Workload make_workload(const Config& cfg, std::int64_t seqlen, Method method);

// A Result for w with everything but the measurements filled in.
Result result_for(const Workload& w);

// Where the tensors of one run live (all host or all device pointers).
struct Buffers {
  void *q = nullptr, *k = nullptr, *v = nullptr, *o = nullptr, *dout = nullptr;
  void *dq = nullptr, *dk = nullptr, *dv = nullptr;
  float* lse = nullptr;
};

// block_mask: the device-ready mask for sparse workloads, else null.
flashattn::ForwardArgs forward_args(const Workload& w, const Buffers& b, const flashattn::BlockMask* block_mask);
flashattn::BackwardArgs backward_args(const Workload& w, const Buffers& b, const flashattn::BlockMask* block_mask);

}  // namespace bench
