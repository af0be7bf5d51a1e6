// tile::max_step, the online softmax's running-maximum step
// (src/cuda/tile_ops.cuh), on the CPU: with kStaleMax the base of the
// exponentials may stay behind the true maximum (O's rescale is skipped
// then), and a row's result must not change: O / sum and the LSE equal the
// float64 softmax, P stays below 2^kStaleMax, and the special rows (nothing
// visible yet, infinite maxima) take the path they took before.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include "cuda/tile_ops.cuh"

namespace {

using flashattn::detail::cuda::tile::max_step;
using flashattn::detail::cuda::tile::MaxStep;

constexpr float kInf = std::numeric_limits<float>::infinity();

TEST(MaxStep, WithoutStaleMaxTheBaseIsTheNewMaximum) {
  float running = 3.f;
  const MaxStep st = max_step<0>(running, 3.5f);
  EXPECT_TRUE(st.moved);
  EXPECT_EQ(st.base, 3.5f);
  EXPECT_EQ(running, 3.5f);
  EXPECT_FLOAT_EQ(st.corr, std::exp2(-0.5f));
  float same = 3.f;
  EXPECT_TRUE(max_step<0>(same, 2.f).moved);  // every tile, even when nothing grew
}

TEST(MaxStep, StaleMaxKeepsTheBaseWithinTheThreshold) {
  float running = 3.f;
  MaxStep st = max_step<8>(running, 11.f);  // 8 above: still within
  EXPECT_FALSE(st.moved);
  EXPECT_EQ(st.base, 3.f);
  EXPECT_EQ(st.corr, 1.f);  // exactly: O is left as it is
  EXPECT_EQ(running, 3.f);
  st = max_step<8>(running, -50.f);  // a smaller maximum never moves it
  EXPECT_FALSE(st.moved);
  st = max_step<8>(running, 11.5f);  // beyond: moves to the new maximum
  EXPECT_TRUE(st.moved);
  EXPECT_EQ(st.base, 11.5f);
  EXPECT_EQ(running, 11.5f);
  EXPECT_FLOAT_EQ(st.corr, std::exp2(3.f - 11.5f));
}

TEST(MaxStep, SpecialRowsTakeTheMovingPath) {
  for (auto step : {max_step<0>, max_step<8>}) {
    float running = -kInf;
    MaxStep st = step(running, -kInf);  // nothing visible yet: base 0, so exp2(-inf) = 0, not NaN
    EXPECT_TRUE(st.moved);
    EXPECT_EQ(st.base, 0.f);
    EXPECT_EQ(st.corr, 0.f);
    EXPECT_EQ(running, -kInf);
    st = step(running, 2.f);  // the first finite maximum
    EXPECT_TRUE(st.moved);
    EXPECT_EQ(st.base, 2.f);
    EXPECT_EQ(st.corr, 0.f);  // the empty O and sum are multiplied by 0
    st = step(running, kInf);  // an overflowing score: the NaN rule's path, as before
    EXPECT_TRUE(st.moved);
    EXPECT_EQ(running, kInf);
  }
}

// One row through a stream of key tiles, as OnlineSoftmax::update and the
// kernel's rescale do it (the quad's lanes hold one row and take the same
// step, so one scalar row stands for them): returns O / sum and counts the
// tiles whose base moved, checking P on the way.
template <int kStaleMax>
double online_row(const std::vector<float>& s, const std::vector<float>& v, int tile, int* moves, float* max_p) {
  float running = -kInf, sum = 0.f, o = 0.f;
  *moves = 0;
  *max_p = 0.f;
  for (std::size_t t0 = 0; t0 < s.size(); t0 += tile) {
    float tmax = -kInf;
    for (std::size_t j = t0; j < t0 + tile; ++j) tmax = std::fmax(tmax, s[j]);
    const MaxStep st = max_step<kStaleMax>(running, tmax);
    *moves += st.moved;
    float tsum = 0.f, to = 0.f;
    for (std::size_t j = t0; j < t0 + tile; ++j) {
      const float p = std::exp2(s[j] - st.base);
      *max_p = std::fmax(*max_p, p);
      tsum += p;
      to += p * v[j];
    }
    sum = sum * st.corr + tsum;
    o = o * st.corr + to;
  }
  return static_cast<double>(o) / sum;
}

TEST(MaxStep, StaleMaxRowsEqualTheSoftmax) {
  std::mt19937_64 g(20261207);
  std::normal_distribution<float> n(0.f, 1.f);
  const int tile = 128, tiles = 32;
  int rows = 0, fewer = 0;
  for (float drift : {0.f, 0.02f, 0.2f, -0.05f}) {  // scores rising along the keys move the maximum often
    for (float spread : {1.f, 4.f, 12.f}) {
      std::vector<float> s(tile * tiles), v(tile * tiles);
      for (std::size_t j = 0; j < s.size(); ++j) {
        s[j] = spread * n(g) + drift * static_cast<float>(j) / 8;
        v[j] = n(g);
      }
      double mx = -INFINITY, den = 0, num = 0;
      for (float x : s) mx = std::fmax(mx, static_cast<double>(x));
      for (std::size_t j = 0; j < s.size(); ++j) {
        const double p = std::exp2(static_cast<double>(s[j]) - mx);
        den += p;
        num += p * v[j];
      }
      const double ref = num / den;
      int moves0 = 0, moves8 = 0;
      float p0 = 0.f, p8 = 0.f;
      const double r0 = online_row<0>(s, v, tile, &moves0, &p0);
      const double r8 = online_row<8>(s, v, tile, &moves8, &p8);
      const double tol = 1e-5 * (1.0 + std::fabs(ref));
      EXPECT_NEAR(r0, ref, tol) << drift << " " << spread;
      EXPECT_NEAR(r8, ref, tol) << drift << " " << spread;
      EXPECT_LE(p0, 1.f);
      EXPECT_LE(p8, 256.f);  // below e4m3's largest finite value (448): P packs as before
      EXPECT_EQ(moves0, tiles);
      EXPECT_LE(moves8, moves0);
      fewer += moves8 < moves0;
      ++rows;
    }
  }
  EXPECT_GT(fewer, rows / 2);  // the point: most rows skip most rescales
}

}  // namespace
