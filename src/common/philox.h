// Philox4x32 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3",
// SC'11) with 7 rounds, the counter-based generator behind dropout. Shared
// verbatim by the CPU and CUDA backends so that both draw the same mask bit
// for bit. Why 7 rounds, not the default 10 of cuRAND and Random123: the
// paper reports Philox4x32 "Crush-resistant" (passing TestU01's BigCrush)
// from 7 rounds, 10 being a safety margin; and with dropout the Philox
// arithmetic, not the matrix products, bounds the kernels.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define FA_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define FA_HOST_DEVICE inline
#endif

namespace flashattn::detail {

struct Philox4 {
  std::uint32_t x, y, z, w;
};

FA_HOST_DEVICE std::uint32_t mulhilo32(std::uint32_t a, std::uint32_t b, std::uint32_t* hi) {
  const std::uint64_t p = static_cast<std::uint64_t>(a) * b;
  *hi = static_cast<std::uint32_t>(p >> 32);
  return static_cast<std::uint32_t>(p);
}

constexpr int kPhiloxRounds = 7;

FA_HOST_DEVICE Philox4 philox4x32(Philox4 ctr, std::uint32_t k0, std::uint32_t k1) {
  constexpr std::uint32_t kMul0 = 0xD2511F53u, kMul1 = 0xCD9E8D57u;
  constexpr std::uint32_t kWeyl0 = 0x9E3779B9u, kWeyl1 = 0xBB67AE85u;
#if defined(__CUDACC__)
#pragma unroll
#endif
  for (int round = 0; round < kPhiloxRounds; ++round) {
    std::uint32_t hi0, hi1;
    const std::uint32_t lo0 = mulhilo32(kMul0, ctr.x, &hi0);
    const std::uint32_t lo1 = mulhilo32(kMul1, ctr.z, &hi1);
    ctr = Philox4{hi1 ^ ctr.y ^ k0, lo1, hi0 ^ ctr.w ^ k1, lo0};
    k0 += kWeyl0;
    k1 += kWeyl1;
  }
  return ctr;
}

// The dropout stream. One Philox call yields 8 random 16-bit words (the
// low and high halves of its 4 outputs) for a 2 x 8 patch of the attention
// matrix: rows r and r + 8 of a 16-row group (r % 16 < 8) and columns
//   16g + 2u, 16g + 2u + 1, 16g + 8 + 2u, 16g + 8 + 2u + 1      (u = 0 .. 3)
// The element (row 16R + 8a + i, column 16g + 8c + 2u + e) takes the half e
// (0 = low) of output word 2a + c of the call with
//   key     = (lo32(seed), hi32(seed) ^ hi32(offset))
//   counter = (4g + u, 8R + i, batch * heads_q + head, lo32(offset)).
// Why this grouping: it is the mma fragment layout. A thread of a forward
// kernel (mma.sync m16n8 tiles on sm80, wgmma's m64nN accumulator on sm90,
// which repeats the same 8-column pattern) holds, in rows r and r + 8, the
// column pair 2u, 2u + 1 of every 8-column tile: one call covers all 8 of
// its elements in a 16-column slice. A backward kernel holds the transposed
// pattern (S^T: keys as rows), and one call covers 4 of its elements. The
// integer work of Philox, not the matrix products, bounds those kernels
// with dropout, so the number of calls per element is what matters.
// An element is kept iff its 16-bit word >= threshold, threshold =
// round(p * 2^16) (at most 2^16 - 1), so the keep probability is
// 1 - threshold / 2^16, within 2^-17 of 1 - p (kept values are scaled by
// 1 / (1 - p)).
struct DropoutStream {
  std::uint32_t k0, k1, offset_lo, threshold;

  FA_HOST_DEVICE static DropoutStream make(std::uint64_t seed, std::uint64_t offset, float p) {
    DropoutStream s;
    s.k0 = static_cast<std::uint32_t>(seed);
    s.k1 = static_cast<std::uint32_t>(seed >> 32) ^ static_cast<std::uint32_t>(offset >> 32);
    s.offset_lo = static_cast<std::uint32_t>(offset);
    const double t = static_cast<double>(p) * 65536.0;
    s.threshold = t >= 65535.0 ? 0xFFFFu : static_cast<std::uint32_t>(t + 0.5);
    return s;
  }

  // The counter's column part (4g + u) of column col, and its row part of row.
  FA_HOST_DEVICE static std::uint32_t call_of(std::uint32_t col) { return ((col >> 4) << 2) | ((col >> 1) & 3u); }
  FA_HOST_DEVICE static std::uint32_t row_pair_of(std::uint32_t row) { return ((row >> 4) << 3) | (row & 7u); }
  // Which output word (0 .. 3) holds (row, col), and which half of it.
  FA_HOST_DEVICE static std::uint32_t word_of(std::uint32_t row, std::uint32_t col) {
    return (((row >> 3) & 1u) << 1) | ((col >> 3) & 1u);
  }
  FA_HOST_DEVICE static std::uint32_t half_of(std::uint32_t col) { return col & 1u; }

  // The 4 output words of the call (row_pair, call) of head bh.
  FA_HOST_DEVICE Philox4 words(std::uint32_t bh, std::uint32_t row_pair, std::uint32_t call) const {
    return philox4x32(Philox4{call, row_pair, bh, offset_lo}, k0, k1);
  }

  FA_HOST_DEVICE static std::uint32_t word(const Philox4& r, std::uint32_t w) {
    return w == 0 ? r.x : w == 1 ? r.y : w == 2 ? r.z : r.w;
  }

  // Whether the low (half = 0) or high 16-bit word of w is kept.
  FA_HOST_DEVICE bool keep(std::uint32_t w, std::uint32_t half) const {
    return ((half ? w >> 16 : w) & 0xFFFFu) >= threshold;
  }

  // Keep bits of the four words of one call at one 16-bit half, at bits 0,
  // 2, 4, 6 (words x, y, z, w): the order in which both backward kernels
  // hold a call's elements (S^T: keys as rows, so one call gives a thread
  // 4 elements, rows i, i + 8 of the queries at keys j, j + 8).
  FA_HOST_DEVICE std::uint32_t keep_bits4(const Philox4& r, std::uint32_t half) const {
    return static_cast<std::uint32_t>(keep(r.x, half)) | static_cast<std::uint32_t>(keep(r.y, half)) << 2 |
           static_cast<std::uint32_t>(keep(r.z, half)) << 4 | static_cast<std::uint32_t>(keep(r.w, half)) << 6;
  }

  // Two 16-bit words packed in one 32-bit word (low, high): 0xFFFF in each
  // half that is kept, 0 in each that is dropped. AND-ed with two packed
  // 16-bit values it applies the mask to both (the kernels' P fragments).
  FA_HOST_DEVICE std::uint32_t keep_mask(std::uint32_t w) const {
    const std::uint32_t t = threshold << 16;  // compare each half at the top of the word
    return ((w << 16) >= t ? 0x0000FFFFu : 0u) | (w >= t ? 0xFFFF0000u : 0u);
  }

  FA_HOST_DEVICE bool keep(std::uint32_t bh, std::uint32_t row, std::uint32_t col) const {
    return keep(word(words(bh, row_pair_of(row), call_of(col)), word_of(row, col)), half_of(col));
  }

  // keep_or_zero[c - col0] = kept(c) ? value : 0 for the columns c in
  // [col0, col0 + n) of (bh, row), each call drawn once.
  template <class V>
  FA_HOST_DEVICE void fill_row(std::uint32_t bh, std::uint32_t row, std::int64_t col0, std::int64_t n, V value,
                               V* out) const {
    if (n <= 0) return;
    const std::int64_t last = col0 + n - 1;
    const std::uint32_t pair = row_pair_of(row), a = (row >> 3) & 1u;
    for (std::int64_t g = col0 >> 4; g <= last >> 4; ++g)
      for (std::uint32_t u = 0; u < 4; ++u) {
        const Philox4 r = words(bh, pair, static_cast<std::uint32_t>(4 * g) + u);
        for (std::uint32_t c = 0; c < 2; ++c) {
          const std::uint32_t w = word(r, 2 * a + c);
          for (std::uint32_t e = 0; e < 2; ++e) {
            const std::int64_t col = 16 * g + 8 * c + 2 * u + e;
            if (col >= col0 && col <= last) out[col - col0] = keep(w, e) ? value : V(0);
          }
        }
      }
  }
};

}  // namespace flashattn::detail
