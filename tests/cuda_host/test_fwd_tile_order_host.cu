// sm90::FwdTileOrder (src/cuda/sm90/scheduler.h), the Hopper forward's
// order of query tiles, on the CPU: the CTAs of a launch, each walking
// first() / next() until past the last tile, take every tile exactly once,
// single or in pairs; a head's tiles in the order are a permutation of its
// query tiles; and in pairs, under a causal mask (query tile m costs m + 1
// key tiles), the CTAs' loads differ by at most one pair's cost when each
// head has an even number of tiles.
#include <gtest/gtest.h>

#include <algorithm>
#include <vector>

#include "cuda/sm90/scheduler.h"

namespace {

using flashattn::detail::sm90::FwdTileOrder;

// The CTAs' tiles: visits[t] counts the CTAs that took tile t; loads[c] is
// CTA c's causal cost.
void walk(int count, int nm, int grid, int pairs, std::vector<int>& visits, std::vector<long>& loads) {
  visits.assign(count, 0);
  loads.assign(grid, 0);
  for (int c = 0; c < grid; ++c)
    for (int t = FwdTileOrder::first(c, pairs); t < count; t = FwdTileOrder::next(t, grid, pairs)) {
      ++visits[t];
      loads[c] += FwdTileOrder::query_tile(t % nm, nm, pairs) + 1;
    }
}

TEST(FwdTileOrder, EveryTileOnceSingleOrInPairs) {
  std::vector<int> visits;
  std::vector<long> loads;
  for (int pairs : {0, 1})
    for (int nm : {1, 2, 3, 8, 9, 64})
      for (int heads : {1, 5, 32})
        for (int grid : {1, 2, 7, 132}) {
          const int count = nm * heads;
          // The launch's grid: at most one CTA a tile (a pair in pairs).
          const int g = std::min(grid, pairs ? (count + 1) / 2 : count);
          walk(count, nm, g, pairs, visits, loads);
          for (int t = 0; t < count; ++t)
            ASSERT_EQ(visits[t], 1) << "tile " << t << " of " << count << ", grid " << g << ", pairs " << pairs;
        }
}

TEST(FwdTileOrder, AHeadsTilesArePermuted) {
  for (int pairs : {0, 1})
    for (int nm : {1, 2, 3, 4, 7, 8, 128}) {
      std::vector<int> seen(nm, 0);
      for (int k = 0; k < nm; ++k) {
        const int m = FwdTileOrder::query_tile(k, nm, pairs);
        ASSERT_GE(m, 0);
        ASSERT_LT(m, nm);
        ++seen[m];
      }
      EXPECT_EQ(*std::min_element(seen.begin(), seen.end()), 1) << "nm " << nm << " pairs " << pairs;
      // Single tiles: the longest first (the reversed order).
      if (!pairs) EXPECT_EQ(FwdTileOrder::query_tile(0, nm, 0), nm - 1);
    }
  // Pairs: longest, shortest, second longest, second shortest, ...
  const int expect[6] = {5, 0, 4, 1, 3, 2};
  for (int k = 0; k < 6; ++k) EXPECT_EQ(FwdTileOrder::query_tile(k, 6, 1), expect[k]) << k;
}

TEST(FwdTileOrder, PairsBalanceACausalMask) {
  std::vector<int> visits;
  std::vector<long> loads;
  // The bench rows (16K tokens, 132 SMs): d 128 causal at 1K, 8K, 16K
  // and d 64 at 1K, 8K; and smaller launches.
  const int rows[][2] = {{8, 256}, {64, 32}, {128, 16}, {16, 512}, {128, 64}, {32, 8}, {16, 36}, {2, 1}};
  for (const auto& r : rows) {
    const int nm = r[0], heads = r[1], count = nm * heads;
    const int grid = std::min(132, (count + 1) / 2);
    walk(count, nm, grid, 1, visits, loads);
    const long hi = *std::max_element(loads.begin(), loads.end());
    const long lo = *std::min_element(loads.begin(), loads.end());
    EXPECT_LE(hi - lo, nm + 1) << "nm " << nm << " heads " << heads;
    // Single tiles in the same grid spread worse whenever a CTA takes more
    // than one tile.
    walk(count, nm, grid, 0, visits, loads);
    const long single_hi = *std::max_element(loads.begin(), loads.end());
    if (count > grid) EXPECT_LE(hi, single_hi) << "nm " << nm << " heads " << heads;
  }
}

}  // namespace
