// Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2,
// 3", SC'11), the counter-based generator behind dropout. Shared verbatim by
// the CPU and CUDA backends so that both draw the same mask bit for bit.
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

FA_HOST_DEVICE Philox4 philox4x32_10(Philox4 ctr, std::uint32_t k0, std::uint32_t k1) {
  constexpr std::uint32_t kMul0 = 0xD2511F53u, kMul1 = 0xCD9E8D57u;
  constexpr std::uint32_t kWeyl0 = 0x9E3779B9u, kWeyl1 = 0xBB67AE85u;
#if defined(__CUDACC__)
#pragma unroll
#endif
  for (int round = 0; round < 10; ++round) {
    std::uint32_t hi0, hi1;
    const std::uint32_t lo0 = mulhilo32(kMul0, ctr.x, &hi0);
    const std::uint32_t lo1 = mulhilo32(kMul1, ctr.z, &hi1);
    ctr = Philox4{hi1 ^ ctr.y ^ k0, lo1, hi0 ^ ctr.w ^ k1, lo0};
    k0 += kWeyl0;
    k1 += kWeyl1;
  }
  return ctr;
}

// The dropout stream. Columns of an attention row go in groups of 16; one
// Philox call yields the 4 random words of columns
//   16g + 2u, 16g + 2u + 1, 16g + 8 + 2u, 16g + 8 + 2u + 1      (u = 0 .. 3)
// of one row, word 2h + e for column 16g + 8h + 2u + e, with
//   key     = (lo32(seed), hi32(seed) ^ hi32(offset))
//   counter = (4g + u, row, batch * heads_q + head, lo32(offset)).
// Why this grouping: it is the mma.sync fragment layout. A thread of the
// sm80 forward holds, in each row, column pairs 2u, 2u + 1 of consecutive
// 8-column tiles, so one call serves two of its tiles; a thread of the sm80
// backward holds single columns 8 apart, so one call serves two of its
// elements (with 4 consecutive columns per call, as before, it drew one
// call per element there). Philox's integer work, not the matrix products,
// bounds those kernels with dropout.
// An element is kept iff its word >= threshold, threshold = round(p * 2^32)
// (saturated), so the keep probability is 1 - p to within 2^-32.
struct DropoutStream {
  std::uint32_t k0, k1, offset_lo, threshold;

  FA_HOST_DEVICE static DropoutStream make(std::uint64_t seed, std::uint64_t offset, float p) {
    DropoutStream s;
    s.k0 = static_cast<std::uint32_t>(seed);
    s.k1 = static_cast<std::uint32_t>(seed >> 32) ^ static_cast<std::uint32_t>(offset >> 32);
    s.offset_lo = static_cast<std::uint32_t>(offset);
    const double t = static_cast<double>(p) * 4294967296.0;
    s.threshold = t >= 4294967295.0 ? 0xFFFFFFFFu : static_cast<std::uint32_t>(t + 0.5);
    return s;
  }

  // The call (4g + u) that covers column col, and which of its words is col's.
  FA_HOST_DEVICE static std::uint32_t call_of(std::uint32_t col) { return ((col >> 4) << 2) | ((col >> 1) & 3u); }
  FA_HOST_DEVICE static std::uint32_t word_of(std::uint32_t col) { return (((col >> 3) & 1u) << 1) | (col & 1u); }
  // Column of word w (0 .. 3) of call c: the inverse of the two above.
  FA_HOST_DEVICE static std::uint32_t column_of(std::uint32_t call, std::uint32_t w) {
    return ((call >> 2) << 4) | ((w >> 1) << 3) | ((call & 3u) << 1) | (w & 1u);
  }

  // The 4 random words of call `call` of (bh, row).
  FA_HOST_DEVICE Philox4 words(std::uint32_t bh, std::uint32_t row, std::uint32_t call) const {
    return philox4x32_10(Philox4{call, row, bh, offset_lo}, k0, k1);
  }

  FA_HOST_DEVICE static std::uint32_t word(const Philox4& r, std::uint32_t w) {
    return w == 0 ? r.x : w == 1 ? r.y : w == 2 ? r.z : r.w;
  }

  FA_HOST_DEVICE bool keep(std::uint32_t word) const { return word >= threshold; }

  FA_HOST_DEVICE bool keep(std::uint32_t bh, std::uint32_t row, std::uint32_t col) const {
    return keep(word(words(bh, row, call_of(col)), word_of(col)));
  }

  // keep_or_zero[c - col0] = kept(c) ? value : 0 for the columns c in
  // [col0, col0 + n) of (bh, row), each call drawn once.
  template <class V>
  FA_HOST_DEVICE void fill_row(std::uint32_t bh, std::uint32_t row, std::int64_t col0, std::int64_t n, V value,
                               V* out) const {
    if (n <= 0) return;
    const std::int64_t last = col0 + n - 1;
    for (std::int64_t g = col0 >> 4; g <= last >> 4; ++g)
      for (std::uint32_t u = 0; u < 4; ++u) {
        const std::uint32_t call = static_cast<std::uint32_t>(4 * g) + u;
        const Philox4 r = words(bh, row, call);
        for (std::uint32_t w = 0; w < 4; ++w) {
          const std::int64_t c = column_of(call, w);
          if (c >= col0 && c <= last) out[c - col0] = keep(word(r, w)) ? value : V(0);
        }
      }
  }
};

}  // namespace flashattn::detail
