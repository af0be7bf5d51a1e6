// The element-level visibility rule, in one place for every backend.
//
// Within one sequence of lengths (sq, sk), query row i sees key column j iff
//   lo(i) <= j <= hi(i),  lo(i) = i + (sk - sq) - window_left,
//                         hi(i) = i + (sk - sq) + window_right,
// with an unbounded side when its window is < 0 (causal is window_right = 0).
// The bottom-right alignment (the sk - sq shift) follows flash-attn >= 2.1.
// Block-sparse masks are applied on top of this in blocks (see BlockMask).
#pragma once

#include <cstdint>

#include "philox.h"  // FA_HOST_DEVICE

namespace flashattn::detail {

struct WindowMask {
  std::int64_t left = -1, right = -1;  // -1: unbounded

  FA_HOST_DEVICE bool unbounded() const { return left < 0 && right < 0; }

  // Inclusive key range [first, last] visible from row i, clipped to [0, sk).
  // Empty when first > last. No overflow: validation stores a window at
  // least as wide as the tensors' rows (up to INT64_MAX) as -1, unbounded,
  // so every value here is below 2^31. (The kernels test this per element
  // of masked tiles: the two-comparison form costs the backward's masked
  // path about a fifth more instructions.)
  FA_HOST_DEVICE std::int64_t first_key(std::int64_t i, std::int64_t sq, std::int64_t sk) const {
    if (left < 0) return 0;
    const std::int64_t lo = i + (sk - sq) - left;
    return lo < 0 ? 0 : lo;
  }
  FA_HOST_DEVICE std::int64_t last_key(std::int64_t i, std::int64_t sq, std::int64_t sk) const {
    if (right < 0) return sk - 1;
    const std::int64_t hi = i + (sk - sq) + right;
    return hi > sk - 1 ? sk - 1 : hi;
  }
  FA_HOST_DEVICE bool visible(std::int64_t i, std::int64_t j, std::int64_t sq, std::int64_t sk) const {
    return j >= first_key(i, sq, sk) && j <= last_key(i, sq, sk);
  }
};

}  // namespace flashattn::detail
