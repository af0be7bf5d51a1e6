// sm80::SwizzledRows (src/cuda/sm80/tile.cuh), the KV-cache kernel's K / V
// tile layout, on the CPU: every (row, chunk) has its own slot inside its
// own row; the lanes of lds_b_swz / lds_b_trans_swz address the elements
// the mma B fragment needs (the ldmatrix.x4 contract: lanes 8m..8m+7 give
// the 8 rows of matrix m; for B of two n8 tiles, matrix m covers n-block
// m / 2 and k-half m % 2); and the 8 rows of every matrix fall in 8
// distinct 16-byte bank groups (no shared-memory bank conflict for 16-bit
// elements).
#include <gtest/gtest.h>

#include <cstdint>
#include <set>
#include <type_traits>

#include "cuda/sm80/tile.cuh"

namespace {

using flashattn::detail::sm80::SwizzledB;
using flashattn::detail::sm80::SwizzledRows;

constexpr int kRows = 64;  // the decode kernel's key tile

template <int kCols>
void check_layout() {
  using S = SwizzledRows<kCols>;
  std::set<int> seen;
  for (int r = 0; r < kRows; ++r)
    for (int c = 0; c < kCols / 8; ++c) {
      const int at = S::offset(r, c);
      EXPECT_EQ(at % 8, 0) << "row " << r << " chunk " << c;
      EXPECT_EQ(at / kCols, r) << "chunk " << c << " leaves row " << r;
      EXPECT_TRUE(seen.insert(at).second) << "row " << r << " chunk " << c << " shares a slot";
    }
  EXPECT_EQ(static_cast<int>(seen.size()), kRows * kCols / 8);
}

// Logical (row, chunk) of a slot, inverting offset.
template <int kCols>
std::pair<int, int> logical(int at) {
  const int r = at / kCols;
  return {r, ((at % kCols) / 8) ^ (r & 7)};
}

template <int kCols, bool kTrans>
void check_fragments() {
  using S = SwizzledRows<kCols>;
  // [n][k] tiles: n runs over key rows, k over head_dim columns; [k][n]
  // tiles the other way round. Row and column blocks of 16 as the kernel's.
  const int row_blocks = kRows / 16, col_blocks = kCols / 16;
  for (int rb = 0; rb < row_blocks; ++rb)
    for (int cb = 0; cb < col_blocks; ++cb)
      for (int m = 0; m < 4; ++m) {
        std::set<int> groups;
        for (int l = 0; l < 8; ++l) {
          const int lane = 8 * m + l;
          const int at = kTrans ? S::b_trans_lane(16 * rb, 16 * cb, lane) : S::b_lane(16 * rb, 16 * cb, lane);
          // Expected: stored [n][k] rows are n (n-block m / 2), chunks k
          // (k-half m % 2); stored [k][n] rows are k (k-half m % 2),
          // chunks n (n-block m / 2).
          const int row = 16 * rb + l + 8 * (kTrans ? m % 2 : m / 2);
          const int chunk = 2 * cb + (kTrans ? m / 2 : m % 2);
          EXPECT_EQ(logical<kCols>(at), std::make_pair(row, chunk)) << "lane " << lane;
          groups.insert((at * 2 / 16) % 8);  // 16-bit elements; 8 groups of 4 banks
        }
        EXPECT_EQ(groups.size(), 8u) << "bank conflict in matrix " << m << " of block (" << rb << ", " << cb << ")";
      }
}

// The kernel's reader (the lane's address XORed with the chunk pair, plus a
// constant) gives the address b_lane / b_trans_lane define, in bytes, at
// every row block from a multiple of 8 and column block from a multiple of
// 16, for tiles anywhere 128-byte aligned.
template <int kCols, bool kTrans>
void check_reader() {
  using S = SwizzledRows<kCols>;
  for (int lane = 0; lane < 32; ++lane) {
    const SwizzledB<kCols, std::uint16_t, kTrans> rd(lane);
    for (int r0 = 0; r0 + 16 <= kRows; r0 += 8)
      for (int c0 = 0; c0 < kCols; c0 += 16) {
        const int want = kTrans ? S::b_trans_lane(r0, c0, lane) : S::b_lane(r0, c0, lane);
        for (std::uint32_t tile : {0u, 128u * 37u})  // any 128-byte aligned start
          EXPECT_EQ(rd.at(tile, r0, c0), tile + static_cast<std::uint32_t>(want * 2))
              << "lane " << lane << " rows " << r0 << " columns " << c0 << " tile at " << tile;
      }
  }
}

TEST(SwizzledRows, EveryChunkHasItsOwnSlotInItsRow) {
  check_layout<64>();
  check_layout<128>();
  check_layout<256>();
}

// f(kCols, kTrans) (as integral constants) for every row width the kernels
// use (head_dim 64, 128, 256), tiles stored [n][k] and [k][n].
template <class F, class Trans>
void for_each_width(F& f, Trans trans) {
  f(std::integral_constant<int, 64>{}, trans);
  f(std::integral_constant<int, 128>{}, trans);
  f(std::integral_constant<int, 256>{}, trans);
}
template <class F>
void for_each_tile(F&& f) {
  for_each_width(f, std::false_type{});
  for_each_width(f, std::true_type{});
}

TEST(SwizzledRows, FragmentLanesAddressTheMmaOperand) {
  for_each_tile([](auto cols, auto trans) { check_fragments<decltype(cols)::value, decltype(trans)::value>(); });
}

TEST(SwizzledRows, ReaderMatchesTheLaneAddresses) {
  for_each_tile([](auto cols, auto trans) { check_reader<decltype(cols)::value, decltype(trans)::value>(); });
}

}  // namespace
