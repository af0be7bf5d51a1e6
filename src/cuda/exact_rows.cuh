// The slow path behind the NaN rule (docs/api.md, "NaN and inf") in every
// flash kernel: one output row recomputed exactly, one warp at a time.
//
// Inside a tile the fast kernels multiply masked probabilities (0) by V,
// dO, Q and K in full matrix products, so a NaN or inf of a key, value,
// query or output gradient reaches rows of the same tile that do not
// attend to it (0 x NaN = NaN). Checking every operand for non-finite
// values would cost the common case; instead each kernel's epilogue looks
// at the finished rows it is about to store (non-finite values survive
// every later step: rescaling, sums and the final division), and only a
// row that is not finite is recomputed here, from the inputs, visiting
// exactly the keys (or, for dK / dV, the query rows) the masks and block
// lists let it see. A row that is NaN by the rule comes out NaN again; a
// row that only caught 0 x NaN comes out finite. Finite inputs never take
// this path.
//
// The warp splits head_dim: lane l owns columns l, l + 32, ... (kCols of
// them). Every function here must be called by all 32 lanes of a warp
// with the same arguments (they reduce over the warp), and they are
// __noinline__ so that the fast kernels' register allocation does not see
// them. The arithmetic follows the fast kernels' (exp2 domain, the
// forward's online softmax, the backward's P from the saved LSE with
// P <= 1) in fp32.
#pragma once

#include <cmath>
#include <cstdint>
#include <type_traits>

#include "common.cuh"
#include "ptx/ptx.cuh"

namespace flashattn::detail::cuda::exact {

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.69314718055994531f;

// kLanes: the lanes that split head_dim, 32 (a warp) in the kernels and 1
// in the host tests (tests/cuda_host), where one thread plays the warp.
template <int kD, int kLanes = 32>
constexpr int kCols = (kD + kLanes - 1) / kLanes;

template <int kLanes>
__host__ __device__ __forceinline__ float warp_sum(float v) {
  if constexpr (kLanes > 1) {
#pragma unroll
    for (int m = kLanes / 2; m > 0; m >>= 1) v += __shfl_xor_sync(0xffffffffu, v, m);
  }
  return v;
}

// This lane's columns of a row of a 16-bit tensor, as floats (0 past kD).
template <class T, int kD, int kLanes>
__host__ __device__ __forceinline__ void load_cols(float (&x)[kCols<kD, kLanes>], const T* row, int lane) {
#pragma unroll
  for (int u = 0; u < kCols<kD, kLanes>; ++u) {
    const int c = lane + kLanes * u;
    x[u] = c < kD ? to_float(row[c]) : 0.f;
  }
}

template <int kD, int kLanes>
__host__ __device__ __forceinline__ float dot_cols(const float (&a)[kCols<kD, kLanes>],
                                                   const float (&b)[kCols<kD, kLanes>]) {
  float s = 0.f;
#pragma unroll
  for (int u = 0; u < kCols<kD, kLanes>; ++u) s = fmaf(a[u], b[u], s);
  return s;
}

template <class T>
__host__ __device__ __forceinline__ const T* row_ptr(const void* base, std::int64_t sb, std::int64_t ss, std::int64_t sh,
                                            int b, std::int64_t row, int h) {
  return static_cast<const T*>(base) + b * sb + row * ss + h * sh;
}

// Calls f(j) for every key j (sequence position) that query row i of
// (b, query head h) attends: the window range, or the keys of the listed
// blocks (the window applying inside partial blocks only), clipped to the
// sequence. An index outside [0, num_k_blocks) is skipped, as the fast
// kernels treat it as a tile past the sequence.
// (Host callable too: tests/cuda_host checks both enumerations against the
// mask rule element by element, without a GPU.)
template <class F>
__host__ __device__ __forceinline__ void for_keys_of_row(const Params& p, const SeqInfo& s, int b, int h, int i,
                                                         F&& f) {
  const std::int64_t lo = p.window.first_key(i, s.sq, s.sk), hi = p.window.last_key(i, s.sq, s.sk);
  if (!p.is_sparse()) {
    for (std::int64_t j = lo; j <= hi; ++j) f(static_cast<int>(j));
    return;
  }
  const std::int64_t row = mask_row(p, b, h, i / p.block_q);
  for (int list = 0; list < 2; ++list) {
    const std::int32_t* idx = list == 0 ? p.bm_idx : p.bm_fidx;
    const std::int32_t* cnt = list == 0 ? p.bm_count : p.bm_fcount;
    if (cnt == nullptr) continue;
    const int n = clamp_count(cnt[row], p.bm_nkb);
    for (int e = 0; e < n; ++e) {
      const int kb = idx[row * p.bm_nkb + e];
      if (kb < 0 || kb >= p.bm_nkb) continue;
      std::int64_t j0 = static_cast<std::int64_t>(kb) * p.block_k, j1 = j0 + p.block_k - 1;
      if (j1 > s.sk - 1) j1 = s.sk - 1;
      if (list == 0) {  // partial: the window applies
        if (j0 < lo) j0 = lo;
        if (j1 > hi) j1 = hi;
      }
      for (std::int64_t j = j0; j <= j1; ++j) f(static_cast<int>(j));
    }
  }
}

// Calls f(i) for every query row i of (b, query head h) that attends key
// j: the rows whose window holds j, or the rows of the query blocks whose
// lists hold j's block (the transposed lists), the window applying inside
// partial blocks only.
template <class F>
__host__ __device__ __forceinline__ void for_rows_of_key(const Params& p, const SeqInfo& s, int b, int h, int j,
                                                         F&& f) {
  const std::int64_t shift = static_cast<std::int64_t>(s.sk) - s.sq;
  std::int64_t lo = 0, hi = s.sq - 1;  // rows whose window holds j
  if (p.window.right >= 0 && j - shift - p.window.right > lo) lo = j - shift - p.window.right;
  if (p.window.left >= 0 && j - shift + p.window.left < hi) hi = j - shift + p.window.left;
  if (!p.is_sparse()) {
    for (std::int64_t i = lo; i <= hi; ++i) f(static_cast<int>(i));
    return;
  }
  const int bb = p.bm_batch == 1 ? 0 : b, hh = p.bm_heads == 1 ? 0 : h;
  const std::int64_t row = (static_cast<std::int64_t>(bb) * p.bm_heads + hh) * p.bm_nkb + j / p.block_k;
  const int n = clamp_count(p.bm_t_count[row], p.bm_nqb);
  for (int e = 0; e < n; ++e) {
    const int v = p.bm_t_idx[row * p.bm_nqb + e];
    std::int64_t i0 = static_cast<std::int64_t>(v >> 1) * p.block_q, i1 = i0 + p.block_q - 1;
    if (i1 > s.sq - 1) i1 = s.sq - 1;
    if ((v & 1) == 0) {  // partial
      if (i0 < lo) i0 = lo;
      if (i1 > hi) i1 = hi;
    }
    for (std::int64_t i = i0; i <= i1; ++i) f(static_cast<int>(i));
  }
}

// In the backward below, a score of -inf (an attended product that
// overflowed) has P = 0 and dS = 0 by selection, whatever its row (as the
// float64 reference defines it: 2^(-inf - LSE) is NaN when the row's LSE
// is, and 0 x (dP - D) when dP or D is); P and dS then still multiply dO,
// Q and K (0 x inf is NaN there).

// The backward's probability of a score in log2 units against the row's
// saved LSE (times log2 e; +inf for an empty row): at most 1, as the true
// value is (the saved LSE is rounded, and at logits of 1e6 and more its
// rounding alone would make P far larger than 1).
__host__ __device__ __forceinline__ float backward_prob(float s2, float lse2) { return exp2f(ptx::min_nan(s2 - lse2, 0.f)); }

__host__ __device__ __forceinline__ float saved_lse2(const Params& p, std::int64_t row) {
  const float l = p.lse[row];
  return l == -INFINITY ? INFINITY : l * kLog2e;
}

// Query row i of (b, query head h): o (this lane's columns, divided by the
// row sum and times 1 / (1 - p)) and the LSE, as the forward defines them.
// T is the inputs' type: with e4m3 codes the descales multiply the scores
// (Q's and K's) and O (V's), as in the FP8 kernel.
template <class T, int kD, int kLanes = 32>
__host__ __device__ __noinline__ void forward_row(const Params& p, const SeqInfo& s, int b, int h, int i, int lane,
                                                  float (&o)[kCols<kD, kLanes>], float& lse) {
  const int hk = h / p.group;
  float q_mul = p.scale_log2, v_mul = 1.f;
  if constexpr (std::is_same_v<T, __nv_fp8_e4m3>) {
    q_mul *= descale(p.q_descale, p, b, hk) * descale(p.k_descale, p, b, hk);
    v_mul = descale(p.v_descale, p, b, hk);
  }
  float q[kCols<kD, kLanes>];
  load_cols<T, kD, kLanes>(q, row_ptr<T>(p.q, p.q_sb, p.q_ss, p.q_sh, b, s.q_start + i, h), lane);
#pragma unroll
  for (int u = 0; u < kCols<kD, kLanes>; ++u) {
    q[u] *= q_mul;
    o[u] = 0.f;
  }
  const std::uint32_t bh = dropout_bh(p, b, h);
  float m = -INFINITY, l = 0.f;
  for_keys_of_row(p, s, b, h, i, [&](int j) {
    float k[kCols<kD, kLanes>], v[kCols<kD, kLanes>];
    load_cols<T, kD, kLanes>(k, row_ptr<T>(p.k, p.k_sb, p.k_ss, p.k_sh, b, s.k_start + j, hk), lane);
    load_cols<T, kD, kLanes>(v, row_ptr<T>(p.v, p.v_sb, p.v_ss, p.v_sh, b, s.k_start + j, hk), lane);
    const float sc = warp_sum<kLanes>(dot_cols<kD, kLanes>(q, k));
    const float mx = fmaxf(m, sc);
    const float base = mx == -INFINITY ? 0.f : mx;  // nothing visible yet: exp2(-inf) is 0, not NaN
    const float corr = exp2f(m - base), pe = exp2f(sc - base);
    m = mx;
    l = l * corr + pe;
    // A dropped probability still multiplies its value: 0 x NaN is NaN.
    const float pk = pe * ((!p.has_dropout || p.dropout.keep(bh, i, j)) ? 1.f : 0.f);
#pragma unroll
    for (int u = 0; u < kCols<kD, kLanes>; ++u) o[u] = o[u] * corr + pk * v[u];
  });
  const float inv = l == 0.f ? 0.f : v_mul * p.keep_scale / l;
#pragma unroll
  for (int u = 0; u < kCols<kD, kLanes>; ++u) o[u] *= inv;
  lse = l == 0.f ? -INFINITY : m * kLn2 + logf(l);
}

// dQ of query row i of (b, query head h), this lane's columns, times the
// softmax scale.
template <class T, int kD, int kLanes = 32>
__host__ __device__ __noinline__ void dq_row(const Params& p, const SeqInfo& s, int b, int h, int i, int lane,
                                             float (&dq)[kCols<kD, kLanes>]) {
  const int hk = h / p.group;
  const std::int64_t r = q_row(p, s, b, h, i);
  float q[kCols<kD, kLanes>], d_o[kCols<kD, kLanes>];
  load_cols<T, kD, kLanes>(q, row_ptr<T>(p.q, p.q_sb, p.q_ss, p.q_sh, b, s.q_start + i, h), lane);
  load_cols<T, kD, kLanes>(d_o, row_ptr<T>(p.dout, p.do_sb, p.do_ss, p.do_sh, b, s.q_start + i, h), lane);
#pragma unroll
  for (int u = 0; u < kCols<kD, kLanes>; ++u) dq[u] = 0.f;
  const float lse2 = saved_lse2(p, r), dd = p.dsum[r];
  const std::uint32_t bh = dropout_bh(p, b, h);
  for_keys_of_row(p, s, b, h, i, [&](int j) {
    float k[kCols<kD, kLanes>], v[kCols<kD, kLanes>];
    load_cols<T, kD, kLanes>(k, row_ptr<T>(p.k, p.k_sb, p.k_ss, p.k_sh, b, s.k_start + j, hk), lane);
    load_cols<T, kD, kLanes>(v, row_ptr<T>(p.v, p.v_sb, p.v_ss, p.v_sh, b, s.k_start + j, hk), lane);
    const float sc = warp_sum<kLanes>(dot_cols<kD, kLanes>(q, k)), dp = warp_sum<kLanes>(dot_cols<kD, kLanes>(d_o, v));
    const float pe = sc == -INFINITY ? 0.f : backward_prob(sc * p.scale_log2, lse2);
    const bool kept = !p.has_dropout || p.dropout.keep(bh, i, j);
    const float ds = sc == -INFINITY ? 0.f : pe * (dp * (kept ? p.keep_scale : 0.f) - dd);
#pragma unroll
    for (int u = 0; u < kCols<kD, kLanes>; ++u) dq[u] = fmaf(ds, k[u], dq[u]);
  });
#pragma unroll
  for (int u = 0; u < kCols<kD, kLanes>; ++u) dq[u] *= p.scale;
}

// dK (times the softmax scale) and dV of key j from the rows of query head
// h alone (under GQA the per-query-head parts that reduce_dkdv sums), this
// lane's columns.
template <class T, int kD, int kLanes = 32>
__host__ __device__ __noinline__ void dkdv_row(const Params& p, const SeqInfo& s, int b, int h, int j, int lane,
                                               float (&dk)[kCols<kD, kLanes>], float (&dv)[kCols<kD, kLanes>]) {
  const int hk = h / p.group;
  float k[kCols<kD, kLanes>], v[kCols<kD, kLanes>];
  load_cols<T, kD, kLanes>(k, row_ptr<T>(p.k, p.k_sb, p.k_ss, p.k_sh, b, s.k_start + j, hk), lane);
  load_cols<T, kD, kLanes>(v, row_ptr<T>(p.v, p.v_sb, p.v_ss, p.v_sh, b, s.k_start + j, hk), lane);
#pragma unroll
  for (int u = 0; u < kCols<kD, kLanes>; ++u) dk[u] = dv[u] = 0.f;
  const std::uint32_t bh = dropout_bh(p, b, h);
  for_rows_of_key(p, s, b, h, j, [&](int i) {
    const std::int64_t r = q_row(p, s, b, h, i);
    float q[kCols<kD, kLanes>], d_o[kCols<kD, kLanes>];
    load_cols<T, kD, kLanes>(q, row_ptr<T>(p.q, p.q_sb, p.q_ss, p.q_sh, b, s.q_start + i, h), lane);
    load_cols<T, kD, kLanes>(d_o, row_ptr<T>(p.dout, p.do_sb, p.do_ss, p.do_sh, b, s.q_start + i, h), lane);
    const float sc = warp_sum<kLanes>(dot_cols<kD, kLanes>(q, k)), dp = warp_sum<kLanes>(dot_cols<kD, kLanes>(d_o, v));
    const float pe = sc == -INFINITY ? 0.f : backward_prob(sc * p.scale_log2, saved_lse2(p, r));
    const bool kept = !p.has_dropout || p.dropout.keep(bh, i, j);
    const float pk = pe * (kept ? p.keep_scale : 0.f);
    const float ds = sc == -INFINITY ? 0.f : pe * (dp * (kept ? p.keep_scale : 0.f) - p.dsum[r]);
#pragma unroll
    for (int u = 0; u < kCols<kD, kLanes>; ++u) {
      dv[u] = fmaf(pk, d_o[u], dv[u]);
      dk[u] = fmaf(ds, q[u], dk[u]);
    }
  });
#pragma unroll
  for (int u = 0; u < kCols<kD, kLanes>; ++u) dk[u] *= p.scale;
}

// Stores dK, dV of key j (query head h; columns [c_lo, c_hi) of this
// lane's) where the fast kernels store them: dk / dv, or under GQA the fp32
// per-query-head dk_accum / dv_accum.
template <class T, int kD>
__device__ __forceinline__ void store_dkdv_row(const Params& p, const SeqInfo& s, int b, int h, int j, int lane,
                                               const float (&dk)[kCols<kD>], const float (&dv)[kCols<kD>], int c_lo,
                                               int c_hi) {
#pragma unroll
  for (int u = 0; u < kCols<kD>; ++u) {
    const int c = lane + 32 * u;
    if (c < c_lo || c >= c_hi || c >= kD) continue;
    if (p.group > 1) {
      const std::int64_t row = kv_row(p, s, b, h, j) * kD + c;
      p.dk_accum[row] = dk[u];
      p.dv_accum[row] = dv[u];
    } else {
      const std::int64_t row = s.k_start + j;
      static_cast<T*>(p.dk)[b * p.dk_sb + row * p.dk_ss + h * p.dk_sh + c] = from_float<T>(dk[u]);
      static_cast<T*>(p.dv)[b * p.dv_sb + row * p.dv_ss + h * p.dv_sh + c] = from_float<T>(dv[u]);
    }
  }
}

// For each row r (0..15) of this warp's 16-row slice of an accumulator
// tile (lane l holds rows l / 4 and l / 4 + 8, its quad the whole row) that
// any lane flagged in bad[half], runs fix(r) with the whole warp, after a
// __syncwarp that orders the lanes' own stores of the row before fix's.
template <class Fix>
__device__ __forceinline__ void for_flagged_rows(const bool (&bad)[2], Fix&& fix) {
#pragma unroll 1
  for (int half = 0; half < 2; ++half) {
    unsigned m = __ballot_sync(0xffffffffu, bad[half]);
    if (m != 0u) __syncwarp();
    while (m != 0u) {
      const int quad = (__ffs(static_cast<int>(m)) - 1) >> 2;
      m &= ~(0xfu << (4 * quad));
      fix(quad + 8 * half);
    }
  }
}

// Rows (bit r) of a 16-row slice of 16-bit values, kD to a row, with a
// NaN or inf among them: the forwards check their output staging in shared
// memory (after the fp32 accumulators are dead, so that the check takes no
// registers from the main loop). chunk_at(r, k) is the address of the
// k-th 16-byte chunk (8 columns) of row r. Lane l reads row l / 2, every
// other chunk.
template <class T>
__host__ __device__ __forceinline__ bool nonfinite2(std::uint32_t v) {
  constexpr std::uint32_t lo = std::is_same_v<T, __half> ? 0x7c00u : 0x7f80u, hi = lo << 16;
  return (v & lo) == lo || (v & hi) == hi;  // exponent all ones: inf or NaN
}
template <class T, int kD, class ChunkAt>
__device__ __forceinline__ unsigned nonfinite_rows16(int lane, ChunkAt&& chunk_at) {
  const int r = lane >> 1;
  bool bad = false;
#pragma unroll
  for (int k = lane & 1; k < kD / 8; k += 2) {
    const uint4 v = *reinterpret_cast<const uint4*>(chunk_at(r, k));
    bad |= nonfinite2<T>(v.x) || nonfinite2<T>(v.y) || nonfinite2<T>(v.z) || nonfinite2<T>(v.w);
  }
  const unsigned lanes = __ballot_sync(0xffffffffu, bad);
  unsigned rows = 0;
#pragma unroll
  for (int q = 0; q < 16; ++q) rows |= ((lanes >> (2 * q)) & 3u) != 0u ? 1u << q : 0u;
  return rows;
}

// Runs fix(r) with the whole warp for each set bit r of rows (warp-uniform).
template <class Fix>
__device__ __forceinline__ void for_rows(unsigned rows, Fix&& fix) {
#pragma unroll 1
  while (rows != 0u) {
    const int r = __ffs(static_cast<int>(rows)) - 1;
    rows &= rows - 1u;
    fix(r);
  }
}

// Not finite, NaN included (isfinite of a float sum: a NaN or inf among
// the summands leaves the sum non-finite).
__device__ __forceinline__ bool not_finite(float x) { return !isfinite(x); }

}  // namespace flashattn::detail::cuda::exact
