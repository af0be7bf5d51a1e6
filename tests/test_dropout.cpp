// Dropout: the public dropout_mask() is a deterministic function of (seed,
// offset, batch, head, row, col) with the right keep rate, and every CPU
// backend applies exactly that mask (checked against attention materialised
// in the test); the reference backward is the derivative of the dropped-out
// forward.
#include "test_util.h"

namespace fa_test {
namespace {

std::vector<std::uint8_t> mask(std::uint64_t seed, std::uint64_t offset, float p, std::int64_t b, std::int64_t hq,
                               std::int64_t h, std::int64_t rows, std::int64_t cols) {
  std::vector<std::uint8_t> m(static_cast<std::size_t>(rows * cols), 7);
  flashattn::dropout_mask(seed, offset, p, b, hq, h, rows, cols, m.data());
  return m;
}

double fraction_differing(const std::vector<std::uint8_t>& a, const std::vector<std::uint8_t>& b) {
  std::int64_t n = 0;
  for (std::size_t i = 0; i < a.size(); ++i) n += a[i] != b[i];
  return static_cast<double>(n) / static_cast<double>(a.size());
}

TEST(DropoutMask, DeterministicAndSensitiveToEveryInput) {
  FA_SEEDED(seed);
  const std::uint64_t offset = seed >> 7;
  const float p = 0.5f;
  const auto base = mask(seed, offset, p, 1, 4, 2, 33, 47);
  for (std::uint8_t x : base) ASSERT_TRUE(x == 0 || x == 1);
  EXPECT_EQ(base, mask(seed, offset, p, 1, 4, 2, 33, 47)) << "same inputs, different mask";
  // Independent masks at p = 0.5 differ in about half of the elements.
  struct Variant {
    const char* what;
    std::vector<std::uint8_t> m;
  };
  const Variant variants[] = {
      {"seed + 1", mask(seed + 1, offset, p, 1, 4, 2, 33, 47)},
      {"seed high word", mask(seed ^ (1ull << 40), offset, p, 1, 4, 2, 33, 47)},
      {"offset + 1", mask(seed, offset + 1, p, 1, 4, 2, 33, 47)},
      {"offset high word", mask(seed, offset ^ (1ull << 33), p, 1, 4, 2, 33, 47)},
      {"batch", mask(seed, offset, p, 2, 4, 2, 33, 47)},
      {"head", mask(seed, offset, p, 1, 4, 3, 33, 47)},
  };
  for (const auto& v : variants) EXPECT_GT(fraction_differing(base, v.m), 0.35) << v.what;
  // Rows are not copies of each other.
  std::int64_t same_rows = 0;
  for (std::int64_t i = 1; i < 33; ++i)
    same_rows += std::equal(base.begin() + i * 47, base.begin() + (i + 1) * 47, base.begin());
  EXPECT_EQ(same_rows, 0);
}

// The mask is a function of the position only: a smaller call gives the
// top-left corner of a larger one.
TEST(DropoutMask, PositionalPrefix) {
  FA_SEEDED(seed);
  const auto big = mask(seed, 3, 0.3f, 0, 2, 1, 20, 23);
  const auto small = mask(seed, 3, 0.3f, 0, 2, 1, 7, 9);
  for (std::int64_t i = 0; i < 7; ++i)
    for (std::int64_t j = 0; j < 9; ++j) ASSERT_EQ(small[i * 9 + j], big[i * 23 + j]) << i << ", " << j;
}

TEST(DropoutMask, KeepFractionWithinFiveSigma) {
  FA_SEEDED(seed);
  const std::int64_t rows = 256, cols = 256;
  for (const float p : {0.1f, 0.5f, 0.9f}) {
    const auto m = mask(seed, seed * 3, p, 0, 1, 0, rows, cols);
    const double n = static_cast<double>(rows * cols);
    double kept = 0;
    for (std::uint8_t x : m) kept += x;
    const double sigma = std::sqrt(p * (1.0 - p) / n);
    EXPECT_NEAR(kept / n, 1.0 - p, 5 * sigma) << "p = " << p;
  }
  const auto all = mask(seed, 0, 0.0f, 0, 1, 0, 16, 16);
  for (std::uint8_t x : all) EXPECT_EQ(x, 1) << "p = 0 drops nothing";
}

// Forward with dropout equals O = (P * keep / (1 - p)) V with P
// materialised in double here and keep from dropout_mask().
struct DropCase {
  const char* what;
  std::int64_t batch, sq, sk, hq, hk, d;
  float p;
  bool causal;
  std::vector<std::int64_t> lens_q, lens_k;  // non-empty: varlen
};

const std::vector<DropCase>& drop_cases() {
  static const std::vector<DropCase> cases = {
      {"dense p=0.3", 2, 7, 9, 4, 2, 8, 0.3f, false, {}, {}},
      {"dense causal p=0.5 sq>sk", 1, 9, 6, 2, 1, 16, 0.5f, true, {}, {}},
      {"dense p=0.1 long rows", 1, 5, 70, 2, 2, 8, 0.1f, false, {}, {}},
      {"varlen p=0.4", 1, 0, 0, 3, 1, 8, 0.4f, false, {5, 3, 6}, {6, 1, 9}},
  };
  return cases;
}

// The problem of a case in dtype: inputs from input_seed, the case's
// dropout p, causal flag and (through vl) varlen; the dropout seed and
// offset are the caller's.
Problem drop_problem(const DropCase& c, DType dtype, std::uint64_t input_seed, VarlenBuf& vl) {
  const bool varlen = !c.lens_q.empty();
  vl = varlen ? make_varlen(c.lens_q, c.lens_k) : VarlenBuf{};
  const std::int64_t sq = varlen ? vl.total_q : c.sq, sk = varlen ? vl.total_k : c.sk;
  Problem p(dtype, c.batch, sq, sk, c.hq, c.hk, c.d);
  p.randomize(input_seed);
  p.options.dropout_p = c.p;
  p.options.causal = c.causal;
  if (varlen) p.options.varlen = vl.get();
  return p;
}

void check_forward_dropout(bool reference, Algorithm algo) {
  FA_SEEDED(seed);
  for (const DropCase& c : drop_cases()) {
    SCOPED_TRACE(c.what);
    const bool varlen = !c.lens_q.empty();
    VarlenBuf vl;
    Problem p = drop_problem(c, reference ? DType::f64 : DType::f32, seed + c.sk, vl);
    p.options.seed = seed * 7 + 1;
    p.options.offset = seed % 1000;
    const Outputs out = run(p, reference, cpu(algo), false);

    const std::int64_t nseq = varlen ? vl.vl.batch : c.batch;
    std::vector<std::int64_t> rows = varlen ? c.lens_q : std::vector<std::int64_t>(nseq, c.sq);
    std::vector<std::int64_t> cols = varlen ? c.lens_k : std::vector<std::int64_t>(nseq, c.sk);
    const DropFn drop = dropout_fn(p.options.seed, p.options.offset, c.p, nseq, c.hq, rows, cols);
    const ElementMask visible = window_mask(-1, c.causal ? 0 : -1);
    const Dense q = gather(p.q.t), k = gather(p.k.t), v = gather(p.v.t);
    const NaiveResult want =
        naive_attention(q, k, v, p.scale(), visible, drop, varlen ? &vl.cu_q : nullptr, varlen ? &vl.cu_k : nullptr);
    const NaiveResult undropped =
        naive_attention(q, k, v, p.scale(), visible, nullptr, varlen ? &vl.cu_q : nullptr, varlen ? &vl.cu_k : nullptr);
    const double tol = reference ? 1e-12 : 2e-5;
    EXPECT_LT(rel_error(out.o, want.o.x), tol);
    EXPECT_LT(max_abs_error(out.o, want.o.x), 10 * tol);
    // The LSE is that of the un-dropped softmax.
    EXPECT_LT(max_abs_error(out.lse, undropped.lse), 1e-5);
    // The case is sensitive to the mask at all.
    EXPECT_GT(rel_error(undropped.o.x, want.o.x), 0.05);
  }
}

TEST(DropoutForward, ReferenceAppliesDropoutMask) { check_forward_dropout(true, Algorithm::standard); }
TEST(DropoutForward, StandardAppliesDropoutMask) { check_forward_dropout(false, Algorithm::standard); }
TEST(DropoutForward, FlashAppliesDropoutMask) { check_forward_dropout(false, Algorithm::flash); }

// Another seed or offset gives another output.
TEST(DropoutForward, SeedAndOffsetChangeTheOutput) {
  FA_SEEDED(seed);
  for (const Algorithm algo : {Algorithm::standard, Algorithm::flash}) {
    SCOPED_TRACE(name(algo));
    Problem p(DType::f32, 1, 8, 8, 2, 2, 8);
    p.randomize(seed);
    p.options.dropout_p = 0.5f;
    p.options.seed = seed;
    const auto a = run(p, false, cpu(algo), false).o;
    const auto again = run(p, false, cpu(algo), false).o;
    EXPECT_EQ(a, again) << "same seed, different output";
    p.options.seed = seed + 1;
    EXPECT_GT(rel_error(run(p, false, cpu(algo), false).o, a), 0.05);
    p.options.seed = seed;
    p.options.offset = 1;
    EXPECT_GT(rel_error(run(p, false, cpu(algo), false).o, a), 0.05);
  }
}

TEST(DropoutBackward, ReferenceMatchesFiniteDifferences) {
  FA_SEEDED(seed);
  for (const float pd : {0.1f, 0.5f}) {
    SCOPED_TRACE(::testing::Message() << "p " << pd);
    Problem p(DType::f64, 2, 4, 6, 2, 1, 3);
    p.randomize(seed + static_cast<std::uint64_t>(pd * 10));
    p.options.dropout_p = pd;
    p.options.seed = seed;
    p.options.offset = 11;
    check_gradients_fd(p);
  }
  VarlenBuf vl = make_varlen({3, 4}, {5, 2});
  Problem p(DType::f64, 1, vl.total_q, vl.total_k, 2, 2, 3);
  p.randomize(seed);
  p.options.varlen = vl.get();
  p.options.dropout_p = 0.3f;
  p.options.seed = seed ^ 0xABCDEF;
  p.lse = poisoned_lse(p.hq * vl.total_q);
  SCOPED_TRACE("varlen");
  check_gradients_fd(p);
}

// The float backends' gradients with dropout against the oracle's.
void check_backward_dropout(Algorithm algo) {
  FA_SEEDED(seed);
  for (const DropCase& c : drop_cases()) {
    SCOPED_TRACE(c.what);
    VarlenBuf vl;
    Problem p = drop_problem(c, DType::f32, seed + c.sq, vl);
    p.options.seed = seed;
    p.options.offset = 5;
    const Outputs got = run(p, false, cpu(algo)), want = run_reference_twin(p);
    expect_outputs_near(got, want, {.o = 2e-5, .lse = std::nullopt, .grad = 1e-4});
  }
}

TEST(DropoutBackward, StandardMatchesReference) { check_backward_dropout(Algorithm::standard); }
TEST(DropoutBackward, FlashMatchesReference) { check_backward_dropout(Algorithm::flash); }

}  // namespace
}  // namespace fa_test
