// The softmax and masking steps of every flash kernel, as operations on a
// tile of scores held in registers: the forwards (sm80, sm90), the sm90
// backward and the sm90 dQ pass write their loops in these words instead of
// re-typing the index arithmetic of the register layout each time.
//
// The register layout (mma.sync.m16n8 accumulators and wgmma's alike): a
// warp holds 16 rows x N columns of the tile; lane l holds rows l / 4
// ("half" 0) and l / 4 + 8 (half 1), and in each 8-column group tt the two
// columns 8 tt + 2 (l % 4) + e, e = 0, 1. A thread's N / 2 values are
// indexed 4 tt + 2 half + e (acc_index). kN below is always the length of
// a thread's array: N = 2 kN columns, kN / 4 groups. The four lanes of a quad hold the
// same two rows, so a row reduction is the thread's own values, then two
// shuffles.
#pragma once

#include <bit>
#include <cmath>
#include <cstdint>

#include "common.cuh"
#include "ptx/ptx.cuh"
#include "ptx/sm90.cuh"

namespace flashattn::detail::cuda::tile {

__device__ __forceinline__ constexpr int acc_index(int tt, int half, int e) { return 4 * tt + 2 * half + e; }

// This lane's first column within an 8-column group: 2 (lane % 4).
__device__ __forceinline__ int lane_col(int lane) { return 2 * (lane % 4); }
// This lane's row of `half` within its warp's 16 rows.
__device__ __forceinline__ int lane_row(int lane, int half) { return lane / 4 + 8 * half; }

__device__ __forceinline__ float quad_max(float v) {
  v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
  return fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));
}
__device__ __forceinline__ float quad_sum(float v) {
  v += __shfl_xor_sync(0xffffffffu, v, 1);
  return v + __shfl_xor_sync(0xffffffffu, v, 2);
}

// s *= f, every element.
template <int kN>
__device__ __forceinline__ void scale(float (&s)[kN], float f) {
#pragma unroll
  for (int i = 0; i < kN; ++i) s[i] *= f;
}

// Row `half` of s: every column j = col0 + 8 tt + e outside [lo, hi] becomes
// -inf (col0: the tile's first column plus lane_col). Masked scores are
// then exactly those exp2 turns into 0.
template <int kN>
__device__ __forceinline__ void mask_outside(float (&s)[kN], int half, int col0, std::int64_t lo, std::int64_t hi) {
#pragma unroll
  for (int tt = 0; tt < kN / 4; ++tt)
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      const int j = col0 + tt * 8 + e;
      if (j < lo || j > hi) s[acc_index(tt, half, e)] = -INFINITY;
    }
}

// The largest value of row `half` among this thread's columns.
template <int kN>
__device__ __forceinline__ float thread_row_max(const float (&s)[kN], int half) {
  float mx = -INFINITY;
#pragma unroll
  for (int tt = 0; tt < kN / 4; ++tt) mx = fmaxf(mx, fmaxf(s[acc_index(tt, half, 0)], s[acc_index(tt, half, 1)]));
  return mx;
}

// 2^x on the FMA pipes, for x <= 0 (a score minus its row's max): the
// MUFU unit does 16 ex2 a clock an SM against 128 FMAs, so where the
// softmax is the critical path (FP8 products, d = 64) moving part of a
// row's exp2 here shortens it (FlashAttention-4's trick). x = n + f with
// n = round(x) (the 1.5 * 2^23 add puts it in the mantissa's low bits) and
// |f| <= 1/2; 2^f by a degree-4 polynomial (relative error 3e-6, under
// the 2^-8 of a bf16 P and far under e4m3's; 1 at f = 0 exactly, so a
// row's max gives exactly 1); 2^n built as a float's exponent bits and
// multiplied in, so that x = NaN stays NaN. x below -127 is clamped there,
// where 2^n's bits are those of +0: a masked score (-inf) gives exactly 0.
// Host callable for its test (tests/cuda_host).
__host__ __device__ __forceinline__ float exp2_fma(float x) {
  x = ptx::max_nan(x, -127.f);
  const float t = x + 12582912.f;
  const float f = x - (t - 12582912.f);
  float q = fmaf(0.009582853f, f, 0.055906426f);
  q = fmaf(q, f, 0.240240991f);
  q = fmaf(q, f, 0.693124175f);
  q = fmaf(q, f, 1.f);
#if defined(__CUDA_ARCH__)
  const float two_n = __int_as_float((__float_as_int(t) + 127) << 23);
#else
  const float two_n = std::bit_cast<float>((std::bit_cast<std::int32_t>(t) + 127) << 23);
#endif
  return q * two_n;
}

// One row's running maximum meeting a tile's (both in log2 units): the
// base the tile's exponentials subtract, the factor the running O and sum
// take (corr), and whether the base moved. kStaleMax = 0: the base is the
// new maximum, every tile. kStaleMax > 0: the base stays the old maximum
// while the new one exceeds it by at most kStaleMax, so that P stays
// below 2^kStaleMax and corr is exactly 1 (O need not be touched); the
// result is the same in the end, since O and the sum share the base
// (FlashAttention-4's conditional rescaling). A row that saw nothing yet
// (-inf - -inf is NaN), an infinite maximum and the first finite one all
// take the moving path. Host callable for its test (tests/cuda_host).
struct MaxStep {
  float base, corr;
  bool moved;
};
template <int kStaleMax>
__host__ __device__ __forceinline__ MaxStep max_step(float& running, float tile_max) {
  const float mx = fmaxf(tile_max, running);
  if constexpr (kStaleMax > 0)
    if (mx - running <= static_cast<float>(kStaleMax)) return {running, 1.f, false};
  // Nothing visible yet: subtract 0, so exp2(-inf) is 0, not NaN.
  const float base = mx == -INFINITY ? 0.f : mx;
#if defined(__CUDA_ARCH__)
  const float corr = ptx::exp2_approx(running - base);
#else
  const float corr = std::exp2(running - base);
#endif
  running = mx;
  return {base, corr, true};
}

// The running state of the online softmax for a thread's two rows, in the
// exp2 domain: max_ of the scaled scores (log2 units; with kStaleMax the
// base of the exponentials, which may trail the true maximum by up to
// kStaleMax), sum_ of exp2(score - max_) over the columns this thread saw
// (the quad's partial sums are added at the end: total_sum).
struct OnlineSoftmax {
  float max_[2] = {-INFINITY, -INFINITY};
  float sum_[2] = {0.f, 0.f};

  // One tile of scores s (raw or already scaled): s * post_scale is the tile in log2 units. Updates the
  // state, leaves P = exp2(s * post_scale - max) in s and the factor the
  // running O must be multiplied by in corr; returns whether either row's
  // base moved (without kStaleMax: always).
  // kFmaEvery > 0: one 8-column group in kFmaEvery takes exp2_fma, the
  // rest the MUFU unit's ex2. kStaleMax: max_step.
  template <int kFmaEvery = 0, int kStaleMax = 0, int kN>
  __device__ __forceinline__ bool update(float (&s)[kN], float post_scale, float (&corr)[2]) {
    bool moved = false;
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      // The quad's four lanes compute the same maximum, so they take the
      // same step: a row's base is one value across the lanes holding it.
      const MaxStep st = max_step<kStaleMax>(max_[half], quad_max(thread_row_max(s, half)) * post_scale);
      const float base = st.base;
      corr[half] = st.corr;
      moved |= st.moved;
      float sum = 0.f;
#pragma unroll
      for (int tt = 0; tt < kN / 4; ++tt)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          float& v = s[acc_index(tt, half, e)];
          const float x = fmaf(v, post_scale, -base);
          if constexpr (kFmaEvery > 0)
            v = tt % kFmaEvery == kFmaEvery - 1 ? exp2_fma(x) : ptx::exp2_approx(x);
          else
            v = ptx::exp2_approx(x);
          sum += v;
        }
      sum_[half] = sum_[half] * corr[half] + sum;
    }
    return moved;
  }

  // The row's sum over all its columns (the quad's four partial sums).
  __device__ __forceinline__ float total_sum(int half) const { return quad_sum(sum_[half]); }
  // ln(sum exp(scaled scores)) of the row, given its total sum; -inf for a
  // row that saw nothing (a NaN sum stays NaN).
  __device__ __forceinline__ float lse(int half, float total) const {
    return total == 0.f ? -INFINITY : max_[half] * 0.69314718055994531f + logf(total);
  }
};

// o *= corr, row by row.
template <int kN>
__device__ __forceinline__ void rescale_rows(float (&o)[kN], const float (&corr)[2]) {
#pragma unroll
  for (int tt = 0; tt < kN / 4; ++tt)
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      o[acc_index(tt, half, 0)] *= corr[half];
      o[acc_index(tt, half, 1)] *= corr[half];
    }
}

// rescale_rows after update<kFmaEvery, kStaleMax>: skipped when no row of
// the warp moved its base (every corr is exactly 1 then), which a warp vote
// decides so that the branch is uniform. Without kStaleMax, always.
template <int kStaleMax, int kN>
__device__ __forceinline__ void rescale_rows_if_moved(float (&o)[kN], const float (&corr)[2], bool moved) {
  if (kStaleMax == 0 || __any_sync(0xffffffffu, moved)) rescale_rows(o, corr);
}

// s (fp32) to 16-bit A fragments of the next product
// (m16 x k16 slices kk: rows r and r + 8 of 8-column groups 2 kk and
// 2 kk + 1): the accumulator layout of one product is the A layout of the
// next, so this is a packing only.
template <class T, int kN>
__device__ __forceinline__ void pack_a(std::uint32_t (&a)[kN / 8][4], const float (&s)[kN]) {
#pragma unroll
  for (int kk = 0; kk < kN / 8; ++kk)
#pragma unroll
    for (int q = 0; q < 4; ++q) a[kk][q] = pack2<T>(s[8 * kk + 2 * q], s[8 * kk + 2 * q + 1]);
}

// s (fp32) to e4m3 A fragments of a k32 product (the FP8 forward's P V):
// slice kk covers 8-column groups 4 kk .. 4 kk + 3. The k32 A fragment
// wants k = 4 (l % 4) + 0..3 in a[0] (row r) and a[1] (row r + 8), and
// k = 16 + the same in a[2], a[3], while this thread holds columns
// 2 (l % 4) + 0, 1 of each group. Instead of moving values between lanes,
// each register takes the thread's own columns of two groups, so
// fragment position k holds column fp8_key_of_column(k) (sm90/fp8_vt.h),
// and the V^T tile stores its keys in that order.
template <int kN>
__device__ __forceinline__ void pack_a_e4m3(std::uint32_t (&a)[kN / 16][4], const float (&s)[kN]) {
#pragma unroll
  for (int kk = 0; kk < kN / 16; ++kk) {
    const int g = 4 * kk;  // first 8-column group of the slice
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      const int g0 = g + 2 * (q / 2), half = q % 2;  // groups g0, g0 + 1; row r (half 0) or r + 8
      a[kk][q] = ptx::sm90::pack_e4m3x2(s[acc_index(g0, half, 0)], s[acc_index(g0, half, 1)]) |
                 ptx::sm90::pack_e4m3x2(s[acc_index(g0 + 1, half, 0)], s[acc_index(g0 + 1, half, 1)]) << 16;
    }
  }
}

}  // namespace flashattn::detail::cuda::tile
