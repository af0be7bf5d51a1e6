// Shared helpers of the CPU test suite: seeded random inputs, typed host
// buffers, error norms, tensor views in several layouts, Varlen / BlockMask
// builders and a naive float64 attention that takes an explicit element
// mask (written independently of the library, so it can judge the
// reference too).
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <limits>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "common/numeric.h"
#include "flashattn/flashattn.h"
#include "flashattn/reference.h"

namespace fa_test {

using flashattn::Algorithm;
using flashattn::BlockMask;
using flashattn::Context;
using flashattn::Device;
using flashattn::DType;
using flashattn::Tensor;
using flashattn::Varlen;

// ------------------------------------------------------------- seeds ---

// Base of this process's seeds: FLASHATTN_TEST_SEED when set (to replay a
// failure), else random_device mixed with the clock.
inline std::uint64_t base_seed() {
  static const std::uint64_t base = [] {
    if (const char* env = std::getenv("FLASHATTN_TEST_SEED"))
      return static_cast<std::uint64_t>(std::strtoull(env, nullptr, 0));
    std::random_device rd;
    const auto now = static_cast<std::uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count());
    return (static_cast<std::uint64_t>(rd()) << 32) ^ rd() ^ now;
  }();
  return base;
}

// A fresh seed per call: the base plus a per-process counter (ctest runs one
// test per process, so base + counter replays a case exactly).
inline std::uint64_t fresh_seed() {
  static std::atomic<std::uint64_t> counter{0};
  return base_seed() + 0x9E3779B97F4A7C15ull * counter.fetch_add(1);
}

// Declares `var` as a fresh seed and prints it (and the base to replay it
// with FLASHATTN_TEST_SEED) in every failure message of the scope.
#define FA_SEEDED(var)                                                                                              \
  const std::uint64_t var = ::fa_test::fresh_seed();                                                                \
  SCOPED_TRACE(::testing::Message() << "seed " << var << " (replay: FLASHATTN_TEST_SEED=" << ::fa_test::base_seed() \
                                    << ")")

// ----------------------------------------------------- host buffers ---

// n elements of one dtype on the host, 64-byte aligned, read/written as double.
class HostBuffer {
 public:
  HostBuffer() = default;
  HostBuffer(DType dtype, std::int64_t n) : dtype_(dtype), n_(n) {
    const std::size_t bytes = (static_cast<std::size_t>(n) * flashattn::dtype_size(dtype) + 63) / 64 * 64 + 64;
    data_.reset(static_cast<unsigned char*>(std::aligned_alloc(64, bytes)));
    std::memset(data_.get(), 0, bytes);
  }
  DType dtype() const { return dtype_; }
  std::int64_t size() const { return n_; }
  void* data() { return data_.get(); }
  const void* data() const { return data_.get(); }
  double get(std::int64_t i) const { return flashattn::detail::load_as_double(data_.get(), dtype_, i); }
  void set(std::int64_t i, double v) { flashattn::detail::store_from_double(data_.get(), dtype_, i, v); }
  // Uniform values in [lo, hi), rounded to the dtype.
  void fill_uniform(std::uint64_t seed, double lo = -1.0, double hi = 1.0) {
    std::mt19937_64 gen(seed);
    std::uniform_real_distribution<double> dist(lo, hi);
    for (std::int64_t i = 0; i < n_; ++i) set(i, dist(gen));
  }
  // NaN everywhere, so an output element the call forgot to write shows up.
  void poison() {
    for (std::int64_t i = 0; i < n_; ++i) set(i, std::numeric_limits<double>::quiet_NaN());
  }
  std::vector<double> to_double() const {
    std::vector<double> out(static_cast<std::size_t>(n_));
    for (std::int64_t i = 0; i < n_; ++i) out[i] = get(i);
    return out;
  }

 private:
  struct Free {
    void operator()(unsigned char* p) const { std::free(p); }
  };
  DType dtype_ = DType::f32;
  std::int64_t n_ = 0;
  std::unique_ptr<unsigned char, Free> data_;
};

// A float32 LSE buffer of n entries, NaN-poisoned.
inline std::vector<float> poisoned_lse(std::int64_t n) {
  return std::vector<float>(static_cast<std::size_t>(n), std::numeric_limits<float>::quiet_NaN());
}

// ------------------------------------------------------------ errors ---

// ||a - b|| / ||b|| in double (||a - b|| when b is zero); +inf on any NaN
// or unequal infinity.
inline double rel_error(const std::vector<double>& a, const std::vector<double>& b) {
  if (a.size() != b.size()) return std::numeric_limits<double>::infinity();
  double num = 0, den = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    if (std::isnan(a[i]) || std::isnan(b[i])) return std::numeric_limits<double>::infinity();
    if (std::isinf(b[i])) {
      if (a[i] != b[i]) return std::numeric_limits<double>::infinity();
      continue;  // equal infinities (e.g. LSE of empty rows) agree
    }
    const double d = a[i] - b[i];
    num += d * d;
    den += b[i] * b[i];
  }
  return den > 0 ? std::sqrt(num / den) : std::sqrt(num);
}

// sqrt(mean((a - b)^2)) in double; +inf on any NaN or a size mismatch.
inline double rms_error(const std::vector<double>& a, const std::vector<double>& b) {
  if (a.size() != b.size()) return std::numeric_limits<double>::infinity();
  double num = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    if (std::isnan(a[i]) || std::isnan(b[i])) return std::numeric_limits<double>::infinity();
    if (!std::isinf(b[i]) || a[i] != b[i]) num += (a[i] - b[i]) * (a[i] - b[i]);
  }
  return a.empty() ? 0.0 : std::sqrt(num / static_cast<double>(a.size()));
}

// max |a - b| in double; +inf if any NaN or the sizes differ. Equal infinities count as 0.
inline double max_abs_error(const std::vector<double>& a, const std::vector<double>& b) {
  if (a.size() != b.size()) return std::numeric_limits<double>::infinity();
  double m = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    if (std::isnan(a[i]) || std::isnan(b[i])) return std::numeric_limits<double>::infinity();
    if (a[i] == b[i]) continue;
    m = std::max(m, std::abs(a[i] - b[i]));
  }
  return m;
}

// A float vector (e.g. an LSE) widened to double.
inline std::vector<double> to_double(const std::vector<float>& v) { return {v.begin(), v.end()}; }

// --------------------------------------------------------- tensor views ---

// A dense (batch, seqlen, heads, head_dim) tensor of doubles, the tests'
// common currency between layouts.
struct Dense {
  std::int64_t batch = 0, seqlen = 0, heads = 0, head_dim = 0;
  std::vector<double> x;
  Dense() = default;
  Dense(std::int64_t b, std::int64_t s, std::int64_t h, std::int64_t d)
      : batch(b), seqlen(s), heads(h), head_dim(d), x(static_cast<std::size_t>(b * s * h * d)) {}
  double& at(std::int64_t b, std::int64_t s, std::int64_t h, std::int64_t c) {
    return x[((b * seqlen + s) * heads + h) * head_dim + c];
  }
  double at(std::int64_t b, std::int64_t s, std::int64_t h, std::int64_t c) const {
    return x[((b * seqlen + s) * heads + h) * head_dim + c];
  }
};

// Reads any strided view into a Dense.
inline Dense gather(const Tensor& t) {
  Dense out(t.batch, t.seqlen, t.heads, t.head_dim);
  for (std::int64_t b = 0; b < t.batch; ++b)
    for (std::int64_t s = 0; s < t.seqlen; ++s)
      for (std::int64_t h = 0; h < t.heads; ++h)
        for (std::int64_t c = 0; c < t.head_dim; ++c)
          out.at(b, s, h, c) =
              flashattn::detail::load_as_double(t.data, t.dtype, flashattn::detail::offset_of(t, b, s, h) + c);
  return out;
}

// Writes a Dense into any strided view (rounding to the view's dtype).
inline void scatter(const Dense& in, const Tensor& t) {
  for (std::int64_t b = 0; b < t.batch; ++b)
    for (std::int64_t s = 0; s < t.seqlen; ++s)
      for (std::int64_t h = 0; h < t.heads; ++h)
        for (std::int64_t c = 0; c < t.head_dim; ++c)
          flashattn::detail::store_from_double(t.data, t.dtype, flashattn::detail::offset_of(t, b, s, h) + c,
                                               in.at(b, s, h, c));
}

// A contiguous (b, s, h, d) tensor with its own buffer.
struct HostTensor {
  HostBuffer buf;
  Tensor t;
  HostTensor() = default;
  HostTensor(DType dtype, std::int64_t b, std::int64_t s, std::int64_t h, std::int64_t d) : buf(dtype, b * s * h * d) {
    t = Tensor::contiguous(buf.data(), dtype, b, s, h, d);
  }
  std::vector<double> values() const { return gather(t).x; }
};

// A (b, s, h, d) view stored transposed as (b, h, s, d), set up through strides.
inline Tensor transposed_view(void* data, DType dtype, std::int64_t b, std::int64_t s, std::int64_t h, std::int64_t d) {
  Tensor t;
  t.data = data;
  t.dtype = dtype;
  t.batch = b;
  t.seqlen = s;
  t.heads = h;
  t.head_dim = d;
  t.stride_head = s * d;
  t.stride_seq = d;
  t.stride_batch = h * s * d;
  return t;
}

// A (b, s, h, d) view whose rows of heads are each followed by `pad` unused
// elements (buffer of b * s * (h * d + pad) elements).
inline Tensor padded_view(void* data, DType dtype, std::int64_t b, std::int64_t s, std::int64_t h, std::int64_t d,
                          std::int64_t pad) {
  Tensor t = Tensor::contiguous(data, dtype, b, s, h, d);
  t.stride_seq = h * d + pad;
  t.stride_batch = s * (h * d + pad);
  return t;
}

// One buffer (b, s, 3, h, d) seen as the three tensors Q, K, V (packed QKV).
struct PackedQKV {
  HostBuffer buf;
  Tensor q, k, v;
  PackedQKV(DType dtype, std::int64_t b, std::int64_t s, std::int64_t h, std::int64_t d)
      : buf(dtype, b * s * 3 * h * d) {
    Tensor base = Tensor::contiguous(buf.data(), dtype, b, s, h, d);
    base.stride_seq = 3 * h * d;
    base.stride_batch = s * 3 * h * d;
    const std::size_t es = flashattn::dtype_size(dtype);
    q = k = v = base;
    k.data = static_cast<unsigned char*>(buf.data()) + es * h * d;
    v.data = static_cast<unsigned char*>(buf.data()) + es * 2 * h * d;
  }
};

// ------------------------------------------------------------- varlen ---

// Cumulative sequence lengths built from per-sequence lengths; get() points
// a Varlen at them (call it after any copy or move).
struct VarlenBuf {
  std::vector<std::int32_t> cu_q, cu_k;
  Varlen vl;
  std::int64_t total_q = 0, total_k = 0;
  const Varlen* get() {
    vl.cu_seqlens_q = cu_q.data();
    vl.cu_seqlens_k = cu_k.data();
    return &vl;
  }
};

// Varlen of the given query / key lengths (same count).
inline VarlenBuf make_varlen(const std::vector<std::int64_t>& lens_q, const std::vector<std::int64_t>& lens_k) {
  VarlenBuf v;
  v.cu_q.push_back(0);
  v.cu_k.push_back(0);
  for (std::size_t b = 0; b < lens_q.size(); ++b) {
    v.cu_q.push_back(static_cast<std::int32_t>(v.cu_q.back() + lens_q[b]));
    v.cu_k.push_back(static_cast<std::int32_t>(v.cu_k.back() + lens_k[b]));
    v.vl.max_seqlen_q = std::max(v.vl.max_seqlen_q, lens_q[b]);
    v.vl.max_seqlen_k = std::max(v.vl.max_seqlen_k, lens_k[b]);
  }
  v.vl.batch = static_cast<std::int64_t>(lens_q.size());
  v.total_q = v.cu_q.back();
  v.total_k = v.cu_k.back();
  v.get();
  return v;
}

// --------------------------------------------------------- block mask ---

// State of one (query block, key block) pair, as in BlockMask.
enum BlockState : std::uint8_t { kSkip = 0, kPartial = 1, kFull = 2 };

// Dense block states [batch, heads, num_q_blocks, num_k_blocks] plus the
// block geometry: the tests' readable description of a block mask.
struct BlockStates {
  std::int64_t batch = 1, heads = 1, nqb = 0, nkb = 0, block_q = 1, block_k = 1;
  std::vector<std::uint8_t> s;
  std::uint8_t at(std::int64_t b, std::int64_t h, std::int64_t qb, std::int64_t kb) const {
    const std::int64_t bb = batch == 1 ? 0 : b, hh = heads == 1 ? 0 : h;
    return s[((bb * heads + hh) * nqb + qb) * nkb + kb];
  }
};

// Random block states (probabilities of skip / partial, the rest full).
inline BlockStates random_block_states(std::uint64_t seed, std::int64_t batch, std::int64_t heads, std::int64_t sq,
                                       std::int64_t sk, std::int64_t block_q, std::int64_t block_k, double p_skip = 0.3,
                                       double p_partial = 0.35) {
  BlockStates st;
  st.batch = batch;
  st.heads = heads;
  st.block_q = block_q;
  st.block_k = block_k;
  st.nqb = (sq + block_q - 1) / block_q;
  st.nkb = (sk + block_k - 1) / block_k;
  st.s.resize(static_cast<std::size_t>(batch * heads * st.nqb * st.nkb));
  std::mt19937_64 gen(seed);
  std::uniform_real_distribution<double> u(0.0, 1.0);
  for (auto& x : st.s) {
    const double r = u(gen);
    x = r < p_skip ? kSkip : r < p_skip + p_partial ? kPartial : kFull;
  }
  return st;
}

// Compressed lists of a BlockStates; get() points a BlockMask at them (call
// it after any copy or move).
struct BlockMaskBuf {
  std::vector<std::int32_t> count, indices, full_count, full_indices;
  BlockMask m;
  bool with_full = true;
  const BlockMask* get() {
    m.kv_count = count.data();
    m.kv_indices = indices.data();
    m.full_kv_count = with_full ? full_count.data() : nullptr;
    m.full_kv_indices = with_full ? full_indices.data() : nullptr;
    return &m;
  }
};

// BlockMask of a dense state matrix. Without with_full, full blocks must not
// occur (the full lists are left null). shuffle_seed != 0 lists each row's
// blocks in a random order (the order carries no meaning).
inline BlockMaskBuf make_block_mask(const BlockStates& st, bool with_full = true, std::uint64_t shuffle_seed = 0) {
  BlockMaskBuf mb;
  mb.with_full = with_full;
  mb.m.block_q = st.block_q;
  mb.m.block_k = st.block_k;
  mb.m.batch = st.batch;
  mb.m.heads = st.heads;
  mb.m.num_q_blocks = st.nqb;
  mb.m.num_k_blocks = st.nkb;
  const std::int64_t rows = st.batch * st.heads * st.nqb;
  mb.count.assign(rows, 0);
  mb.full_count.assign(rows, 0);
  mb.indices.assign(rows * st.nkb, -1);
  mb.full_indices.assign(rows * st.nkb, -1);
  std::mt19937_64 gen(shuffle_seed);
  for (std::int64_t r = 0; r < rows; ++r) {
    std::vector<std::int32_t> part, full;
    for (std::int64_t kb = 0; kb < st.nkb; ++kb) {
      const std::uint8_t s = st.s[r * st.nkb + kb];
      if (s == kPartial) part.push_back(static_cast<std::int32_t>(kb));
      if (s == kFull) {
        EXPECT_TRUE(with_full) << "full block in a mask built without full lists";
        full.push_back(static_cast<std::int32_t>(kb));
      }
    }
    if (shuffle_seed) {
      std::shuffle(part.begin(), part.end(), gen);
      std::shuffle(full.begin(), full.end(), gen);
    }
    mb.count[r] = static_cast<std::int32_t>(part.size());
    mb.full_count[r] = static_cast<std::int32_t>(full.size());
    std::copy(part.begin(), part.end(), mb.indices.begin() + r * st.nkb);
    std::copy(full.begin(), full.end(), mb.full_indices.begin() + r * st.nkb);
  }
  mb.get();
  return mb;
}

// ------------------------------------------------- naive float64 oracle ---

// Window rule written out from the API's comment (bottom-right aligned,
// -1 = unbounded side), independent of src/common/mask.h.
inline bool window_visible(std::int64_t i, std::int64_t j, std::int64_t sq, std::int64_t sk, std::int64_t left,
                           std::int64_t right) {
  if (j < 0 || j >= sk) return false;
  // 128-bit: windows up to INT64_MAX are legal (unbounded in effect).
  const __int128 diag = static_cast<__int128>(i) + sk - sq;
  if (left >= 0 && j < diag - left) return false;
  if (right >= 0 && j > diag + right) return false;
  return true;
}

// (sequence b, query head h, row i, col j, seqlen_q, seqlen_k) -> attended?
using ElementMask =
    std::function<bool(std::int64_t, std::int64_t, std::int64_t, std::int64_t, std::int64_t, std::int64_t)>;
// (sequence b, query head h, row i, col j) -> dropout multiplier (0 or 1/(1-p)).
using DropFn = std::function<double(std::int64_t, std::int64_t, std::int64_t, std::int64_t)>;

// O and LSE of naive_attention.
struct NaiveResult {
  Dense o;
  std::vector<double> lse;  // [b, hq, sq] dense, or [hq, total_q] varlen
};

// Materialised attention in double: P = softmax(scale Q K^T) over the
// attended keys, O = (P * drop) V. Dense inputs; with cu_q/cu_k (batch 1
// tensors) sequences are packed varlen-style. Empty rows: O = 0, lse = -inf.
inline NaiveResult naive_attention(const Dense& q, const Dense& k, const Dense& v, double scale,
                                   const ElementMask& mask, const DropFn& drop = nullptr,
                                   const std::vector<std::int32_t>* cu_q = nullptr,
                                   const std::vector<std::int32_t>* cu_k = nullptr) {
  NaiveResult r;
  r.o = Dense(q.batch, q.seqlen, q.heads, v.head_dim);
  const std::int64_t hq = q.heads, group = q.heads / k.heads, d = q.head_dim;
  const std::int64_t nseq = cu_q ? static_cast<std::int64_t>(cu_q->size()) - 1 : q.batch;
  r.lse.assign(static_cast<std::size_t>(cu_q ? hq * q.seqlen : q.batch * hq * q.seqlen), 0.0);
  for (std::int64_t b = 0; b < nseq; ++b) {
    const std::int64_t tb = cu_q ? 0 : b;
    const std::int64_t q0 = cu_q ? (*cu_q)[b] : 0, k0 = cu_k ? (*cu_k)[b] : 0;
    const std::int64_t sq = cu_q ? (*cu_q)[b + 1] - q0 : q.seqlen, sk = cu_k ? (*cu_k)[b + 1] - k0 : k.seqlen;
    for (std::int64_t h = 0; h < hq; ++h) {
      const std::int64_t hk = h / group;
      for (std::int64_t i = 0; i < sq; ++i) {
        std::vector<double> s(static_cast<std::size_t>(sk), -std::numeric_limits<double>::infinity());
        double mx = -std::numeric_limits<double>::infinity();
        for (std::int64_t j = 0; j < sk; ++j) {
          if (!mask(b, h, i, j, sq, sk)) continue;
          double dot = 0;
          for (std::int64_t c = 0; c < d; ++c) dot += q.at(tb, q0 + i, h, c) * k.at(tb, k0 + j, hk, c);
          s[j] = scale * dot;
          mx = std::max(mx, s[j]);
        }
        const std::int64_t li = cu_q ? h * q.seqlen + q0 + i : (b * hq + h) * q.seqlen + i;
        if (mx == -std::numeric_limits<double>::infinity()) {
          r.lse[li] = -std::numeric_limits<double>::infinity();
          continue;  // O row stays 0
        }
        double sum = 0;
        for (std::int64_t j = 0; j < sk; ++j)
          sum += s[j] == -std::numeric_limits<double>::infinity() ? 0.0 : std::exp(s[j] - mx);
        r.lse[li] = mx + std::log(sum);
        for (std::int64_t j = 0; j < sk; ++j) {
          if (s[j] == -std::numeric_limits<double>::infinity()) continue;
          double pj = std::exp(s[j] - mx) / sum;
          if (drop) pj *= drop(b, h, i, j);
          for (std::int64_t c = 0; c < v.head_dim; ++c) r.o.at(tb, q0 + i, h, c) += pj * v.at(tb, k0 + j, hk, c);
        }
      }
    }
  }
  return r;
}

// Element mask of plain attention with a window (causal: right = 0).
inline ElementMask window_mask(std::int64_t left, std::int64_t right) {
  return [=](std::int64_t, std::int64_t, std::int64_t i, std::int64_t j, std::int64_t sq, std::int64_t sk) {
    return window_visible(i, j, sq, sk, left, right);
  };
}

// Element mask of a block-sparse layout on top of a window rule.
inline ElementMask block_sparse_mask(const BlockStates& st, std::int64_t left, std::int64_t right) {
  return [=](std::int64_t b, std::int64_t h, std::int64_t i, std::int64_t j, std::int64_t sq, std::int64_t sk) {
    if (j >= sk) return false;
    const std::uint8_t s = st.at(b, h, i / st.block_q, j / st.block_k);
    return s == kFull || (s == kPartial && window_visible(i, j, sq, sk, left, right));
  };
}

// Dropout multipliers of every (sequence, head) from the public
// dropout_mask() helper, cached: rows/cols given per sequence.
inline DropFn dropout_fn(std::uint64_t seed, std::uint64_t offset, float p, std::int64_t nseq, std::int64_t heads_q,
                         const std::vector<std::int64_t>& rows, const std::vector<std::int64_t>& cols) {
  auto masks = std::make_shared<std::vector<std::vector<std::uint8_t>>>();
  for (std::int64_t b = 0; b < nseq; ++b)
    for (std::int64_t h = 0; h < heads_q; ++h) {
      std::vector<std::uint8_t> m(static_cast<std::size_t>(std::max<std::int64_t>(1, rows[b] * cols[b])));
      flashattn::dropout_mask(seed, offset, p, b, heads_q, h, rows[b], cols[b], m.data());
      masks->push_back(std::move(m));
    }
  const double kept = 1.0 / (1.0 - static_cast<double>(p));
  return [=](std::int64_t b, std::int64_t h, std::int64_t i, std::int64_t j) {
    return (*masks)[b * heads_q + h][i * cols[b] + j] ? kept : 0.0;
  };
}

// ---------------------------------------------------------- problems ---

// A self-contained attention problem: Q, K, V, dO inputs (random), O, LSE
// and dQ, dK, dV outputs (poisoned by poison_outputs()), all contiguous.
struct Problem {
  DType dtype = DType::f32;
  std::int64_t batch = 1, sq = 1, sk = 1, hq = 1, hk = 1, d = 1;
  HostTensor q, k, v, o, dout, dq, dk, dv;
  std::vector<float> lse;
  flashattn::Options options;

  Problem(DType dt, std::int64_t b, std::int64_t sq_, std::int64_t sk_, std::int64_t hq_, std::int64_t hk_,
          std::int64_t d_)
      : dtype(dt),
        batch(b),
        sq(sq_),
        sk(sk_),
        hq(hq_),
        hk(hk_),
        d(d_),
        q(dt, b, sq_, hq_, d_),
        k(dt, b, sk_, hk_, d_),
        v(dt, b, sk_, hk_, d_),
        o(dt, b, sq_, hq_, d_),
        dout(dt, b, sq_, hq_, d_),
        dq(dt, b, sq_, hq_, d_),
        dk(dt, b, sk_, hk_, d_),
        dv(dt, b, sk_, hk_, d_) {
    lse = poisoned_lse(b * hq * sq);
  }
  void randomize(std::uint64_t seed) {
    q.buf.fill_uniform(seed * 4 + 1);
    k.buf.fill_uniform(seed * 4 + 2);
    v.buf.fill_uniform(seed * 4 + 3);
    dout.buf.fill_uniform(seed * 4 + 4);
  }
  void poison_outputs() {
    o.buf.poison();
    dq.buf.poison();
    dk.buf.poison();
    dv.buf.poison();
    std::fill(lse.begin(), lse.end(), std::numeric_limits<float>::quiet_NaN());
  }
  flashattn::ForwardArgs forward_args() {
    flashattn::ForwardArgs a;
    a.q = q.t;
    a.k = k.t;
    a.v = v.t;
    a.o = o.t;
    a.lse = lse.data();
    a.options = options;
    return a;
  }
  flashattn::BackwardArgs backward_args() {
    flashattn::BackwardArgs a;
    a.q = q.t;
    a.k = k.t;
    a.v = v.t;
    a.o = o.t;
    a.dout = dout.t;
    a.lse = lse.data();
    a.dq = dq.t;
    a.dk = dk.t;
    a.dv = dv.t;
    a.options = options;
    return a;
  }
  // The softmax scale the call uses (a float, as Options holds it).
  double scale() const {
    return options.softmax_scale ? *options.softmax_scale : static_cast<float>(1.0 / std::sqrt(static_cast<double>(d)));
  }
};

// Copies the inputs (Q, K, V, dO) and options of `from` into `to` (same
// shapes, any dtype): e.g. an f64 twin of an f32 problem for the oracle.
inline void copy_inputs(const Problem& from, Problem& to) {
  scatter(gather(from.q.t), to.q.t);
  scatter(gather(from.k.t), to.k.t);
  scatter(gather(from.v.t), to.v.t);
  scatter(gather(from.dout.t), to.dout.t);
  to.options = from.options;
}

// Outputs of one forward + backward run, in double.
struct Outputs {
  std::vector<double> o, lse, dq, dk, dv;
};

// Runs forward (and backward if asked) on p with fresh poisoned outputs.
// `reference` selects flashattn::reference; otherwise ctx picks the backend.
inline Outputs run(Problem& p, bool reference, const Context& ctx = {}, bool with_backward = true) {
  Outputs out;
  p.poison_outputs();
  if (reference)
    flashattn::reference::forward(p.forward_args());
  else
    flashattn::forward(p.forward_args(), ctx);
  out.o = p.o.values();
  out.lse = to_double(p.lse);
  if (with_backward) {
    if (reference)
      flashattn::reference::backward(p.backward_args());
    else
      flashattn::backward(p.backward_args(), ctx);
    out.dq = p.dq.values();
    out.dk = p.dk.values();
    out.dv = p.dv.values();
  }
  return out;
}

// Runs the reference (forward and backward) on a float64 twin of p: the
// same shapes, options and inputs (as rounded to p's dtype).
inline Outputs run_reference_twin(const Problem& p) {
  Problem ref(DType::f64, p.batch, p.sq, p.sk, p.hq, p.hk, p.d);
  copy_inputs(p, ref);
  return run(ref, true);
}

// Bounds of expect_outputs_near: relative error of O and of dQ, dK, dV;
// max abs error of the LSE (std::nullopt: not checked). grad_scale_floor
// (0: off): a gradient also passes when its RMS error is below
// grad * grad_scale_floor * (the largest RMS of the three reference
// gradients), i.e. small against the problem's gradients. Relative error
// alone means nothing where an exact gradient is (near) zero: rows that see
// exactly one key (one key in all, or causal with window_left = 0) have
// dS = P (dP - D) = 0 in exact arithmetic, while a low-precision run
// computes D from the rounded O and leaves rounding-sized dS, an unbounded
// relative error of a vanishing value.
struct OutputTolerances {
  double o = 0;
  std::optional<double> lse;
  double grad = 0;
  double grad_scale_floor = 0;
};

// Outputs (and gradients) of a run against those of another (the oracle's).
inline void expect_outputs_near(const Outputs& got, const Outputs& want, const OutputTolerances& tol) {
  EXPECT_LT(rel_error(got.o, want.o), tol.o) << "o";
  if (tol.lse) {
    EXPECT_LT(max_abs_error(got.lse, want.lse), *tol.lse) << "lse";
  }
  double scale = 0;
  for (const auto* w : {&want.dq, &want.dk, &want.dv})
    scale = std::max(scale, rms_error(*w, std::vector<double>(w->size(), 0.0)));
  auto grad = [&](const std::vector<double>& g, const std::vector<double>& w, const char* name) {
    const double rel = rel_error(g, w);
    if (tol.grad_scale_floor > 0 && rel >= tol.grad) {
      const double floor = tol.grad * tol.grad_scale_floor * scale;
      EXPECT_LT(rms_error(g, w), floor) << name << ": relative error " << rel << " >= " << tol.grad
                                        << ", and the RMS error is not small against the gradients' RMS " << scale;
    } else {
      EXPECT_LT(rel, tol.grad) << name;
    }
  };
  grad(got.dq, want.dq, "dq");
  grad(got.dk, want.dk, "dk");
  grad(got.dv, want.dv, "dv");
}

// ---------------------------------------------- finite differences ---

// sum(dO * O) of the reference forward on p's current inputs (the loss
// whose gradients backward computes).
inline double fd_loss(Problem& p) {
  p.o.buf.poison();
  flashattn::reference::forward(p.forward_args(), 1);
  const std::vector<double> o = p.o.values(), dout = p.dout.values();
  double l = 0;
  for (std::size_t i = 0; i < o.size(); ++i) l += o[i] * dout[i];
  return l;
}

// Euclidean norm.
inline double norm(const std::vector<double>& x) {
  double s = 0;
  for (double v : x) s += v * v;
  return std::sqrt(s);
}

// Reference dQ, dK, dV of p (f64) against central differences of fd_loss.
inline void check_gradients_fd(Problem& p) {
  ASSERT_EQ(p.dtype, DType::f64);
  p.poison_outputs();
  flashattn::reference::forward(p.forward_args(), 1);
  flashattn::reference::backward(p.backward_args(), 1);
  const std::vector<double> grads[3] = {p.dq.values(), p.dk.values(), p.dv.values()};
  HostTensor* inputs[3] = {&p.q, &p.k, &p.v};
  const char* names[3] = {"dq", "dk", "dv"};
  constexpr double eps = 1e-5;
  for (int t = 0; t < 3; ++t) {
    HostBuffer& x = inputs[t]->buf;
    std::vector<double> fd(static_cast<std::size_t>(x.size()));
    for (std::int64_t i = 0; i < x.size(); ++i) {
      const double orig = x.get(i);
      x.set(i, orig + eps);
      const double lp = fd_loss(p);
      x.set(i, orig - eps);
      const double lm = fd_loss(p);
      x.set(i, orig);
      fd[i] = (lp - lm) / (2 * eps);
    }
    EXPECT_GT(norm(fd), 1e-3) << names[t] << ": the case has no gradient to compare";
    EXPECT_LT(rel_error(grads[t], fd), 1e-6) << names[t];
    EXPECT_LT(max_abs_error(grads[t], fd), 1e-6 * (1 + norm(fd))) << names[t];
  }
}

// A Context for the CPU with the given algorithm.
inline Context cpu(Algorithm a) {
  Context c;
  c.algorithm = a;
  return c;
}

// "flash" or "standard", for traces.
inline const char* name(Algorithm a) { return a == Algorithm::flash ? "flash" : "standard"; }

// The CPU flash path with Q, K, V as strided views into one packed
// (b, s, 3, h, d) buffer (O and dO contiguous; b = 2, s = 150, h = 3)
// against the reference on contiguous inputs: the tile loads must follow
// stride_seq. O, dQ, dK, dV within relative error tol.
inline void expect_packed_qkv_flash_matches_reference(DType dtype, std::int64_t d, double tol) {
  FA_SEEDED(seed);
  PackedQKV packed(dtype, 2, 150, 3, d);
  Problem p(dtype, 2, 150, 150, 3, 3, d);
  p.randomize(seed);
  scatter(gather(p.q.t), packed.q);
  scatter(gather(p.k.t), packed.k);
  scatter(gather(p.v.t), packed.v);
  const Outputs want = run_reference_twin(p);
  p.poison_outputs();
  flashattn::ForwardArgs fa = p.forward_args();
  fa.q = packed.q;
  fa.k = packed.k;
  fa.v = packed.v;
  flashattn::forward(fa, cpu(Algorithm::flash));
  flashattn::BackwardArgs ba = p.backward_args();
  ba.q = packed.q;
  ba.k = packed.k;
  ba.v = packed.v;
  flashattn::backward(ba, cpu(Algorithm::flash));
  EXPECT_LT(rel_error(p.o.values(), want.o), tol);
  EXPECT_LT(rel_error(p.dq.values(), want.dq), tol);
  EXPECT_LT(rel_error(p.dk.values(), want.dk), tol);
  EXPECT_LT(rel_error(p.dv.values(), want.dv), tol);
}

// ---------------------------------------------------------------- fp8 ---

// Sequence of each row of a tensor: b for dense batches (rows of batch
// index b), or the varlen sequence owning the row (-1: no sequence).
inline std::int64_t fp8_sequence(std::int64_t tb, std::int64_t row, const std::vector<std::int32_t>* cu) {
  if (!cu) return tb;
  for (std::size_t b = 0; b + 1 < cu->size(); ++b)
    if (row >= (*cu)[b] && row < (*cu)[b + 1]) return static_cast<std::int64_t>(b);
  return -1;
}

// Quantises real values x into the e4m3 tensor t (same shape) as a user of
// the FP8 API would: one descale per (sequence, KV head) (heads_k KV heads;
// head h of x belongs to KV head h / (x.heads / heads_k)), mapping that
// slice's largest magnitude to 448 / u with u random in [1, 2), so that
// codes use most of the range but not always its top. Returns the
// descales, [nseq, heads_k]. Rows of no sequence get the code of 0.
inline std::vector<float> quantise_e4m3(const Dense& x, const Tensor& t, std::int64_t nseq, std::int64_t heads_k,
                                        const std::vector<std::int32_t>* cu, std::uint64_t seed) {
  const std::int64_t group = x.heads / heads_k;
  std::vector<double> amax(static_cast<std::size_t>(nseq * heads_k), 0.0);
  for (std::int64_t b = 0; b < x.batch; ++b)
    for (std::int64_t s = 0; s < x.seqlen; ++s) {
      const std::int64_t seq = fp8_sequence(b, s, cu);
      if (seq < 0) continue;
      for (std::int64_t h = 0; h < x.heads; ++h)
        for (std::int64_t c = 0; c < x.head_dim; ++c) {
          double& m = amax[static_cast<std::size_t>(seq * heads_k + h / group)];
          m = std::max(m, std::abs(x.at(b, s, h, c)));
        }
    }
  std::mt19937_64 gen(seed);
  std::uniform_real_distribution<double> u(1.0, 2.0);
  std::vector<float> descale(amax.size());
  for (std::size_t i = 0; i < amax.size(); ++i)
    descale[i] = amax[i] > 0 ? static_cast<float>(amax[i] * u(gen) / 448.0) : 1.0f;
  auto* codes = static_cast<std::uint8_t*>(t.data);
  for (std::int64_t b = 0; b < x.batch; ++b)
    for (std::int64_t s = 0; s < x.seqlen; ++s) {
      const std::int64_t seq = fp8_sequence(b, s, cu);
      for (std::int64_t h = 0; h < x.heads; ++h)
        for (std::int64_t c = 0; c < x.head_dim; ++c) {
          const float ds = seq < 0 ? 1.0f : descale[static_cast<std::size_t>(seq * heads_k + h / group)];
          codes[flashattn::detail::offset_of(t, b, s, h) + c] =
              seq < 0 ? 0 : flashattn::to_e4m3(static_cast<float>(x.at(b, s, h, c) / ds));
        }
    }
  return descale;
}

// The real values of an e4m3 tensor under the API's rule (flashattn.h,
// ForwardArgs): code * descale[sequence, h / (heads / heads_k)] in double
// (exact), null descale = 1; rows of no sequence read 0. The code is
// decoded from the format's definition here, independently of the library.
inline double e4m3_value(std::uint8_t code) {
  const int e = (code >> 3) & 15, m = code & 7;
  if (e == 15 && m == 7) return std::numeric_limits<double>::quiet_NaN();
  const double mag = e == 0 ? std::ldexp(m, -9) : std::ldexp(8 + m, e - 10);
  return (code & 0x80) ? -mag : mag;
}

inline Dense dequantise_e4m3(const Tensor& t, const float* descale, std::int64_t heads_k,
                             const std::vector<std::int32_t>* cu = nullptr) {
  Dense out(t.batch, t.seqlen, t.heads, t.head_dim);
  const std::int64_t group = t.heads / heads_k;
  const auto* codes = static_cast<const std::uint8_t*>(t.data);
  for (std::int64_t b = 0; b < t.batch; ++b)
    for (std::int64_t s = 0; s < t.seqlen; ++s) {
      const std::int64_t seq = fp8_sequence(b, s, cu);
      if (seq < 0) continue;
      for (std::int64_t h = 0; h < t.heads; ++h) {
        const double ds = descale ? descale[seq * heads_k + h / group] : 1.0;
        for (std::int64_t c = 0; c < t.head_dim; ++c)
          out.at(b, s, h, c) = e4m3_value(codes[flashattn::detail::offset_of(t, b, s, h) + c]) * ds;
      }
    }
  return out;
}

// Uniform values in [-amp, amp) of the given shape.
inline Dense uniform_dense(std::uint64_t seed, std::int64_t b, std::int64_t s, std::int64_t h, std::int64_t d,
                           double amp) {
  Dense x(b, s, h, d);
  std::mt19937_64 gen(seed);
  std::uniform_real_distribution<double> dist(-amp, amp);
  for (double& v : x.x) v = dist(gen);
  return x;
}

// An FP8 forward problem: e4m3 Q, K, V quantised from uniform real values
// (per-(sequence, KV head) descales), a bf16 O and a float32 LSE, both
// poisoned by poison(). With lens_q / lens_k the batch is varlen (tensors
// of batch 1 holding the packed sequences).
struct Fp8Problem {
  std::int64_t batch = 1, sq = 1, sk = 1, hq = 1, hk = 1, d = 1;
  std::optional<VarlenBuf> varlen;
  HostTensor q, k, v, o;
  std::vector<float> lse, q_descale, k_descale, v_descale;
  flashattn::Options options;

  Fp8Problem(std::int64_t b, std::int64_t sq_, std::int64_t sk_, std::int64_t hq_, std::int64_t hk_, std::int64_t d_)
      : batch(b), sq(sq_), sk(sk_), hq(hq_), hk(hk_), d(d_) {
    allocate(b, sq_, sk_);
  }
  // Varlen: sequences of the given lengths packed into batch-1 tensors with
  // `tail` unused rows after the last sequence.
  Fp8Problem(const std::vector<std::int64_t>& lens_q, const std::vector<std::int64_t>& lens_k, std::int64_t hq_,
             std::int64_t hk_, std::int64_t d_, std::int64_t tail)
      : batch(static_cast<std::int64_t>(lens_q.size())), hq(hq_), hk(hk_), d(d_) {
    varlen = make_varlen(lens_q, lens_k);
    sq = varlen->vl.max_seqlen_q;
    sk = varlen->vl.max_seqlen_k;
    allocate(1, varlen->total_q + tail, varlen->total_k + tail);
  }
  void allocate(std::int64_t tb, std::int64_t rows_q, std::int64_t rows_k) {
    q = HostTensor(DType::e4m3, tb, rows_q, hq, d);
    k = HostTensor(DType::e4m3, tb, rows_k, hk, d);
    v = HostTensor(DType::e4m3, tb, rows_k, hk, d);
    o = HostTensor(DType::bf16, tb, rows_q, hq, d);
    lse = poisoned_lse(tb * hq * rows_q);
  }
  const std::vector<std::int32_t>* cu_q() const { return varlen ? &varlen->cu_q : nullptr; }
  const std::vector<std::int32_t>* cu_k() const { return varlen ? &varlen->cu_k : nullptr; }
  // Real values uniform in [-amp, amp), quantised.
  void randomize(std::uint64_t seed, double amp = 2.0) {
    q_descale = quantise_e4m3(uniform_dense(seed * 8 + 1, q.t.batch, q.t.seqlen, hq, d, amp), q.t, batch, hk,
                              cu_q(), seed * 8 + 2);
    k_descale = quantise_e4m3(uniform_dense(seed * 8 + 3, k.t.batch, k.t.seqlen, hk, d, amp), k.t, batch, hk,
                              cu_k(), seed * 8 + 4);
    v_descale = quantise_e4m3(uniform_dense(seed * 8 + 5, v.t.batch, v.t.seqlen, hk, d, amp), v.t, batch, hk,
                              cu_k(), seed * 8 + 6);
  }
  void poison() {
    o.buf.poison();
    std::fill(lse.begin(), lse.end(), std::numeric_limits<float>::quiet_NaN());
  }
  flashattn::ForwardArgs forward_args() {
    flashattn::ForwardArgs a;
    a.q = q.t;
    a.k = k.t;
    a.v = v.t;
    a.o = o.t;
    a.lse = lse.data();
    a.options = options;
    if (varlen) a.options.varlen = varlen->get();
    a.q_descale = q_descale.data();
    a.k_descale = k_descale.data();
    a.v_descale = v_descale.data();
    return a;
  }
  double scale() const {
    return options.softmax_scale ? *options.softmax_scale : static_cast<float>(1.0 / std::sqrt(static_cast<double>(d)));
  }
};

// O (as double) and LSE of the float64 reference on p's e4m3 inputs, with
// an f64 output: the oracle every FP8 test is judged against.
inline Outputs fp8_reference(Fp8Problem& p) {
  HostTensor o64(DType::f64, p.o.t.batch, p.o.t.seqlen, p.hq, p.d);
  std::vector<float> lse = poisoned_lse(static_cast<std::int64_t>(p.lse.size()));
  flashattn::ForwardArgs a = p.forward_args();
  a.o = o64.t;
  a.lse = lse.data();
  flashattn::reference::forward(a);
  Outputs out;
  out.o = o64.values();
  out.lse = to_double(lse);
  return out;
}

}  // namespace fa_test
