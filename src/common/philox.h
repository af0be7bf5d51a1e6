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

// The dropout stream. One Philox call yields the 4 random words of columns
// 4c .. 4c+3 of one attention row:
//   key     = (lo32(seed), hi32(seed) ^ hi32(offset))
//   counter = (c, row, batch * heads_q + head, lo32(offset))
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

  // Random words for columns 4*col_quad .. 4*col_quad + 3 of (bh, row).
  FA_HOST_DEVICE Philox4 words(std::uint32_t bh, std::uint32_t row, std::uint32_t col_quad) const {
    return philox4x32_10(Philox4{col_quad, row, bh, offset_lo}, k0, k1);
  }

  FA_HOST_DEVICE bool keep(std::uint32_t word) const { return word >= threshold; }

  FA_HOST_DEVICE bool keep(std::uint32_t bh, std::uint32_t row, std::uint32_t col) const {
    const Philox4 r = words(bh, row, col >> 2);
    const std::uint32_t lane = col & 3u;
    const std::uint32_t word = lane == 0 ? r.x : lane == 1 ? r.y : lane == 2 ? r.z : r.w;
    return keep(word);
  }
};

}  // namespace flashattn::detail
