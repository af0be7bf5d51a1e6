// The FP8 forward's V^T layout (src/cuda/sm90/fp8_vt.h) on the CPU: in a
// varlen batch the columns the transpose kernel writes, sequence by
// sequence (fp8_vt_owned_cols), must tile [0, vt_len) exactly, since the
// scratch is not cleared first and a key box reads past a sequence's last
// key into whatever lies there; each sequence's own keys must fit its
// columns, and the kernel's grid (round_up16(longest) + 16 columns) must
// reach them all.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <random>
#include <vector>

#include "cuda/sm90/fp8_vt.h"

namespace {

namespace sm90 = flashattn::detail::sm90;

// Checks one batch of key lengths; returns the number of gap groups.
int check_batch(const std::vector<std::int64_t>& lens) {
  const int batch = static_cast<int>(lens.size());
  std::vector<std::int64_t> start(batch + 1, 0);
  for (int b = 0; b < batch; ++b) start[b + 1] = start[b] + lens[b];
  const std::int64_t longest = lens.empty() ? 0 : *std::max_element(lens.begin(), lens.end());
  const std::int64_t vt_len = sm90::fp8_vt_len(true, start[batch], batch);
  std::vector<int> writes(static_cast<std::size_t>(vt_len), 0);
  int gaps = 0;
  for (int b = 0; b < batch; ++b) {
    const std::int64_t key0 = sm90::fp8_vt_key0(true, start[b], b);
    const std::int64_t next = b + 1 < batch ? sm90::fp8_vt_key0(true, start[b + 1], b + 1) : vt_len;
    const std::int64_t cols = sm90::fp8_vt_owned_cols(true, start[b], lens[b], b, next);
    EXPECT_EQ(key0 % 16, 0) << "sequence " << b;
    EXPECT_GE(cols, sm90::round_up16(lens[b])) << "sequence " << b << ": its keys fit its columns";
    EXPECT_LE(cols, sm90::round_up16(longest) + 16) << "sequence " << b << ": the grid reaches its columns";
    gaps += cols > sm90::round_up16(lens[b]);
    for (std::int64_t c = key0; c < key0 + cols; ++c) {
      if (c >= vt_len) {
        ADD_FAILURE() << "sequence " << b << " writes column " << c << " past vt_len " << vt_len;
        break;
      }
      ++writes[static_cast<std::size_t>(c)];
    }
  }
  for (std::int64_t c = 0; c < vt_len; ++c)
    if (writes[static_cast<std::size_t>(c)] != 1) {
      ADD_FAILURE() << "column " << c << " of " << vt_len << " written " << writes[static_cast<std::size_t>(c)]
                    << " times";
      break;
    }
  return gaps;
}

TEST(Fp8VtLayout, VarlenColumnsAreWrittenOnceEach) {
  check_batch({1});
  check_batch({0});
  check_batch({0, 0, 0});
  check_batch({16, 16});
  check_batch({1, 1, 1, 1});
  check_batch({15, 17, 0, 32, 1});
  std::mt19937_64 g(20261207);
  std::uniform_int_distribution<int> nb(1, 12), kind(0, 3), len(0, 300);
  int gaps = 0;
  for (int t = 0; t < 2000; ++t) {
    std::vector<std::int64_t> lens(static_cast<std::size_t>(nb(g)));
    for (auto& l : lens) {
      const int k = kind(g);  // empty, one key, a multiple of 16, anything
      l = k == 0 ? 0 : k == 1 ? 1 : k == 2 ? 16 * (len(g) / 16) : len(g);
    }
    gaps += check_batch(lens);
  }
  EXPECT_GT(gaps, 0) << "the random batches never left a gap group: the test did not reach that case";
}

TEST(Fp8VtLayout, DenseColumnsAreTheKeysRoundedUp) {
  for (std::int64_t sk : {0, 1, 15, 16, 17, 8192})
    EXPECT_EQ(sm90::fp8_vt_owned_cols(false, 0, sk, 3, sm90::fp8_vt_len(false, sk, 4)), sm90::fp8_vt_len(false, sk, 4));
}

}  // namespace
