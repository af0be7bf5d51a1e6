// tile::exp2_fma, the softmax's exp2 on the FMA pipes (src/cuda/tile_ops.cuh),
// on the CPU: its relative error against exp2 over the whole range a
// softmax feeds it (scores minus their row's max), and the values the
// masking and the NaN rule rely on: exp2(0) = 1 exactly, a masked score
// (-inf) gives exactly 0, NaN stays NaN.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>

#include "cuda/tile_ops.cuh"

namespace {

using flashattn::detail::cuda::tile::exp2_fma;

TEST(Exp2Fma, RelativeErrorOverTheSoftmaxRange) {
  // Every 1/4096 of [-126, 0], plus random points: the polynomial's bound
  // is 3e-6 (degree 4 on |f| <= 1/2), its float32 evaluation adds a few ulp.
  double worst = 0.0;
  auto check = [&](float x) {
    const double rel = std::fabs(static_cast<double>(exp2_fma(x)) / std::exp2(static_cast<double>(x)) - 1.0);
    worst = std::max(worst, rel);
  };
  for (int i = 0; i <= 126 * 4096; ++i) check(-static_cast<float>(i) / 4096.f);
  std::mt19937_64 g(20261207);
  std::uniform_real_distribution<float> u(-126.f, 0.f);
  for (int i = 0; i < 1000000; ++i) check(u(g));
  EXPECT_LT(worst, 4e-6);
  EXPECT_GT(worst, 1e-7);  // a polynomial, not the library's exp2: the test measures something
}

TEST(Exp2Fma, ExactWhereTheSoftmaxNeedsIt) {
  EXPECT_EQ(exp2_fma(0.f), 1.f);  // a row's max gives exactly 1
  EXPECT_EQ(exp2_fma(-1.f), 0.5f);
  EXPECT_EQ(exp2_fma(-10.f), std::ldexp(1.f, -10));
  const float inf = std::numeric_limits<float>::infinity();
  EXPECT_EQ(exp2_fma(-inf), 0.f);  // masked keys contribute nothing
  EXPECT_FALSE(std::signbit(exp2_fma(-inf)));
  EXPECT_EQ(exp2_fma(-127.f), 0.f);
  EXPECT_EQ(exp2_fma(-1000.f), 0.f);
  for (float x = -127.f; x < -120.f; x += 1.f / 64) {  // the clamp's edge: small, never negative
    EXPECT_GE(exp2_fma(x), 0.f) << x;
    EXPECT_LE(exp2_fma(x), std::ldexp(1.f, -119)) << x;
  }
  EXPECT_TRUE(std::isnan(exp2_fma(std::numeric_limits<float>::quiet_NaN())));  // NaN follows the math
  // A score a hair above its row's max (rounding of the max's FFMA).
  EXPECT_NEAR(exp2_fma(1e-6f), std::exp2(1e-6), 1e-6);
}

}  // namespace
