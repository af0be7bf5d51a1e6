// The float64 oracle itself: its backward against central finite
// differences of its forward, its forward against hand-computed values, the
// empty-row convention and the bottom-right alignment of causal / window
// masks (checked key by key).
#include "test_util.h"

namespace fa_test {
namespace {

constexpr double kE = 2.718281828459045;

TEST(ReferenceBackward, FiniteDifferencesPlain) {
  FA_SEEDED(seed);
  Problem p(DType::f64, 2, 3, 4, 2, 2, 3);
  p.randomize(seed);
  check_gradients_fd(p);
}

TEST(ReferenceBackward, FiniteDifferencesScaleOverride) {
  FA_SEEDED(seed);
  Problem p(DType::f64, 1, 4, 3, 2, 1, 4);
  p.randomize(seed);
  p.options.softmax_scale = 1.7f;
  check_gradients_fd(p);
}

TEST(ReferenceBackward, FiniteDifferencesCausal) {
  FA_SEEDED(seed);
  for (auto [sq, sk] : {std::pair{4, 4}, std::pair{3, 5}, std::pair{5, 3}}) {
    SCOPED_TRACE(::testing::Message() << "sq " << sq << " sk " << sk);
    Problem p(DType::f64, 2, sq, sk, 2, 2, 3);
    p.randomize(seed + sq);
    p.options.causal = true;
    check_gradients_fd(p);
  }
}

TEST(ReferenceBackward, FiniteDifferencesWindow) {
  FA_SEEDED(seed);
  Problem p(DType::f64, 1, 6, 5, 2, 2, 3);
  p.randomize(seed);
  p.options.window_left = 1;
  p.options.window_right = 2;
  check_gradients_fd(p);
}

TEST(ReferenceBackward, FiniteDifferencesGqaAndMqa) {
  FA_SEEDED(seed);
  for (int hk : {2, 1}) {
    SCOPED_TRACE(::testing::Message() << "heads_k " << hk);
    Problem p(DType::f64, 1, 3, 4, 4, hk, 3);
    p.randomize(seed + hk);
    check_gradients_fd(p);
  }
}

TEST(ReferenceBackward, FiniteDifferencesVarlen) {
  FA_SEEDED(seed);
  // The second sequence has no keys: its rows are empty.
  VarlenBuf vl = make_varlen({3, 2, 2}, {4, 0, 3});
  Problem p(DType::f64, 1, vl.total_q, vl.total_k, 2, 1, 3);
  p.randomize(seed);
  p.options.varlen = vl.get();
  p.options.causal = true;
  p.lse = poisoned_lse(p.hq * vl.total_q);
  check_gradients_fd(p);
}

TEST(ReferenceBackward, FiniteDifferencesBlockSparse) {
  FA_SEEDED(seed);
  const std::int64_t sq = 6, sk = 7;
  BlockStates st = random_block_states(seed, 2, 2, sq, sk, 2, 3);
  BlockMaskBuf bm = make_block_mask(st);
  Problem p(DType::f64, 2, sq, sk, 2, 2, 3);
  p.randomize(seed);
  p.options.block_mask = bm.get();
  p.options.causal = true;
  check_gradients_fd(p);
}

TEST(ReferenceBackward, FiniteDifferencesDropout) {
  FA_SEEDED(seed);
  Problem p(DType::f64, 2, 4, 5, 2, 1, 3);
  p.randomize(seed);
  p.options.dropout_p = 0.3f;
  p.options.seed = 1234;
  p.options.offset = 7;
  check_gradients_fd(p);
}

// A 2 x 3 case worked out by hand: Q = [[1,0],[0,1]], K = [[1,0],[0,1],[1,1]],
// V = [[1,2],[3,4],[5,6]], scale 1. Row 0 scores (1, 0, 1), row 1 (0, 1, 1).
TEST(ReferenceForward, HandComputed2x3) {
  for (bool causal : {false, true}) {
    SCOPED_TRACE(causal ? "causal" : "full");
    Problem p(DType::f64, 1, 2, 3, 1, 1, 2);
    const double q[4] = {1, 0, 0, 1}, k[6] = {1, 0, 0, 1, 1, 1}, v[6] = {1, 2, 3, 4, 5, 6};
    for (int i = 0; i < 4; ++i) p.q.buf.set(i, q[i]);
    for (int i = 0; i < 6; ++i) p.k.buf.set(i, k[i]), p.v.buf.set(i, v[i]);
    p.options.softmax_scale = 1.0f;
    p.options.causal = causal;
    const Outputs out = run(p, /*reference=*/true, {}, /*with_backward=*/false);
    std::vector<double> o, lse;
    if (!causal) {
      // Row 0: weights (e, 1, e) / (2e + 1) -> O = ((6e + 3), (8e + 4)) / (2e + 1) = (3, 4).
      // Row 1: weights (1, e, e) / (2e + 1).
      o = {3.0, 4.0, (1 + 8 * kE) / (2 * kE + 1), (2 + 10 * kE) / (2 * kE + 1)};
      lse = {std::log(2 * kE + 1), std::log(2 * kE + 1)};
    } else {
      // Bottom-right causal with sq = 2, sk = 3: row 0 sees keys 0 and 1 only.
      o = {(kE * 1 + 3) / (kE + 1), (kE * 2 + 4) / (kE + 1), (1 + 8 * kE) / (2 * kE + 1), (2 + 10 * kE) / (2 * kE + 1)};
      lse = {std::log(kE + 1), std::log(2 * kE + 1)};
    }
    EXPECT_LT(max_abs_error(out.o, o), 1e-14);
    EXPECT_LT(max_abs_error(out.lse, lse), 1e-6);  // lse is float32
  }
}

// The reference forward against the test's own materialised attention on
// random inputs with a mix of options.
TEST(ReferenceForward, MatchesNaiveOracle) {
  FA_SEEDED(seed);
  struct Case {
    std::int64_t sq, sk, hq, hk, left, right;
  };
  for (const Case c :
       {Case{5, 7, 2, 2, -1, -1}, Case{7, 5, 4, 2, -1, 0}, Case{6, 6, 3, 1, 2, 1}, Case{4, 9, 2, 1, 0, 3}}) {
    SCOPED_TRACE(::testing::Message() << "sq " << c.sq << " sk " << c.sk << " window " << c.left << "," << c.right);
    Problem p(DType::f64, 2, c.sq, c.sk, c.hq, c.hk, 5);
    p.randomize(seed + c.sq * 31 + c.sk);
    p.options.window_left = c.left;
    p.options.window_right = c.right;
    const Outputs out = run(p, true, {}, false);
    const NaiveResult want =
        naive_attention(gather(p.q.t), gather(p.k.t), gather(p.v.t), p.scale(), window_mask(c.left, c.right));
    EXPECT_LT(max_abs_error(out.o, want.o.x), 1e-13);
    EXPECT_LT(max_abs_error(out.lse, want.lse), 1e-5);
  }
}

// Empty rows (no visible key) give O = 0, LSE = -inf and zero gradients, with
// no NaN anywhere; checked for the reference and both CPU algorithms.
TEST(EmptyRows, ZeroOutputMinusInfLseZeroGrads) {
  FA_SEEDED(seed);
  struct Backend {
    const char* name;
    bool reference;
    Algorithm algo;
  };
  for (const Backend be :
       {Backend{"reference", true, Algorithm::standard}, Backend{"standard", false, Algorithm::standard},
        Backend{"flash", false, Algorithm::flash}}) {
    SCOPED_TRACE(be.name);
    // Causal with sq = 5 > sk = 3: rows 0 and 1 see no key.
    Problem p(be.reference ? DType::f64 : DType::f32, 2, 5, 3, 2, 1, 4);
    p.randomize(seed);
    p.options.causal = true;
    const Outputs out = run(p, be.reference, cpu(be.algo));
    for (std::int64_t b = 0; b < p.batch; ++b)
      for (std::int64_t h = 0; h < p.hq; ++h)
        for (std::int64_t i = 0; i < p.sq; ++i) {
          const double l = out.lse[(b * p.hq + h) * p.sq + i];
          if (i < 2)
            EXPECT_TRUE(std::isinf(l) && l < 0) << "row " << i << " lse " << l;
          else
            EXPECT_TRUE(std::isfinite(l)) << "row " << i << " lse " << l;
          for (std::int64_t c = 0; c < p.d; ++c) {
            const std::int64_t idx = ((b * p.sq + i) * p.hq + h) * p.d + c;
            if (i < 2) {
              EXPECT_EQ(out.o[idx], 0.0) << "o row " << i;
              EXPECT_EQ(out.dq[idx], 0.0) << "dq row " << i;
            } else {
              EXPECT_TRUE(std::isfinite(out.o[idx]) && std::isfinite(out.dq[idx])) << "row " << i;
            }
          }
        }
    for (double x : out.dk) ASSERT_TRUE(std::isfinite(x));
    for (double x : out.dv) ASSERT_TRUE(std::isfinite(x));
  }
}

// Every key skipped by the block mask: all outputs 0 / -inf, all grads 0.
TEST(EmptyRows, AllBlocksSkipped) {
  FA_SEEDED(seed);
  for (const bool reference : {true, false}) {
    for (const Algorithm algo : {Algorithm::standard, Algorithm::flash}) {
      if (reference && algo == Algorithm::flash) continue;
      SCOPED_TRACE(reference ? "reference" : name(algo));
      Problem p(reference ? DType::f64 : DType::f32, 1, 6, 5, 2, 2, 4);
      p.randomize(seed);
      BlockStates st = random_block_states(seed, 1, 1, 6, 5, 4, 4, /*p_skip=*/1.0, 0.0);
      BlockMaskBuf bm = make_block_mask(st);
      p.options.block_mask = bm.get();
      const Outputs out = run(p, reference, cpu(algo));
      for (double x : out.lse) EXPECT_TRUE(std::isinf(x) && x < 0);
      for (const auto* v : {&out.o, &out.dq, &out.dk, &out.dv})
        for (double x : *v) EXPECT_EQ(x, 0.0);
    }
  }
}

// Bottom-right alignment, key by key. With Q = 0 every visible key gets the
// same weight, and V = identity (head_dim = sk) makes O[i, j] = P[i, j], so
// the visible set of row i is {j : O[i, j] > 0}, each with weight 1/|set|.
struct AlignmentCase {
  const char* what;
  std::int64_t sq, sk, left, right;
  bool causal;
  std::vector<std::vector<int>> visible;  // worked out by hand from the API's formula
};

void check_alignment(const AlignmentCase& c, bool reference, Algorithm algo) {
  SCOPED_TRACE(::testing::Message() << c.what << " on " << (reference ? "reference" : name(algo)));
  Problem p(reference ? DType::f64 : DType::f32, 1, c.sq, c.sk, 1, 1, c.sk);
  FA_SEEDED(seed);
  p.randomize(seed);  // K random; Q and V overwritten
  for (std::int64_t i = 0; i < p.q.buf.size(); ++i) p.q.buf.set(i, 0.0);
  for (std::int64_t j = 0; j < c.sk; ++j)
    for (std::int64_t col = 0; col < c.sk; ++col) p.v.buf.set(j * c.sk + col, j == col ? 1.0 : 0.0);
  p.options.causal = c.causal;
  p.options.window_left = c.left;
  p.options.window_right = c.right;
  const Outputs out = run(p, reference, cpu(algo), false);
  for (std::int64_t i = 0; i < c.sq; ++i) {
    const auto& vis = c.visible[i];
    for (std::int64_t j = 0; j < c.sk; ++j) {
      const bool want = std::find(vis.begin(), vis.end(), j) != vis.end();
      const double got = out.o[i * c.sk + j];
      if (want)
        EXPECT_NEAR(got, 1.0 / vis.size(), 1e-6) << "row " << i << " key " << j << " should be visible";
      else
        EXPECT_EQ(got, 0.0) << "row " << i << " key " << j << " should be masked";
    }
    if (vis.empty())
      EXPECT_TRUE(std::isinf(out.lse[i]) && out.lse[i] < 0) << "row " << i;
    else
      EXPECT_NEAR(out.lse[i], std::log(static_cast<double>(vis.size())), 1e-6) << "row " << i;
  }
}

const std::vector<AlignmentCase>& alignment_cases() {
  static const std::vector<AlignmentCase> cases = {
      // j <= i + sk - sq = i + 2
      {"causal sq=3 sk=5", 3, 5, -1, -1, true, {{0, 1, 2}, {0, 1, 2, 3}, {0, 1, 2, 3, 4}}},
      // j <= i - 2: the first two rows see nothing
      {"causal sq=5 sk=3", 5, 3, -1, -1, true, {{}, {}, {0}, {0, 1}, {0, 1, 2}}},
      // i + 2 - 1 <= j <= i + 2 + 1
      {"window(1,1) sq=4 sk=6", 4, 6, 1, 1, false, {{1, 2, 3}, {2, 3, 4}, {3, 4, 5}, {4, 5}}},
      // diagonal only: j = i + 2
      {"window(0,0) sq=3 sk=5", 3, 5, 0, 0, false, {{2}, {3}, {4}}},
      // causal with a left window of 1 and sq = sk: j in [i - 1, i]
      {"causal + window_left=1 sq=sk=4", 4, 4, 1, -1, true, {{0}, {0, 1}, {1, 2}, {2, 3}}},
  };
  return cases;
}

TEST(MaskAlignment, BottomRightReference) {
  for (const auto& c : alignment_cases()) check_alignment(c, true, Algorithm::standard);
}
TEST(MaskAlignment, BottomRightStandard) {
  for (const auto& c : alignment_cases()) check_alignment(c, false, Algorithm::standard);
}
TEST(MaskAlignment, BottomRightFlash) {
  for (const auto& c : alignment_cases()) check_alignment(c, false, Algorithm::flash);
}

}  // namespace
}  // namespace fa_test
