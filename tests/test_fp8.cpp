// The FP8 (e4m3) forward on the CPU: the e4m3 codes themselves (every one
// of the 256, against a decoding written from the format's definition),
// the float64 reference's dequantisation, the CPU backends against it, and
// the argument checks.
//
// Accuracy rule (CPU). The reference computes in float64 on the exactly
// dequantised inputs (code x descale). The CPU dequantises with one float32
// rounding and runs its float32 path, P unquantised, so its yardstick is
// standard attention in float32 on the same dequantised values (an f32
// problem, independent of the e4m3 code path), its output rounded to bf16
// like the FP8 call's:
//   max|O - O_ref|     <= 2 max|O_std - O_ref|     + 2^-12 max|O_ref|
//   max|lse - lse_ref| <= 2 max|lse_std - lse_ref| + 1e-5
// and the yardstick itself within bf16's norm-wise relative error (2e-2,
// CONTRIBUTING.md), so that a broken baseline cannot loosen the rule.
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <tuple>
#include <vector>

#include "test_util.h"

namespace {

using namespace fa_test;

// ------------------------------------------------------------ codes ---

TEST(E4m3, EveryCodeDecodesAsTheFormatDefines) {
  int nan_codes = 0;
  for (int c = 0; c < 256; ++c) {
    const auto code = static_cast<std::uint8_t>(c);
    const double want = e4m3_value(code);
    const float got = flashattn::from_e4m3(code);
    SCOPED_TRACE("code " + std::to_string(c));
    if (std::isnan(want)) {
      EXPECT_TRUE(std::isnan(got));
      EXPECT_EQ(std::signbit(got), (c & 0x80) != 0);
      ++nan_codes;
      continue;
    }
    EXPECT_EQ(static_cast<double>(got), want);
    EXPECT_EQ(std::signbit(got), (c & 0x80) != 0);  // -0 is 0x80
  }
  EXPECT_EQ(nan_codes, 2);  // S.1111.111 only: no infinities
  EXPECT_EQ(flashattn::from_e4m3(0x7e), 448.0f);
  EXPECT_EQ(flashattn::from_e4m3(0xfe), -448.0f);
  EXPECT_EQ(flashattn::from_e4m3(0x01), std::ldexp(1.0f, -9));  // smallest subnormal
  EXPECT_EQ(flashattn::from_e4m3(0x07), std::ldexp(7.0f, -9));  // largest subnormal
  EXPECT_EQ(flashattn::from_e4m3(0x08), std::ldexp(1.0f, -6));  // smallest normal
  EXPECT_EQ(flashattn::from_e4m3(0x38), 1.0f);
}

TEST(E4m3, EveryFiniteCodeRoundTrips) {
  for (int c = 0; c < 256; ++c) {
    const auto code = static_cast<std::uint8_t>(c);
    if ((c & 0x7f) == 0x7f) {
      EXPECT_EQ(flashattn::to_e4m3(flashattn::from_e4m3(code)), code) << "NaN keeps its sign";
      continue;
    }
    EXPECT_EQ(flashattn::to_e4m3(flashattn::from_e4m3(code)), code) << "code " << c;
  }
}

// The nearest code to x by brute force over the codes of x's sign, ties to
// the even code (mantissa bit 0 clear); the NaN code stands for 480, the
// value the next step would have, so that magnitudes past 464 round to NaN.
std::uint8_t nearest_code(double x) {
  const int sign = std::signbit(x) ? 0x80 : 0;
  const double a = std::abs(x);
  int best = -1;
  double best_err = std::numeric_limits<double>::infinity();
  for (int m = 0; m <= 0x7f; ++m) {
    const double v = m == 0x7f ? 480.0 : e4m3_value(static_cast<std::uint8_t>(m));
    const double err = std::abs(a - v);
    if (err < best_err || (err == best_err && (m & 1) == 0)) {
      best = m;
      best_err = err;
    }
  }
  return static_cast<std::uint8_t>(sign | best);
}

TEST(E4m3, RoundsToNearestEvenAndOverflowsToNaN) {
  std::vector<float> xs = {0.0f, -0.0f, 448.0f, -448.0f, 464.0f, -464.0f, std::nextafter(464.0f, 1e9f),
                           480.0f, 1e6f, std::ldexp(1.0f, -9), std::ldexp(1.0f, -10), std::ldexp(1.0f, -11),
                           std::ldexp(1.5f, -9), std::ldexp(2.5f, -9), std::ldexp(7.5f, -9), 1.0625f, 1.1875f,
                           std::nextafter(1.0625f, 2.0f), std::nextafter(1.0625f, 0.0f)};
  // Every midpoint between neighbouring codes, and the floats on either side.
  for (int m = 0; m < 0x7e; ++m) {
    const double mid = (e4m3_value(static_cast<std::uint8_t>(m)) + e4m3_value(static_cast<std::uint8_t>(m + 1))) / 2;
    for (float x : {static_cast<float>(mid), std::nextafter(static_cast<float>(mid), 0.0f),
                    std::nextafter(static_cast<float>(mid), 1e9f)}) {
      xs.push_back(x);
      xs.push_back(-x);
    }
  }
  FA_SEEDED(seed);
  std::mt19937_64 gen(seed);
  std::uniform_real_distribution<double> expo(-12.0, 9.5), sign(-1.0, 1.0);
  for (int i = 0; i < 20000; ++i)
    xs.push_back(static_cast<float>(std::copysign(std::exp2(expo(gen)), sign(gen))));
  for (float x : xs) EXPECT_EQ(int(flashattn::to_e4m3(x)), int(nearest_code(x))) << "x = " << x;

  EXPECT_EQ(flashattn::to_e4m3(464.0f), 0x7e) << "the tie at 464 goes to 448 (even)";
  EXPECT_EQ(flashattn::to_e4m3(std::numeric_limits<float>::infinity()), 0x7f);
  EXPECT_EQ(flashattn::to_e4m3(-std::numeric_limits<float>::infinity()), 0xff);
  EXPECT_EQ(flashattn::to_e4m3(std::numeric_limits<float>::quiet_NaN()) & 0x7f, 0x7f);
  EXPECT_EQ(flashattn::to_e4m3(std::ldexp(1.0f, -10)), 0x00) << "the tie at half the smallest subnormal goes to 0";
  EXPECT_EQ(flashattn::to_e4m3(-std::ldexp(1.0f, -12)), 0x80) << "underflow keeps the sign";
}

TEST(E4m3, DtypeBasics) {
  EXPECT_EQ(flashattn::dtype_size(DType::e4m3), 1u);
  EXPECT_STREQ(flashattn::to_string(DType::e4m3), "e4m3");
  EXPECT_TRUE(flashattn::supports(Device::cpu, Algorithm::flash, DType::e4m3, 128));
  EXPECT_TRUE(flashattn::supports(Device::cpu, Algorithm::standard, DType::e4m3, 64));
  EXPECT_TRUE(flashattn::supports(Device::cuda, Algorithm::flash, DType::e4m3, 128));
  EXPECT_FALSE(flashattn::supports(Device::cuda, Algorithm::standard, DType::e4m3, 128));
}

// -------------------------------------------------------- reference ---

// The reference on e4m3 inputs equals the independent naive attention on
// the values the API defines (code x descale of the sequence's KV head, a
// query head taking its group's factor), so the oracle reads the inputs
// as documented.
TEST(Fp8Reference, DequantisesAsDocumented) {
  FA_SEEDED(seed);
  for (bool causal : {false, true}) {
    Fp8Problem p(2, 37, 53, 4, 2, 32);
    p.options.causal = causal;
    p.randomize(seed);
    const Outputs ref = fp8_reference(p);
    const Dense q = dequantise_e4m3(p.q.t, p.q_descale.data(), p.hk), k = dequantise_e4m3(p.k.t, p.k_descale.data(), p.hk),
                v = dequantise_e4m3(p.v.t, p.v_descale.data(), p.hk);
    const NaiveResult naive = naive_attention(q, k, v, p.scale(), window_mask(-1, causal ? 0 : -1));
    EXPECT_LT(max_abs_error(ref.o, naive.o.x), 1e-12) << "causal " << causal;
    EXPECT_LT(max_abs_error(ref.lse, naive.lse), 2e-6) << "causal " << causal << " (lse is float32)";
  }
}

// Null descales mean 1: the reference then equals one with all-ones arrays.
TEST(Fp8Reference, NullDescalesAreOne) {
  FA_SEEDED(seed);
  Fp8Problem p(1, 20, 30, 2, 1, 16);
  p.randomize(seed, 0.5);
  for (auto* d : {&p.q_descale, &p.k_descale, &p.v_descale}) std::fill(d->begin(), d->end(), 1.0f);
  const Outputs ones = fp8_reference(p);
  for (auto* d : {&p.q_descale, &p.k_descale, &p.v_descale}) d->clear();  // data() = nullptr
  const Outputs null = fp8_reference(p);
  EXPECT_EQ(max_abs_error(ones.o, null.o), 0.0);
  EXPECT_EQ(max_abs_error(ones.lse, null.lse), 0.0);
}

// ---------------------------------------------------------- backends ---

// O and LSE of the yardstick: standard attention in float32 on f32 copies
// of the dequantised inputs, O rounded to bf16.
Outputs fp32_standard_yardstick(Fp8Problem& p) {
  const auto* cq = p.cu_q();
  const auto* ck = p.cu_k();
  HostTensor q(DType::f32, p.q.t.batch, p.q.t.seqlen, p.hq, p.d), k(DType::f32, p.k.t.batch, p.k.t.seqlen, p.hk, p.d),
      v(DType::f32, p.v.t.batch, p.v.t.seqlen, p.hk, p.d), o(DType::f32, p.o.t.batch, p.o.t.seqlen, p.hq, p.d);
  scatter(dequantise_e4m3(p.q.t, p.q_descale.data(), p.hk, cq), q.t);
  scatter(dequantise_e4m3(p.k.t, p.k_descale.data(), p.hk, ck), k.t);
  scatter(dequantise_e4m3(p.v.t, p.v_descale.data(), p.hk, ck), v.t);
  std::vector<float> lse = poisoned_lse(static_cast<std::int64_t>(p.lse.size()));
  flashattn::ForwardArgs a;
  a.q = q.t;
  a.k = k.t;
  a.v = v.t;
  a.o = o.t;
  a.lse = lse.data();
  a.options = p.options;
  if (p.varlen) a.options.varlen = p.varlen->get();
  flashattn::forward(a, cpu(Algorithm::standard));
  Outputs out;
  out.o = o.values();
  for (double& x : out.o) x = flashattn::detail::bf16_to_float(flashattn::detail::float_to_bf16(static_cast<float>(x)));
  out.lse = to_double(lse);
  return out;
}

double max_abs(const std::vector<double>& v) {
  double m = 0;
  for (double x : v) m = std::max(m, std::abs(x));
  return m;
}

// The accuracy rule of this file (top comment) for one backend's run.
void expect_fp8_accuracy(const Outputs& got, const Outputs& yard, const Outputs& ref) {
  ASSERT_LT(rel_error(yard.o, ref.o), 2e-2) << "the fp32 yardstick itself is off";
  const double err_o = max_abs_error(got.o, ref.o), err_std = max_abs_error(yard.o, ref.o);
  EXPECT_LE(err_o, 2 * err_std + std::ldexp(max_abs(ref.o), -12)) << "o (yardstick " << err_std << ")";
  const double err_lse = max_abs_error(got.lse, ref.lse), err_lse_std = max_abs_error(yard.lse, ref.lse);
  EXPECT_LE(err_lse, 2 * err_lse_std + 1e-5) << "lse (yardstick " << err_lse_std << ")";
}

Outputs run_fp8(Fp8Problem& p, Algorithm alg) {
  p.poison();
  flashattn::forward(p.forward_args(), cpu(alg));
  Outputs out;
  out.o = p.o.values();
  out.lse = to_double(p.lse);
  return out;
}

// head_dim, causal, (seqlen_q, seqlen_k), GQA: the shapes of the CUDA
// kernel to come (64, 128, 256) on both CPU algorithms.
class Fp8Forward : public ::testing::TestWithParam<std::tuple<int, bool, Algorithm>> {};

TEST_P(Fp8Forward, MatchesTheReferenceOfTheDequantisedInputs) {
  const auto [d, causal, alg] = GetParam();
  FA_SEEDED(seed);
  for (auto [sq, sk, hq, hk] : {std::tuple{150, 150, 2, 2}, std::tuple{70, 190, 4, 2}, std::tuple{129, 65, 3, 1}}) {
    SCOPED_TRACE("sq " + std::to_string(sq) + " sk " + std::to_string(sk) + " hq " + std::to_string(hq) + " hk " +
                 std::to_string(hk));
    Fp8Problem p(2, sq, sk, hq, hk, d);
    p.options.causal = causal;
    p.randomize(seed + sq);
    const Outputs ref = fp8_reference(p), yard = fp32_standard_yardstick(p), got = run_fp8(p, alg);
    expect_fp8_accuracy(got, yard, ref);
  }
}

INSTANTIATE_TEST_SUITE_P(Shapes, Fp8Forward,
                         ::testing::Combine(::testing::Values(64, 128, 256), ::testing::Bool(),
                                            ::testing::Values(Algorithm::flash, Algorithm::standard)),
                         [](const auto& info) {
                           std::string n = std::to_string(std::get<0>(info.param));
                           n += std::get<1>(info.param) ? "_causal_" : "_full_";
                           n += name(std::get<2>(info.param));
                           return "d" + n;
                         });

// Varlen (descales per sequence), a sliding window and a block mask: the
// masks of the other dtypes apply unchanged.
TEST(Fp8ForwardOptions, VarlenWindowAndBlockMask) {
  FA_SEEDED(seed);
  for (Algorithm alg : {Algorithm::flash, Algorithm::standard}) {
    SCOPED_TRACE(name(alg));
    Fp8Problem vl({33, 0, 140, 7}, {60, 5, 100, 7}, 4, 2, 64, 0);
    vl.options.causal = true;
    vl.randomize(seed);
    expect_fp8_accuracy(run_fp8(vl, alg), fp32_standard_yardstick(vl), fp8_reference(vl));

    Fp8Problem win(2, 160, 160, 2, 1, 128);
    win.options.window_left = 40;
    win.options.window_right = 8;
    win.randomize(seed + 1);
    expect_fp8_accuracy(run_fp8(win, alg), fp32_standard_yardstick(win), fp8_reference(win));

    Fp8Problem bs(1, 256, 256, 2, 2, 64);
    const flashattn::BlockPattern pattern = flashattn::BlockPattern::local_global(256, 256, 64, 64, 1, 1, true);
    const BlockMask mask = pattern.mask();
    bs.options.causal = true;
    bs.options.block_mask = &mask;
    bs.randomize(seed + 2);
    expect_fp8_accuracy(run_fp8(bs, alg), fp32_standard_yardstick(bs), fp8_reference(bs));
  }
}

// Rows of no sequence keep what O held (the poison), as for every dtype.
TEST(Fp8ForwardOptions, VarlenTailIsNotWritten) {
  FA_SEEDED(seed);
  Fp8Problem p({20, 45}, {30, 45}, 2, 2, 64, 9);
  p.randomize(seed);
  p.poison();
  flashattn::forward(p.forward_args(), cpu(Algorithm::flash));
  const std::vector<double> o = p.o.values();
  const std::int64_t first_tail = p.varlen->total_q * p.hq * p.d;
  for (std::size_t i = 0; i < o.size(); ++i) {
    if (static_cast<std::int64_t>(i) < first_tail)
      ASSERT_FALSE(std::isnan(o[i])) << "element " << i;
    else
      ASSERT_TRUE(std::isnan(o[i])) << "tail element " << i << " was written";
  }
}

// With power-of-two descales every dequantised value is a float, so the
// FP8 call must be the float32 path exactly: its bf16 O equals the f32
// call's O rounded to bf16, bit for bit, and the LSEs are equal. This pins
// down what the CPU does (no rounding of P to e4m3).
TEST(Fp8ForwardOptions, CpuIsTheFloat32PathOnTheDequantisedValues) {
  FA_SEEDED(seed);
  for (Algorithm alg : {Algorithm::flash, Algorithm::standard}) {
    Fp8Problem p(2, 90, 130, 4, 2, 64);
    p.options.causal = true;
    p.randomize(seed);
    for (auto* ds : {&p.q_descale, &p.k_descale, &p.v_descale})
      for (float& x : *ds) x = std::exp2(std::round(std::log2(x)));
    const Outputs got = run_fp8(p, alg);

    HostTensor q(DType::f32, 2, 90, 4, 64), k(DType::f32, 2, 130, 2, 64), v(DType::f32, 2, 130, 2, 64),
        o(DType::f32, 2, 90, 4, 64);
    scatter(dequantise_e4m3(p.q.t, p.q_descale.data(), p.hk), q.t);
    scatter(dequantise_e4m3(p.k.t, p.k_descale.data(), p.hk), k.t);
    scatter(dequantise_e4m3(p.v.t, p.v_descale.data(), p.hk), v.t);
    std::vector<float> lse = poisoned_lse(static_cast<std::int64_t>(p.lse.size()));
    flashattn::ForwardArgs a;
    a.q = q.t;
    a.k = k.t;
    a.v = v.t;
    a.o = o.t;
    a.lse = lse.data();
    a.options = p.options;
    flashattn::forward(a, cpu(alg));
    std::vector<double> want = o.values();
    for (double& x : want) x = flashattn::detail::bf16_to_float(flashattn::detail::float_to_bf16(static_cast<float>(x)));
    EXPECT_EQ(max_abs_error(got.o, want), 0.0) << name(alg);
    EXPECT_EQ(max_abs_error(got.lse, to_double(lse)), 0.0) << name(alg);
  }
}

// A NaN code in K, or a NaN descale, follows the NaN rule: rows that
// attend to it are NaN (a NaN score), the others are not.
TEST(Fp8ForwardOptions, NanCodesAndDescalesFollowTheNanRule) {
  Fp8Problem p(1, 16, 16, 1, 1, 64);
  p.options.causal = true;
  p.randomize(7);
  static_cast<std::uint8_t*>(p.k.t.data)[5 * 64 + 3] = 0x7f;  // key 5: visible to rows >= 5
  const Outputs got = run_fp8(p, Algorithm::flash);
  for (int i = 0; i < 16; ++i) EXPECT_EQ(std::isnan(got.lse[i]), i >= 5) << "row " << i;

  p.randomize(7);
  p.v_descale[0] = std::numeric_limits<float>::quiet_NaN();
  const Outputs all = run_fp8(p, Algorithm::flash);
  for (double x : all.o) ASSERT_TRUE(std::isnan(x));
}

// ----------------------------------------------------------- errors ---

// The message of the Error a call throws ("" when none).
template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const flashattn::Error& e) {
    return e.what();
  }
  return "";
}

TEST(Fp8Validation, ErrorsNameTheArgument) {
  Fp8Problem p(1, 8, 8, 2, 1, 64);
  p.randomize(3);
  const auto fwd = [&](const flashattn::ForwardArgs& a, const Context& ctx = {}) {
    return error_of([&] { flashattn::forward(a, ctx); });
  };
  EXPECT_EQ(fwd(p.forward_args()), "");

  HostTensor o16(DType::f16, 1, 8, 2, 64);
  flashattn::ForwardArgs a = p.forward_args();
  a.o = o16.t;
  EXPECT_EQ(fwd(a), "o.dtype: expected bf16 with e4m3 inputs, got f16");
  // The reference also takes f32 / f64 outputs, never f16.
  EXPECT_EQ(error_of([&] { flashattn::reference::forward(a); }),
            "o.dtype: expected bf16, f32 or f64 with e4m3 inputs (the reference), got f16");

  HostTensor k16(DType::bf16, 1, 8, 1, 64);
  a = p.forward_args();
  a.k = k16.t;
  EXPECT_EQ(fwd(a), "k.dtype: expected the dtype of q (e4m3), got bf16");

  a = p.forward_args();
  a.options.dropout_p = 0.1f;
  EXPECT_EQ(fwd(a).rfind("options.dropout_p: expected 0 with e4m3 inputs", 0), 0u) << fwd(a);

  a = p.forward_args();
  a.k_descale = reinterpret_cast<const float*>(reinterpret_cast<const char*>(p.k_descale.data()) + 1);
  EXPECT_EQ(fwd(a), "k_descale: expected 4-byte alignment, got a misaligned pointer");

  // Descales with another dtype: an Error, not silently ignored.
  HostTensor qb(DType::bf16, 1, 8, 2, 64), kb(DType::bf16, 1, 8, 1, 64), vb(DType::bf16, 1, 8, 1, 64);
  flashattn::ForwardArgs b;
  b.q = qb.t;
  b.k = kb.t;
  b.v = vb.t;
  b.o = p.o.t;
  b.v_descale = p.v_descale.data();
  EXPECT_EQ(fwd(b), "v_descale: expected nullptr (descale factors belong to e4m3 inputs; q.dtype is bf16), got a pointer");
}

TEST(Fp8Validation, ForwardOnly) {
  Fp8Problem p(1, 8, 8, 1, 1, 64);
  p.randomize(5);
  flashattn::BackwardArgs b;
  b.q = p.q.t;
  b.k = p.k.t;
  b.v = p.v.t;
  b.o = p.o.t;
  b.dout = p.o.t;
  b.lse = p.lse.data();
  b.dq = p.q.t;
  b.dk = p.k.t;
  b.dv = p.v.t;
  EXPECT_EQ(error_of([&] { flashattn::backward(b); }),
            "q.dtype: expected f32, f16, bf16 or f64 for backward (e4m3 is a forward-only dtype), got e4m3");

  flashattn::KvCacheArgs kv;
  kv.q = p.q.t;
  kv.k_cache = p.k.t;
  kv.v_cache = p.v.t;
  kv.o = p.o.t;
  const std::int32_t lens[1] = {8};
  kv.cache_seqlens = lens;
  EXPECT_EQ(error_of([&] { flashattn::forward_kvcache(kv); }).rfind("q.dtype: expected f32, f16, bf16 or f64 for "
                                                                    "forward_kvcache",
                                                                    0),
            0u);
}

// The CUDA FP8 forward is the Hopper kernel of its own table (head_dim 64,
// 128, 256; flash only). supports() and the refusals below come from
// validation, ahead of any CUDA call (host pointers do), so they read the
// same in a build without CUDA; forward_workspace_bytes gives them too.
// That the kernel needs a GPU of compute capability 9.0 is the backend's
// check (tests/gpu/test_gpu_fp8.cpp).
TEST(Fp8Validation, CudaSupportsTheFp8TableWithFlashOnly) {
  for (const std::int64_t d : {64, 128, 256}) {
    EXPECT_TRUE(flashattn::supports(Device::cuda, Algorithm::flash, DType::e4m3, d)) << "d " << d;
    EXPECT_FALSE(flashattn::supports(Device::cuda, Algorithm::standard, DType::e4m3, d)) << "d " << d;
  }
  for (const std::int64_t d : {16, 32, 96, 192, 257})
    EXPECT_FALSE(flashattn::supports(Device::cuda, Algorithm::flash, DType::e4m3, d)) << "d " << d;
}

TEST(Fp8Validation, CudaStandardIsRefusedNamingCtxAlgorithm) {
  const std::string want =
      "ctx.algorithm: expected flash with e4m3 inputs on cuda (the FP8 forward is a flash kernel), got standard";
  // Also at a head_dim outside the table: the algorithm is checked first.
  for (const std::int64_t d : {128, 96}) {
    SCOPED_TRACE("d " + std::to_string(d));
    Fp8Problem p(1, 16, 16, 2, 2, d);
    p.randomize(9);
    Context ctx;
    ctx.device = Device::cuda;
    ctx.algorithm = Algorithm::standard;
    EXPECT_EQ(error_of([&] { flashattn::forward(p.forward_args(), ctx); }), want);
    EXPECT_EQ(error_of([&] { (void)flashattn::forward_workspace_bytes(p.forward_args(), ctx); }), want);
  }
}

// 32 and 96 pass the CUDA layout checks (e4m3 rows in 16-byte multiples:
// head_dim a multiple of 16), so the refusal is the FP8 table's.
TEST(Fp8Validation, CudaHeadDimOutsideTheTableIsRefusedNamingQHeadDim) {
  for (const std::int64_t d : {32, 96}) {
    SCOPED_TRACE("d " + std::to_string(d));
    Fp8Problem p(1, 16, 16, 2, 2, d);
    p.randomize(9);
    Context ctx;
    ctx.device = Device::cuda;
    const std::string want = "q.head_dim: expected 64, 128 or 256 with e4m3 inputs on cuda (the FP8 forward's "
                             "table), got " + std::to_string(d);
    EXPECT_EQ(error_of([&] { flashattn::forward(p.forward_args(), ctx); }), want);
    EXPECT_EQ(error_of([&] { (void)flashattn::forward_workspace_bytes(p.forward_args(), ctx); }), want);
  }
}

// A head_dim of the table with flash passes validation: the call reaches
// the backend, which in a build without CUDA is the missing-backend Error.
TEST(Fp8Validation, CudaTableHeadDimPassesValidation) {
#if defined(FLASHATTN_HAS_CUDA)
  GTEST_SKIP() << "this build has the CUDA backend: the call would run it (tests/gpu/test_gpu_fp8.cpp)";
#else
  const std::string want = "ctx.device: expected cpu (this flashattn was built without the CUDA backend), got cuda";
  for (const std::int64_t d : {64, 128, 256}) {
    SCOPED_TRACE("d " + std::to_string(d));
    Fp8Problem p(1, 16, 16, 2, 2, d);
    p.randomize(9);
    Context ctx;
    ctx.device = Device::cuda;
    EXPECT_EQ(error_of([&] { flashattn::forward(p.forward_args(), ctx); }), want);
    EXPECT_EQ(error_of([&] { (void)flashattn::forward_workspace_bytes(p.forward_args(), ctx); }), want);
  }
#endif
}

}  // namespace
