#include "bench_workload.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <random>

#include "half_convert.h"  // float -> f16 / bf16 storage

namespace bench {
namespace {

// The element visibility rule of flashattn::Options (causal, window;
// flashattn.h), bottom-right aligned: query row i of a sequence of lengths
// (sq, sk) sees key j iff first_key(i) <= j <= last_key(i) (-1: unbounded
// side). Blocks of the sparse masks are classified by it.
struct WindowMask {
  std::int64_t left = -1, right = -1;
  std::int64_t first_key(std::int64_t i, std::int64_t sq, std::int64_t sk) const {
    return left < 0 ? 0 : std::max<std::int64_t>(0, i + (sk - sq) - left);
  }
  std::int64_t last_key(std::int64_t i, std::int64_t sq, std::int64_t sk) const {
    return right < 0 ? sk - 1 : std::min<std::int64_t>(sk - 1, i + (sk - sq) + right);
  }
};

void fill_normal(std::vector<unsigned char>& out, std::int64_t n, flashattn::DType dtype, std::mt19937_64& rng) {
  using flashattn::DType;
  std::normal_distribution<float> normal(0.0f, 1.0f);
  out.resize(static_cast<std::size_t>(n) * flashattn::dtype_size(dtype));
  for (std::int64_t i = 0; i < n; ++i) {
    const float x = normal(rng);
    switch (dtype) {
      case DType::f32: reinterpret_cast<float*>(out.data())[i] = x; break;
      case DType::f16: reinterpret_cast<std::uint16_t*>(out.data())[i] = tools::float_to_f16(x); break;
      case DType::bf16: reinterpret_cast<std::uint16_t*>(out.data())[i] = tools::float_to_bf16(x); break;
      case DType::f64: reinterpret_cast<double*>(out.data())[i] = x; break;
      case DType::e4m3: reinterpret_cast<std::uint8_t*>(out.data())[i] = flashattn::to_e4m3(x); break;
    }
  }
}

// Builds the compressed block mask of the sparse rows. In every query-block
// row, the candidates are the key blocks that the causal rule does not mask
// out entirely; the row keeps round(density * candidates) of them (at least
// one), always including the diagonal block so that no query row is empty:
//  - random: the diagonal plus candidates drawn uniformly (seeded);
//  - band:   the candidates nearest to the diagonal (local attention).
// A kept block whose elements are all visible goes to the "full" list (no
// element mask needed), one crossed by the causal boundary to the "partial"
// list.
void make_block_mask(const Config& cfg, Workload& w, std::mt19937_64& rng) {
  const std::int64_t sq = w.seqlen, sk = w.seqlen, bs = cfg.block_size;
  const WindowMask window{-1, cfg.causal ? 0 : -1};
  flashattn::BlockMask& m = w.mask;
  m.block_q = m.block_k = bs;
  m.batch = m.heads = 1;
  m.num_q_blocks = (sq + bs - 1) / bs;
  m.num_k_blocks = (sk + bs - 1) / bs;
  const std::int64_t nqb = m.num_q_blocks, nkb = m.num_k_blocks;
  w.kv_count.assign(nqb, 0);
  w.full_kv_count.assign(nqb, 0);
  w.kv_indices.assign(nqb * nkb, 0);
  w.full_kv_indices.assign(nqb * nkb, 0);

  std::int64_t kept_total = 0, candidates_total = 0;
  std::vector<std::int64_t> visible(nkb);  // visible elements of each key block in this row
  std::vector<std::int64_t> candidates, kept;
  for (std::int64_t qb = 0; qb < nqb; ++qb) {
    const std::int64_t r0 = qb * bs, r1 = std::min(sq, r0 + bs);
    std::fill(visible.begin(), visible.end(), 0);
    for (std::int64_t i = r0; i < r1; ++i) {
      const std::int64_t first = window.first_key(i, sq, sk), last = window.last_key(i, sq, sk);
      for (std::int64_t kb = first / bs; first <= last && kb <= last / bs; ++kb)
        visible[kb] += std::min(last, (kb + 1) * bs - 1) - std::max(first, kb * bs) + 1;
    }
    candidates.clear();
    for (std::int64_t kb = 0; kb < nkb; ++kb)
      if (visible[kb] > 0) candidates.push_back(kb);
    const auto num_candidates = static_cast<std::int64_t>(candidates.size());
    if (num_candidates == 0) continue;
    const auto want = std::clamp<std::int64_t>(std::llround(cfg.density * static_cast<double>(num_candidates)), 1,
                                               num_candidates);
    // seqlen_q == seqlen_k here, so query block qb's diagonal is key block qb.
    const std::int64_t diagonal = std::min(qb, nkb - 1);
    if (cfg.pattern == SparsePattern::band) {
      std::stable_sort(candidates.begin(), candidates.end(),
                       [&](std::int64_t a, std::int64_t b) { return std::llabs(a - diagonal) < std::llabs(b - diagonal); });
      kept.assign(candidates.begin(), candidates.begin() + want);
    } else {
      candidates.erase(std::remove(candidates.begin(), candidates.end(), diagonal), candidates.end());
      std::shuffle(candidates.begin(), candidates.end(), rng);
      kept.assign(1, diagonal);
      kept.insert(kept.end(), candidates.begin(), candidates.begin() + (want - 1));
    }
    std::sort(kept.begin(), kept.end());
    for (const std::int64_t kb : kept) {
      const std::int64_t area = (r1 - r0) * (std::min(sk, (kb + 1) * bs) - kb * bs);
      if (visible[kb] == area)
        w.full_kv_indices[qb * nkb + w.full_kv_count[qb]++] = static_cast<std::int32_t>(kb);
      else
        w.kv_indices[qb * nkb + w.kv_count[qb]++] = static_cast<std::int32_t>(kb);
      w.attended_pairs += static_cast<double>(visible[kb]);
    }
    kept_total += static_cast<std::int64_t>(kept.size());
    candidates_total += num_candidates;
  }
  w.density = candidates_total ? static_cast<double>(kept_total) / static_cast<double>(candidates_total) : 0.0;
}

}  // namespace

std::size_t Workload::tensor_bytes() const {
  return static_cast<std::size_t>(rows() * heads * head_dim) * flashattn::dtype_size(dtype);
}

Workload make_workload(const Config& cfg, std::int64_t seqlen, Method method) {
  Workload w;
  w.method = method;
  w.batch = batch_at(cfg, seqlen);
  w.seqlen = seqlen;
  w.heads = cfg.heads;
  w.head_dim = cfg.head_dim;
  w.dtype = cfg.dtype;
  w.options.causal = cfg.causal;
  w.options.dropout_p = cfg.dropout_p;
  w.options.seed = cfg.seed;
  w.deterministic = cfg.deterministic;

  // Every method of one sequence length sees the same inputs.
  std::mt19937_64 rng(cfg.seed * 1000003u + static_cast<std::uint64_t>(seqlen));
  // The lengths are drawn by every method (so the inputs stay identical
  // across methods) and used by all but the block-sparse rows.
  std::vector<std::int64_t> lens(static_cast<std::size_t>(w.batch), seqlen);
  if (cfg.key_padding > 0) {
    std::uniform_int_distribution<std::int64_t> len(std::max<std::int64_t>(1, seqlen - cfg.key_padding), seqlen);
    for (auto& l : lens) l = len(rng);
  }
  if (cfg.key_padding > 0 && method != Method::flash_sparse) {
    w.padded = true;
    w.cu_seqlens.assign(1, 0);
    for (const std::int64_t l : lens) {
      w.cu_seqlens.push_back(static_cast<std::int32_t>(w.cu_seqlens.back() + l));
      w.max_len = std::max(w.max_len, l);
    }
  }
  const std::int64_t n = w.rows() * w.heads * w.head_dim;
  for (auto* t : {&w.q, &w.k, &w.v, &w.dout}) fill_normal(*t, n, w.dtype, rng);

  if (method == Method::flash_sparse) {
    w.sparse = true;
    make_block_mask(cfg, w, rng);
  } else {
    // Per (batch, head) on average: the mean over sequences of len^2.
    double pairs = 0;
    for (const std::int64_t l : w.padded ? lens : std::vector<std::int64_t>{seqlen})
      pairs += static_cast<double>(l) * static_cast<double>(l);
    w.attended_pairs = pairs / (w.padded ? static_cast<double>(w.batch) : 1.0) * (cfg.causal ? 0.5 : 1.0);
  }
  return w;
}

Result result_for(const Workload& w) {
  Result r;
  r.seqlen = w.seqlen;
  r.batch = w.batch;
  r.key_padding = w.padded;
  r.method = w.method;
  r.fwd_flop = w.forward_flop();
  r.bwd_flop = w.backward_flop();
  r.density = w.density;
  return r;
}

namespace {
flashattn::Tensor view(const Workload& w, void* data) {
  if (w.padded) return flashattn::Tensor::contiguous(data, w.dtype, 1, w.rows(), w.heads, w.head_dim);
  return flashattn::Tensor::contiguous(data, w.dtype, w.batch, w.seqlen, w.heads, w.head_dim);
}
}  // namespace

flashattn::ForwardArgs forward_args(const Workload& w, const Buffers& b, const flashattn::BlockMask* block_mask) {
  flashattn::ForwardArgs a;
  a.q = view(w, b.q);
  a.k = view(w, b.k);
  a.v = view(w, b.v);
  a.o = view(w, b.o);
  a.lse = b.lse;
  a.options = w.options;
  a.options.block_mask = block_mask;
  return a;
}

flashattn::BackwardArgs backward_args(const Workload& w, const Buffers& b, const flashattn::BlockMask* block_mask) {
  flashattn::BackwardArgs a;
  a.q = view(w, b.q);
  a.k = view(w, b.k);
  a.v = view(w, b.v);
  a.o = view(w, b.o);
  a.dout = view(w, b.dout);
  a.lse = b.lse;
  a.dq = view(w, b.dq);
  a.dk = view(w, b.dk);
  a.dv = view(w, b.dv);
  a.options = w.options;
  a.options.block_mask = block_mask;
  a.deterministic = w.deterministic;
  return a;
}

}  // namespace bench
