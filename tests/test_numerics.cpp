// Numerical robustness (README, Semantics): windows at the int64 limits,
// the NaN rule (a row's output is NaN exactly when a key or value it
// attends to, or its own query, is NaN or its scores overflow; masked and
// skipped keys never contribute, not even 0 x NaN; the backward follows
// the same dependency), backward accuracy at large logits, and the
// validation of contexts and output views.
//
// The NaN property test draws random shapes, masks and injections of
// NaN / +-inf into Q, K, V and dO and compares every output element's
// class (NaN, +inf, -inf, finite) with the float64 reference's, and the
// finite values within the dtype's tolerance. The reference itself is
// checked against the rule written out independently (NaN injections).
#include <omp.h>

#include <cstdio>
#include <sstream>

#include "test_util.h"

namespace {

using namespace fa_test;

constexpr std::int64_t kI64Max = std::numeric_limits<std::int64_t>::max();
const double kNaN = std::numeric_limits<double>::quiet_NaN();
const double kInf = std::numeric_limits<double>::infinity();

// ------------------------------------------------------------ windows ---

// Windows wider than any sequence, up to INT64_MAX, mean unbounded on that
// side: flash, standard and the reference all equal the naive oracle with
// the same window (written with 128-bit arithmetic).
TEST(Numerics, WindowAtInt64Limits) {
  struct W {
    std::int64_t sq, sk, left, right;
    bool causal;
  };
  const W cases[] = {
      {70, 70, -1, kI64Max, false},          {90, 40, kI64Max, -1, false},
      {40, 90, kI64Max, -1, false},          {90, 40, kI64Max, kI64Max, false},
      {90, 40, kI64Max, 0, false},           {90, 40, kI64Max, -1, true},
      {40, 90, 0, kI64Max, false},           {90, 40, kI64Max - 1, kI64Max - 1, false},
      {33, 200, 5, kI64Max, false},          {200, 33, kI64Max, 3, false},
      {200, 33, (1ll << 31), (1ll << 31), false},
  };
  int n = 0;
  for (const W& w : cases) {
    FA_SEEDED(seed);
    SCOPED_TRACE(::testing::Message() << "sq " << w.sq << " sk " << w.sk << " left " << w.left << " right "
                                      << w.right << " causal " << w.causal);
    Problem p(DType::f32, 1, w.sq, w.sk, 2, 1, 32);
    p.randomize(seed);
    p.options.window_left = w.left;
    p.options.window_right = w.right;
    p.options.causal = w.causal;
    const NaiveResult want = naive_attention(gather(p.q.t), gather(p.k.t), gather(p.v.t), p.scale(),
                                             window_mask(w.left, w.causal ? 0 : w.right));
    bool any_visible = false;
    for (double l : want.lse) any_visible |= l != -kInf;
    EXPECT_TRUE(any_visible);
    const Outputs ref = run_reference_twin(p);
    EXPECT_LT(rel_error(ref.o, want.o.x), 1e-12) << "reference";
    EXPECT_LT(max_abs_error(ref.lse, want.lse), 1e-6) << "reference lse";
    for (Algorithm a : {Algorithm::flash, Algorithm::standard}) {
      const Outputs got = run(p, false, cpu(a));
      SCOPED_TRACE(a == Algorithm::flash ? "flash" : "standard");
      expect_outputs_near(got, ref, OutputTolerances{1e-5, 1e-4, 1e-4, 0});
    }
    ++n;
  }
  std::printf("window cases run: %d\n", n);
}

// ------------------------------------------------------- NaN / Inf ---

enum Cls { kFinite = 0, kIsNaN = 1, kPosInf = 2, kNegInf = 3 };
int cls(double x) { return std::isnan(x) ? kIsNaN : x == kInf ? kPosInf : x == -kInf ? kNegInf : kFinite; }
const char* cls_name(int c) {
  static const char* names[] = {"finite", "NaN", "+inf", "-inf"};
  return names[c];
}

// Element-wise: the same class, and finite values within atol + rtol |want|.
// Reports the first few mismatches; returns their count.
int compare_classes(const std::vector<double>& got, const std::vector<double>& want, const char* name, double atol,
                    double rtol) {
  EXPECT_EQ(got.size(), want.size()) << name;
  int bad = 0;
  for (std::size_t i = 0; i < std::min(got.size(), want.size()); ++i) {
    const int cg = cls(got[i]), cw = cls(want[i]);
    const bool ok = cg == cw && (cg != kFinite || std::abs(got[i] - want[i]) <= atol + rtol * std::abs(want[i]));
    if (!ok && ++bad <= 3)
      ADD_FAILURE() << name << "[" << i << "]: got " << got[i] << " (" << cls_name(cg) << "), want " << want[i]
                    << " (" << cls_name(cw) << ")";
  }
  return bad;
}

struct Injection {
  int tensor;  // 0 q, 1 k, 2 v, 3 dout
  std::int64_t index;
  double value;
};

// A random problem with a random mask: none, causal, window, block-sparse
// (64 or 128 blocks, sometimes with a window inside partial blocks).
struct RandomCase {
  std::unique_ptr<Problem> p;
  BlockMaskBuf bm;
  BlockStates st;
  VarlenBuf vb;
  bool sparse = false, varlen = false;
  std::int64_t left = -1, right = -1;
  std::string desc;
  std::vector<Injection> inj;

  // Points the options at this object's block mask (after a move).
  void fix() {
    if (sparse) p->options.block_mask = bm.get();
    if (varlen) p->options.varlen = vb.get();
  }
  ElementMask mask() const {
    return sparse ? block_sparse_mask(st, left, right) : window_mask(left, right);
  }
};

RandomCase make_case(std::uint64_t seed, DType dtype, bool nan_only, bool with_dropout) {
  std::mt19937_64 g(seed);
  auto uni = [&](std::int64_t lo, std::int64_t hi) { return std::uniform_int_distribution<std::int64_t>(lo, hi)(g); };
  RandomCase c;
  const std::int64_t heads[][2] = {{1, 1}, {2, 1}, {2, 2}, {4, 2}};
  const auto& hh = heads[uni(0, 3)];
  const std::int64_t dims[] = {16, 32, 40, 64};
  std::int64_t b = uni(1, 2), sq = uni(1, 300), sk = uni(1, 300);
  const std::int64_t d = dims[uni(0, 3)];
  const int kind = static_cast<int>(uni(0, 5));
  if (kind == 5) {  // varlen: 2-3 sequences (some empty) and unused tail rows
    c.varlen = true;
    std::vector<std::int64_t> lq, lk;
    for (std::int64_t n = uni(2, 3); n > 0; --n) {
      lq.push_back(uni(0, 150));
      lk.push_back(uni(0, 150));
    }
    c.vb = make_varlen(lq, lk);
    b = 1;
    sq = c.vb.total_q + uni(0, 3);
    sk = c.vb.total_k + uni(0, 3);
    if (uni(0, 1)) c.right = 0;
  }
  c.p = std::make_unique<Problem>(dtype, b, sq, sk, hh[0], hh[1], d);
  c.p->randomize(seed ^ 0x5bd1e995);
  if (c.varlen) c.p->options.varlen = c.vb.get();
  if (kind == 1) c.right = 0;
  if (kind == 2) {  // sometimes at the int64 limits (unbounded in effect)
    c.left = uni(0, 3) == 0 ? kI64Max - uni(0, 1) : uni(0, 1) ? uni(0, 80) : -1;
    c.right = uni(0, 3) == 0 ? kI64Max : uni(0, 80);
  }
  if (kind == 3 || kind == 4) {
    c.sparse = true;
    const std::int64_t blk = uni(0, 1) ? 64 : 128;
    if (uni(0, 1)) {
      c.left = uni(0, 150);
      c.right = uni(0, 2) ? uni(0, 40) : -1;
    }
    c.st = random_block_states(seed + 7, b, hh[0], sq, sk, blk, blk, 0.4, 0.3);
    c.bm = make_block_mask(c.st);
    c.p->options.block_mask = c.bm.get();
  }
  c.p->options.window_left = c.left;
  c.p->options.window_right = c.right;
  if (with_dropout) {
    c.p->options.dropout_p = 0.2f;
    c.p->options.seed = seed;
  }
  const int n_inj = static_cast<int>(uni(1, 3));
  HostTensor* ts[4] = {&c.p->q, &c.p->k, &c.p->v, &c.p->dout};
  for (int n = 0; n < n_inj; ++n) {
    Injection in;
    in.tensor = static_cast<int>(uni(0, 3));
    in.index = uni(0, ts[in.tensor]->buf.size() - 1);
    const int what = nan_only ? 0 : static_cast<int>(uni(0, 2));
    in.value = what == 0 ? kNaN : what == 1 ? kInf : -kInf;
    ts[in.tensor]->buf.set(in.index, in.value);
    c.inj.push_back(in);
  }
  std::ostringstream os;
  os << flashattn::to_string(dtype) << " b " << b << " sq " << sq << " sk " << sk << " hq " << hh[0] << " hk " << hh[1]
     << " d " << d << " window (" << c.left << ", " << c.right << ")";
  if (c.sparse) os << " block-sparse " << c.st.block_q;
  if (c.varlen) {
    os << " varlen [";
    for (std::size_t i = 0; i + 1 < c.vb.cu_q.size(); ++i)
      os << (i ? " " : "") << c.vb.cu_q[i + 1] - c.vb.cu_q[i] << "/" << c.vb.cu_k[i + 1] - c.vb.cu_k[i];
    os << "]";
  }
  if (with_dropout) os << " dropout 0.2";
  for (const Injection& in : c.inj) os << " | " << "qkvo"[in.tensor] << "[" << in.index << "] = " << in.value;
  c.desc = os.str();
  return c;
}

struct Tol {
  double atol, rtol;
};
Tol tol_of(DType t) {
  switch (t) {
    case DType::f32: return {2e-4, 2e-4};
    case DType::f16: return {4e-3, 4e-3};
    default: return {3e-2, 3e-2};
  }
}

// Flash (and standard) against the float64 reference, class by class.
int nan_property_cases(DType dtype, int count, std::uint64_t salt) {
  int run_cases = 0;
  for (int n = 0; n < count; ++n) {
    FA_SEEDED(seed0);
    const std::uint64_t seed = seed0 ^ salt;
    RandomCase c = make_case(seed, dtype, false, n % 4 == 3);
    c.fix();
    SCOPED_TRACE(c.desc);
    const Outputs ref = run_reference_twin(*c.p);
    const Tol tol = tol_of(dtype);
    for (Algorithm a : {Algorithm::flash, Algorithm::standard}) {
      SCOPED_TRACE(a == Algorithm::flash ? "flash" : "standard");
      const Outputs got = run(*c.p, false, cpu(a));
      compare_classes(got.o, ref.o, "o", tol.atol, tol.rtol);
      compare_classes(got.lse, ref.lse, "lse", 1e-3, 1e-5);
      // Gradients: sums over up to 300 terms of products; an absolute
      // tolerance against their size.
      compare_classes(got.dq, ref.dq, "dq", 10 * tol.atol, 10 * tol.rtol);
      compare_classes(got.dk, ref.dk, "dk", 10 * tol.atol, 10 * tol.rtol);
      compare_classes(got.dv, ref.dv, "dv", 10 * tol.atol, 10 * tol.rtol);
    }
    ++run_cases;
  }
  return run_cases;
}

TEST(NumericsNaN, PropertyF32) {
  const int n = nan_property_cases(DType::f32, 60, 0x1001);
  std::printf("NaN/Inf property cases run (f32): %d\n", n);
}
TEST(NumericsNaN, PropertyF16) {
  const int n = nan_property_cases(DType::f16, 40, 0x2002);
  std::printf("NaN/Inf property cases run (f16): %d\n", n);
}
TEST(NumericsNaN, PropertyBf16) {
  const int n = nan_property_cases(DType::bf16, 40, 0x3003);
  std::printf("NaN/Inf property cases run (bf16): %d\n", n);
}

// The float64 reference against the rule written out (NaN injections, no
// dropout): which elements must be NaN, from the attended pairs alone.
TEST(NumericsNaN, ReferenceFollowsTheRule) {
  int cases = 0;
  for (int n = 0; n < 40; ++n) {
    FA_SEEDED(seed);
    RandomCase c = make_case(seed, DType::f64, true, false);
    c.fix();
    if (c.varlen) continue;  // the rule below is written for dense batches
    SCOPED_TRACE(c.desc);
    Problem& p = *c.p;
    const Outputs ref = run(p, true);
    const Dense q = gather(p.q.t), k = gather(p.k.t), v = gather(p.v.t), dout = gather(p.dout.t);
    const ElementMask mask = c.mask();
    const std::int64_t group = p.hq / p.hk, d = p.d;
    auto row_nan = [&](const Dense& t, std::int64_t b, std::int64_t s, std::int64_t h) {
      for (std::int64_t x = 0; x < d; ++x)
        if (std::isnan(t.at(b, s, h, x))) return true;
      return false;
    };
    Dense want_o(p.batch, p.sq, p.hq, d), want_dq(p.batch, p.sq, p.hq, d), want_dk(p.batch, p.sk, p.hk, d),
        want_dv(p.batch, p.sk, p.hk, d);
    std::vector<double> want_lse(static_cast<std::size_t>(p.batch * p.hq * p.sq), 0.0);
    for (std::int64_t b = 0; b < p.batch; ++b)
      for (std::int64_t h = 0; h < p.hq; ++h) {
        const std::int64_t hk = h / group;
        for (std::int64_t i = 0; i < p.sq; ++i) {
          std::vector<std::int64_t> att;
          for (std::int64_t j = 0; j < p.sk; ++j)
            if (mask(b, h, i, j, p.sq, p.sk)) att.push_back(j);
          if (att.empty()) continue;  // empty row: nothing is NaN
          bool pnan = row_nan(q, b, i, h), vnan = false;
          for (std::int64_t j : att) {
            pnan |= row_nan(k, b, j, hk);
            vnan |= row_nan(v, b, j, hk);
          }
          const bool dsnan = pnan || vnan || row_nan(dout, b, i, h);
          want_lse[(b * p.hq + h) * p.sq + i] = pnan ? kNaN : 0.0;
          for (std::int64_t x = 0; x < d; ++x) {
            bool o_nan = pnan;
            for (std::int64_t j : att) o_nan |= std::isnan(v.at(b, j, hk, x));
            if (o_nan) want_o.at(b, i, h, x) = kNaN;
            if (dsnan) want_dq.at(b, i, h, x) = kNaN;
            for (std::int64_t j : att) {
              if (dsnan || std::isnan(q.at(b, i, h, x))) want_dk.at(b, j, hk, x) = kNaN;
              if (pnan || std::isnan(dout.at(b, i, h, x))) want_dv.at(b, j, hk, x) = kNaN;
            }
          }
        }
      }
    auto nan_pattern = [](const std::vector<double>& got, const std::vector<double>& want, const char* name) {
      int bad = 0;
      for (std::size_t i = 0; i < got.size(); ++i)
        if (std::isnan(got[i]) != std::isnan(want[i]) && ++bad <= 3)
          ADD_FAILURE() << name << "[" << i << "]: got " << got[i] << ", rule says "
                        << (std::isnan(want[i]) ? "NaN" : "not NaN");
    };
    nan_pattern(ref.o, want_o.x, "o");
    nan_pattern(ref.lse, want_lse, "lse");
    nan_pattern(ref.dq, want_dq.x, "dq");
    nan_pattern(ref.dk, want_dk.x, "dk");
    nan_pattern(ref.dv, want_dv.x, "dv");
    ++cases;
  }
  std::printf("reference NaN-rule cases run: %d\n", cases);
}

// Single cases spelled out: a NaN query row is NaN (not O = 0,
// LSE = -inf) and its backward is NaN only on the keys it sees; a NaN key
// makes exactly the rows that see it NaN; a NaN / inf value outside a
// sliding window, or in an unlisted 64-key block sharing a 128-key tile
// with a listed one, reaches no row.
TEST(NumericsNaN, SpelledOutCases) {
  for (DType dt : {DType::f32, DType::f16, DType::bf16}) {
    SCOPED_TRACE(flashattn::to_string(dt));
    FA_SEEDED(seed);
    const std::int64_t s = 256, d = 32;
    auto fresh = [&] {
      auto p = std::make_unique<Problem>(dt, 1, s, s, 1, 1, d);
      p->randomize(seed);
      return p;
    };
    auto idx = [&](std::int64_t row, std::int64_t c) { return row * d + c; };
    auto nan_rows = [&](const std::vector<double>& x) {
      std::vector<std::int64_t> rows;
      for (std::int64_t r = 0; r < static_cast<std::int64_t>(x.size()) / d; ++r) {
        bool any = false;
        for (std::int64_t c = 0; c < d; ++c) any |= std::isnan(x[r * d + c]);
        if (any) rows.push_back(r);
      }
      return rows;
    };
    {  // NaN in query row 100, causal.
      auto p = fresh();
      p->options.causal = true;
      p->q.buf.set(idx(100, 3), kNaN);
      const Outputs got = run(*p, false, cpu(Algorithm::flash));
      EXPECT_EQ(nan_rows(got.o), std::vector<std::int64_t>{100});
      EXPECT_TRUE(std::isnan(got.lse[100]));
      EXPECT_EQ(nan_rows(got.dq), std::vector<std::int64_t>{100});
      std::vector<std::int64_t> keys;  // row 100 sees keys 0..100
      for (std::int64_t j = 0; j <= 100; ++j) keys.push_back(j);
      EXPECT_EQ(nan_rows(got.dk), keys);
      EXPECT_EQ(nan_rows(got.dv), keys);
    }
    {  // NaN in key 50, causal: rows >= 50 see it.
      auto p = fresh();
      p->options.causal = true;
      p->k.buf.set(idx(50, 0), kNaN);
      const Outputs got = run(*p, false, cpu(Algorithm::flash));
      std::vector<std::int64_t> rows;
      for (std::int64_t i = 50; i < s; ++i) rows.push_back(i);
      EXPECT_EQ(nan_rows(got.o), rows);
      EXPECT_TRUE(std::isnan(got.lse[50]) && !std::isnan(got.lse[49]));
      EXPECT_EQ(nan_rows(got.dq), rows);  // rows < 50 stay finite
      std::vector<std::int64_t> all;  // rows >= 50 see every key up to theirs
      for (std::int64_t j = 0; j < s; ++j) all.push_back(j);
      EXPECT_EQ(nan_rows(got.dk), all);
      EXPECT_EQ(nan_rows(got.dv), all);
    }
    for (double bad : {kNaN, kInf}) {  // V outside a sliding window of (16, 0)
      auto p = fresh();
      p->options.window_left = 16;
      p->options.window_right = 0;
      p->v.buf.set(idx(10, 5), bad);
      const Outputs got = run(*p, false, cpu(Algorithm::flash));
      for (std::int64_t i = 0; i < s; ++i) {
        const bool sees = i >= 10 && i <= 26;
        EXPECT_EQ(!std::isfinite(got.o[idx(i, 5)]), sees) << "row " << i;
        EXPECT_TRUE(std::isfinite(got.o[idx(i, 4)])) << "row " << i;
      }
    }
    {  // block size 64: NaN in V of an unlisted block sharing a 128-key tile
      auto p = fresh();
      BlockStates st;
      st.block_q = st.block_k = 64;
      st.nqb = st.nkb = s / 64;
      st.s.assign(static_cast<std::size_t>(st.nqb * st.nkb), kSkip);
      for (std::int64_t qb = 0; qb < st.nqb; ++qb) st.s[qb * st.nkb + 0] = kFull;  // block 0 only
      BlockMaskBuf bm = make_block_mask(st);
      p->options.block_mask = bm.get();
      p->v.buf.set(idx(70, 1), kNaN);  // key block 1
      p->k.buf.set(idx(80, 2), kNaN);
      p->dout.buf.set(idx(3, 3), kNaN);
      const Outputs got = run(*p, false, cpu(Algorithm::flash));
      EXPECT_TRUE(nan_rows(got.o).empty());
      EXPECT_EQ(nan_rows(got.dq), std::vector<std::int64_t>{3});
      std::vector<std::int64_t> block0;
      for (std::int64_t j = 0; j < 64; ++j) block0.push_back(j);
      EXPECT_EQ(nan_rows(got.dk), block0);
      EXPECT_EQ(nan_rows(got.dv), block0);
    }
  }
}

// ----------------------------------------------------- large logits ---

// q and k scaled by 1e2 / 1e3 / 1e4: the flash backward
// recomputes P from a recomputed S and the forward's LSE; its error must
// stay within 3x the standard algorithm's own error (both against the
// float64 reference), plus a floor of a few output ulps of the largest
// reference value, for every dtype and every scale.
double eps_of(DType t) {
  switch (t) {
    case DType::f32: return 0x1p-24;
    case DType::f16: return 0x1p-11;
    default: return 0x1p-8;
  }
}

double max_abs(const std::vector<double>& x) {
  double m = 0;
  for (double v : x) m = std::max(m, std::abs(v));
  return m;
}

TEST(Numerics, LargeLogitsBackward) {
  int cases = 0;
  for (DType dt : {DType::f32, DType::f16, DType::bf16})
    for (double scale : {1.0, 1e2, 1e3, 1e4})
      for (bool causal : {false, true}) {
        FA_SEEDED(seed);
        SCOPED_TRACE(::testing::Message() << flashattn::to_string(dt) << " x " << scale << (causal ? " causal" : ""));
        Problem p(dt, 1, 200, 200, 2, 2, 32);
        p.randomize(seed);
        for (HostTensor* t : {&p.q, &p.k})
          for (std::int64_t i = 0; i < t->buf.size(); ++i) t->buf.set(i, t->buf.get(i) * scale);
        p.options.causal = causal;
        const Outputs ref = run_reference_twin(p);
        const Outputs fl = run(p, false, cpu(Algorithm::flash));
        const Outputs st = run(p, false, cpu(Algorithm::standard));
        const char* names[] = {"o", "dq", "dk", "dv"};  // O: the forward, reported only
        const std::vector<double>* f[] = {&fl.o, &fl.dq, &fl.dk, &fl.dv};
        const std::vector<double>* s[] = {&st.o, &st.dq, &st.dk, &st.dv};
        const std::vector<double>* r[] = {&ref.o, &ref.dq, &ref.dk, &ref.dv};
        // D = rowsum(dO o O) from the stored (rounded) O is FlashAttention's
        // by design, where standard attention sums P dP exactly: at one-hot
        // rows that leaves dS ~ eps |dO| |O| against an exact 0, times
        // scale |q| in dK (and |k| in dQ). The floor of dQ / dK covers it.
        // Also, the backward cannot be more exact than the forward whose P
        // it recomputes: the forward's S comes from the tiled GEMM (a
        // sequential fp32 k-sum, where the standard path sums in vector
        // lanes), a few times less exact than standard attention's at
        // logits ~1e4 (x100) in fp32. So up to 10x flash's own forward
        // error (relative, of O) times the gradient's size is allowed too;
        // a recomputation inconsistent with the forward (P from the
        // rounded float LSE) is 1e5-1e20 times further off (dV by 0.45-2.2
        // at x1000, 2.8e14 at x10000, while O is exact).
        const double dsum = max_abs(p.dout.values()) * max_abs(p.v.values()) * std::sqrt(double(p.d));
        const double fwd_rel = max_abs_error(fl.o, ref.o) / std::max(1e-30, max_abs(ref.o));
        for (int t = 1; t < 4; ++t) {
          const double ef = max_abs_error(*f[t], *r[t]), es = max_abs_error(*s[t], *r[t]);
          double floor = 8 * eps_of(dt) * std::max(1.0, max_abs(*r[t]));
          if (t == 1) floor += 8 * eps_of(dt) * p.scale() * max_abs(p.k.values()) * dsum;
          if (t == 2) floor += 8 * eps_of(dt) * p.scale() * max_abs(p.q.values()) * dsum;
          // How a relative error of P moves the gradient: dV by its size,
          // dQ (dK) through dS = P (dP - D) times scale |k| (|q|).
          const double sens = t == 3 ? max_abs(*r[t])
                                     : p.scale() * max_abs(t == 1 ? p.k.values() : p.q.values()) * dsum;
          const double allowed = std::max(3 * es, 10 * fwd_rel * sens) + floor;
          EXPECT_LE(ef, allowed) << names[t] << ": flash " << ef << ", standard " << es << ", allowed " << allowed;
          std::printf("%s x%g%s %s: flash %.3g standard %.3g floor %.3g\n", flashattn::to_string(dt), scale,
                      causal ? " causal" : "", names[t], ef, es, floor);
        }
        ++cases;
      }
  std::printf("large-logit cases run: %d\n", cases);
}

// ------------------------------------------------------- validation ---

TEST(Numerics, RejectsHugeThreadCounts) {
  Problem p(DType::f32, 1, 8, 8, 1, 1, 16);
  p.randomize(1);
  for (int n : {1025, 40000, 100000}) {
    Context ctx;
    ctx.num_threads = n;
    try {
      flashattn::forward(p.forward_args(), ctx);
      ADD_FAILURE() << "num_threads " << n << " accepted";
    } catch (const flashattn::Error& e) {
      EXPECT_NE(std::string(e.what()).find("ctx.num_threads: expected"), std::string::npos) << e.what();
    }
  }
  Context ok;
  ok.num_threads = 1024;
  EXPECT_NO_THROW(flashattn::forward(p.forward_args(), ok));
}

TEST(Numerics, RejectsOverlappingOutputs) {
  Problem p(DType::f32, 2, 8, 8, 2, 2, 16);
  p.randomize(1);
  auto expect_reject = [&](const char* name, bool backward, const std::function<void(Tensor&)>& edit) {
    flashattn::ForwardArgs fa = p.forward_args();
    flashattn::BackwardArgs ba = p.backward_args();
    Tensor& t = std::string(name) == "o" ? fa.o : std::string(name) == "dq" ? ba.dq
                                              : std::string(name) == "dk" ? ba.dk
                                                                          : ba.dv;
    edit(t);
    try {
      if (backward)
        flashattn::backward(ba);
      else
        flashattn::forward(fa);
      ADD_FAILURE() << name << ": overlapping view accepted";
    } catch (const flashattn::Error& e) {
      EXPECT_EQ(std::string(e.what()).rfind(std::string(name) + " strides: expected a non-overlapping", 0), 0u)
          << e.what();
    }
  };
  flashattn::forward(p.forward_args());
  for (const char* n : {"o", "dq", "dk", "dv"}) {
    const bool bwd = std::string(n) != "o";
    expect_reject(n, bwd, [](Tensor& t) { t.stride_seq = 0; });
    expect_reject(n, bwd, [](Tensor& t) { t.stride_seq = t.heads * t.head_dim - 1; });
    expect_reject(n, bwd, [](Tensor& t) { t.stride_batch = t.stride_seq; });
  }
  // Transposed (b, h, s, d) and padded layouts stay legal.
  HostBuffer buf(DType::f32, 2 * 8 * 2 * 16);
  flashattn::ForwardArgs fa = p.forward_args();
  fa.o = transposed_view(buf.data(), DType::f32, 2, 8, 2, 16);
  EXPECT_NO_THROW(flashattn::forward(fa));
}

TEST(Numerics, ErrorKinds) {
  // Argument errors and device failures are different types with one base.
  const flashattn::Error arg("x: expected 1, got 2");
  const flashattn::RuntimeError rt("CUDA: expected cudaSuccess, got cudaErrorLaunchFailure");
  const flashattn::OutOfMemory oom("CUDA: expected cudaSuccess, got cudaErrorMemoryAllocation");
  EXPECT_NE(dynamic_cast<const std::invalid_argument*>(&arg), nullptr);
  EXPECT_EQ(dynamic_cast<const std::runtime_error*>(static_cast<const std::exception*>(
                static_cast<const std::invalid_argument*>(&arg))),
            nullptr);
  EXPECT_NE(dynamic_cast<const std::runtime_error*>(&rt), nullptr);
  EXPECT_EQ(dynamic_cast<const std::invalid_argument*>(static_cast<const std::exception*>(
                static_cast<const std::runtime_error*>(&rt))),
            nullptr);
  EXPECT_NE(dynamic_cast<const flashattn::RuntimeError*>(&oom), nullptr);
  for (const flashattn::Exception* e :
       {static_cast<const flashattn::Exception*>(&arg), static_cast<const flashattn::Exception*>(&rt),
        static_cast<const flashattn::Exception*>(&oom)})
    EXPECT_NE(std::string(e->what()).find("expected"), std::string::npos);
  try {
    throw flashattn::OutOfMemory("oom");
  } catch (const std::exception& e) {  // one std::exception base: catchable as such
    EXPECT_STREQ(e.what(), "oom");
  }
  Problem p(DType::f32, 1, 8, 8, 1, 1, 16);
  Context bad;
  bad.num_threads = -1;
  EXPECT_THROW(flashattn::forward(p.forward_args(), bad), flashattn::Exception);
}

}  // namespace
