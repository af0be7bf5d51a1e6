// The public API beyond masks and dropout: each dtype against the float64
// oracle, strided layouts (packed QKV, transposed) equal to contiguous ones,
// softmax_scale, LSE values, f64, varlen padding rows, empty key sets,
// thread-count determinism, supports() and the small helpers.
#include <thread>

#include "test_util.h"

namespace fa_test {
namespace {

const Algorithm kAlgorithms[] = {Algorithm::standard, Algorithm::flash};

// Relative tolerances for outputs stored in a dtype: its rounding plus float
// accumulation.
double out_tol(DType t) {
  switch (t) {
    case DType::f32:
      return 2e-5;
    case DType::f16:
      return 3e-3;
    case DType::bf16:
      return 2e-2;
    case DType::f64:
      return 1e-12;
    case DType::e4m3:  // an input dtype with its own rule (test_fp8.cpp)
      break;
  }
  return 0;
}

void check_dtype_against_reference(DType dtype, Algorithm algo) {
  FA_SEEDED(seed);
  for (const bool causal : {false, true}) {
    SCOPED_TRACE(::testing::Message() << flashattn::to_string(dtype) << " " << name(algo) << (causal ? " causal" : ""));
    Problem p(dtype, 2, 37, 45, 4, 2, 32);
    p.randomize(seed + causal);
    p.options.causal = causal;
    // The oracle sees exactly the rounded inputs.
    const Outputs got = run(p, false, cpu(algo)), want = run_reference_twin(p);
    const double tol = out_tol(dtype);
    expect_outputs_near(got, want, {.o = tol, .lse = 1e-4, .grad = 2 * tol});
  }
}

TEST(Dtypes, StandardF32MatchesReference) { check_dtype_against_reference(DType::f32, Algorithm::standard); }
TEST(Dtypes, StandardF16MatchesReference) { check_dtype_against_reference(DType::f16, Algorithm::standard); }
TEST(Dtypes, StandardBf16MatchesReference) { check_dtype_against_reference(DType::bf16, Algorithm::standard); }
TEST(Dtypes, StandardF64MatchesReference) { check_dtype_against_reference(DType::f64, Algorithm::standard); }
TEST(Dtypes, FlashF32MatchesReference) { check_dtype_against_reference(DType::f32, Algorithm::flash); }
TEST(Dtypes, FlashF16MatchesReference) { check_dtype_against_reference(DType::f16, Algorithm::flash); }
TEST(Dtypes, FlashBf16MatchesReference) { check_dtype_against_reference(DType::bf16, Algorithm::flash); }

// Problems spanning several kernel tiles (the CPU flash kernel uses tiles of
// 64 to 128 rows), with every option mixed in, against the oracle.
TEST(MultiTile, MatchesReference) {
  FA_SEEDED(seed);
  struct Case {
    const char* what;
    std::int64_t sq, sk, hq, hk, d;
    bool causal;
    std::int64_t left, right;
    float dropout;
    std::vector<std::int64_t> lens_q, lens_k;
  };
  const Case cases[] = {
      {"causal + dropout + GQA", 300, 333, 4, 2, 64, true, -1, -1, 0.2f, {}, {}},
      {"tile edge + 1, head_dim 256", 129, 65, 2, 1, 256, false, -1, -1, 0.0f, {}, {}},
      {"window, sq > sk", 260, 190, 2, 2, 40, false, 70, 5, 0.0f, {}, {}},
      {"varlen + causal + dropout", 0, 0, 3, 1, 24, true, -1, -1, 0.1f, {130, 1, 257, 0}, {200, 64, 129, 5}},
  };
  for (const Algorithm algo : kAlgorithms) {
    for (const Case& c : cases) {
      SCOPED_TRACE(::testing::Message() << name(algo) << ": " << c.what);
      const bool varlen = !c.lens_q.empty();
      VarlenBuf vl = varlen ? make_varlen(c.lens_q, c.lens_k) : VarlenBuf{};
      const std::int64_t sq = varlen ? vl.total_q : c.sq, sk = varlen ? vl.total_k : c.sk;
      Problem p(DType::f32, varlen ? 1 : 2, sq, sk, c.hq, c.hk, c.d);
      p.randomize(seed + c.d);
      p.options.causal = c.causal;
      p.options.window_left = c.left;
      p.options.window_right = c.right;
      p.options.dropout_p = c.dropout;
      p.options.seed = seed;
      if (varlen) p.options.varlen = vl.get();
      const Outputs got = run(p, false, cpu(algo)), want = run_reference_twin(p);
      expect_outputs_near(got, want, {.o = 2e-5, .lse = 1e-4, .grad = 1e-4});
    }
  }
}

// Every head_dim the CPU accepts, including ones that fill no SIMD register.
TEST(HeadDims, OddAndLargeHeadDims) {
  FA_SEEDED(seed);
  for (const Algorithm algo : kAlgorithms) {
    for (const std::int64_t d : {1, 3, 17, 63, 100, 255, 256}) {
      SCOPED_TRACE(::testing::Message() << name(algo) << " head_dim " << d);
      Problem p(DType::f32, 1, 23, 70, 2, 1, d);
      p.randomize(seed + d);
      p.options.causal = d % 2 == 1;
      const Outputs got = run(p, false, cpu(algo)), want = run_reference_twin(p);
      expect_outputs_near(got, want, {.o = 2e-5, .lse = std::nullopt, .grad = 1e-4});
    }
  }
}

// Random mixes of every option (dtype, sizes, GQA, causal, windows, dropout,
// varlen, block masks, scale), fresh each run, forward and backward against
// the oracle.
TEST(Randomized, OptionMixesMatchReference) {
  FA_SEEDED(seed);
  std::mt19937_64 gen(seed);
  auto uniform = [&](std::int64_t lo, std::int64_t hi) {
    return std::uniform_int_distribution<std::int64_t>(lo, hi)(gen);
  };
  for (int iter = 0; iter < 24; ++iter) {
    const std::int64_t hk = uniform(1, 2), hq = hk * uniform(1, 3), d = uniform(1, 72);
    const bool varlen = uniform(0, 3) == 0, block_sparse = uniform(0, 2) == 0;
    const std::int64_t nseq = uniform(1, 3);
    std::vector<std::int64_t> lens_q, lens_k;
    for (std::int64_t b = 0; b < nseq; ++b) lens_q.push_back(uniform(0, 140)), lens_k.push_back(uniform(0, 140));
    if (!varlen)
      lens_q.assign(nseq, std::max<std::int64_t>(1, lens_q[0])),
          lens_k.assign(nseq, std::max<std::int64_t>(1, lens_k[0]));
    VarlenBuf vl = make_varlen(lens_q, lens_k);
    const std::int64_t batch = varlen ? 1 : nseq, sq = varlen ? vl.total_q : lens_q[0],
                       sk = varlen ? vl.total_k : lens_k[0];
    const DType dtype = uniform(0, 3) < 2 ? DType::f32 : uniform(0, 1) ? DType::f16 : DType::bf16;
    Problem p(dtype, batch, sq, sk, hq, hk, d);
    p.randomize(seed + iter);
    p.options.causal = uniform(0, 2) == 0;
    p.options.window_left = uniform(0, 2) == 0 ? uniform(0, 60) : -1;
    if (!p.options.causal) p.options.window_right = uniform(0, 2) == 0 ? uniform(0, 60) : -1;
    p.options.dropout_p = uniform(0, 2) == 0 ? static_cast<float>(uniform(1, 9)) / 10.0f : 0.0f;
    p.options.seed = gen();
    p.options.offset = gen();
    if (uniform(0, 3) == 0) p.options.softmax_scale = static_cast<float>(uniform(-20, 40)) / 10.0f;
    if (varlen) p.options.varlen = vl.get();
    BlockStates st;
    BlockMaskBuf bm;
    if (block_sparse) {
      const std::int64_t msq = varlen ? vl.vl.max_seqlen_q : sq, msk = varlen ? vl.vl.max_seqlen_k : sk;
      st = random_block_states(gen(), uniform(0, 1) ? nseq : 1, uniform(0, 1) ? hq : 1, msq, msk, uniform(1, 70),
                               uniform(1, 70));
      bm = make_block_mask(st, true, gen() | 1);
      p.options.block_mask = bm.get();
    }
    const Outputs want = run_reference_twin(p);
    for (const Algorithm algo : kAlgorithms) {
      SCOPED_TRACE(::testing::Message() << "iteration " << iter << " " << name(algo) << " "
                                        << flashattn::to_string(dtype) << ": batch " << batch << " sq " << sq << " sk "
                                        << sk << " hq " << hq << " hk " << hk << " d " << d << (varlen ? " varlen" : "")
                                        << (block_sparse ? " block-sparse" : "") << " causal " << p.options.causal
                                        << " window " << p.options.window_left << "," << p.options.window_right
                                        << " dropout " << p.options.dropout_p << " scale " << p.scale());
      const Outputs got = run(p, false, cpu(algo));
      const double tol = 1.5 * out_tol(dtype);
      // The floor: the random mixes include rows that see one key (sk = 1,
      // or causal with window_left = 0), whose exact dQ and dK are zero.
      expect_outputs_near(got, want, {.o = tol, .lse = 2e-4, .grad = 5 * tol, .grad_scale_floor = 1});
    }
  }
}

// A dtype's rounding is visible: f16 inputs are not silently read as f32.
TEST(Dtypes, HalfPrecisionStorageIsHonoured) {
  HostBuffer h(DType::f16, 4), b(DType::bf16, 4);
  const double x = 1.0 + 1.0 / 4096;  // not representable in either
  h.set(0, x);
  b.set(0, x);
  EXPECT_EQ(h.get(0), 1.0);
  EXPECT_EQ(b.get(0), 1.0);
  h.set(1, 1.0 + 1.0 / 1024);  // f16 has 10 mantissa bits
  EXPECT_EQ(h.get(1), 1.0 + 1.0 / 1024);
}

// Packed QKV (b, s, 3, h, d), transposed (b, h, s, d) and padded layouts give
// the same outputs and gradients as contiguous tensors.
TEST(Layouts, StridedEqualsContiguous) {
  FA_SEEDED(seed);
  const std::int64_t B = 2, S = 19, H = 3, D = 16;
  for (const Algorithm algo : kAlgorithms) {
    SCOPED_TRACE(name(algo));
    Problem base(DType::f32, B, S, S, H, H, D);
    base.randomize(seed);
    base.options.causal = true;
    const Outputs want = run(base, false, cpu(algo));

    for (const char* layout : {"packed", "transposed", "padded"}) {
      SCOPED_TRACE(layout);
      // Inputs and gradients in the layout under test; O and dO transposed.
      PackedQKV in(DType::f32, B, S, H, D), grad(DType::f32, B, S, H, D);
      HostBuffer tq(DType::f32, B * S * H * D), tk(DType::f32, B * S * H * D), tv(DType::f32, B * S * H * D);
      HostBuffer tdq(DType::f32, B * S * H * D), tdk(DType::f32, B * S * H * D), tdv(DType::f32, B * S * H * D);
      const std::int64_t pad = 5;  // padded: each row of heads followed by 5 unused elements
      HostBuffer pq(DType::f32, B * S * (H * D + pad)), pk(DType::f32, B * S * (H * D + pad)),
          pv(DType::f32, B * S * (H * D + pad));
      HostBuffer pdq(DType::f32, B * S * (H * D + pad)), pdk(DType::f32, B * S * (H * D + pad)),
          pdv(DType::f32, B * S * (H * D + pad));
      auto padded = [&](HostBuffer& buf) { return padded_view(buf.data(), DType::f32, B, S, H, D, pad); };
      Tensor q, k, v, dq, dk, dv;
      if (std::string(layout) == "packed") {
        q = in.q, k = in.k, v = in.v, dq = grad.q, dk = grad.k, dv = grad.v;
      } else if (std::string(layout) == "transposed") {
        q = transposed_view(tq.data(), DType::f32, B, S, H, D);
        k = transposed_view(tk.data(), DType::f32, B, S, H, D);
        v = transposed_view(tv.data(), DType::f32, B, S, H, D);
        dq = transposed_view(tdq.data(), DType::f32, B, S, H, D);
        dk = transposed_view(tdk.data(), DType::f32, B, S, H, D);
        dv = transposed_view(tdv.data(), DType::f32, B, S, H, D);
      } else {
        q = padded(pq), k = padded(pk), v = padded(pv), dq = padded(pdq), dk = padded(pdk), dv = padded(pdv);
      }
      scatter(gather(base.q.t), q);
      scatter(gather(base.k.t), k);
      scatter(gather(base.v.t), v);
      HostBuffer ob(DType::f32, B * S * H * D), dob(DType::f32, B * S * H * D);
      const Tensor o = transposed_view(ob.data(), DType::f32, B, S, H, D);
      const Tensor dout = transposed_view(dob.data(), DType::f32, B, S, H, D);
      scatter(gather(base.dout.t), dout);
      ob.poison();
      for (const Tensor* g : {&dq, &dk, &dv}) {
        Dense nan(B, S, H, D);
        std::fill(nan.x.begin(), nan.x.end(), std::numeric_limits<double>::quiet_NaN());
        scatter(nan, *g);
      }
      std::vector<float> lse = poisoned_lse(B * H * S);
      flashattn::ForwardArgs fa;
      fa.q = q, fa.k = k, fa.v = v, fa.o = o, fa.lse = lse.data(), fa.options = base.options;
      flashattn::forward(fa, cpu(algo));
      flashattn::BackwardArgs ba;
      ba.q = q, ba.k = k, ba.v = v, ba.o = o, ba.dout = dout, ba.lse = lse.data();
      ba.dq = dq, ba.dk = dk, ba.dv = dv, ba.options = base.options;
      flashattn::backward(ba, cpu(algo));
      EXPECT_LT(max_abs_error(gather(o).x, want.o), 1e-6);
      EXPECT_LT(max_abs_error(to_double(lse), want.lse), 1e-6);
      EXPECT_LT(max_abs_error(gather(dq).x, want.dq), 1e-5);
      EXPECT_LT(max_abs_error(gather(dk).x, want.dk), 1e-5);
      EXPECT_LT(max_abs_error(gather(dv).x, want.dv), 1e-5);
      if (std::string(layout) == "padded") {
        // The gaps between rows belong to the caller: never written.
        for (const HostBuffer* buf : {&pdq, &pdk, &pdv})
          for (std::int64_t row = 0; row < B * S; ++row)
            for (std::int64_t e = H * D; e < H * D + pad; ++e)
              ASSERT_EQ(buf->get(row * (H * D + pad) + e), 0.0) << "gap written, row " << row;
      }
    }
  }
}

// An explicit softmax_scale is used (and differs from the default).
TEST(Options, SoftmaxScaleOverride) {
  FA_SEEDED(seed);
  for (const Algorithm algo : kAlgorithms) {
    SCOPED_TRACE(name(algo));
    Problem p(DType::f32, 1, 9, 12, 2, 2, 16);
    p.randomize(seed);
    const auto default_o = run(p, false, cpu(algo), false).o;
    // Zero makes attention uniform; a negative scale flips which key wins
    // (a kernel that takes the row max before scaling gets it wrong).
    for (const float s : {0.05f, 1.3f, 0.0f, -0.8f}) {
      p.options.softmax_scale = s;
      const Outputs out = run(p, false, cpu(algo), false);
      const NaiveResult want = naive_attention(gather(p.q.t), gather(p.k.t), gather(p.v.t), s, window_mask(-1, -1));
      EXPECT_LT(rel_error(out.o, want.o.x), 2e-5) << "scale " << s;
      EXPECT_LT(max_abs_error(out.lse, want.lse), 1e-5) << "scale " << s;
      EXPECT_GT(rel_error(out.o, default_o), 1e-3) << "scale " << s << " made no difference";
    }
  }
}

// LSE against log(sum_j exp(scale q.k_j)) summed directly here, including
// logits far beyond float's exp range (which a stable softmax must survive).
TEST(Lse, MatchesLogSumExpComputedHere) {
  FA_SEEDED(seed);
  for (const float scale : {1.0f, 40.0f}) {
    for (const bool reference : {true, false}) {
      for (const Algorithm algo : kAlgorithms) {
        if (reference && algo == Algorithm::flash) continue;
        SCOPED_TRACE(::testing::Message() << "scale " << scale << " " << (reference ? "reference" : name(algo)));
        Problem p(reference ? DType::f64 : DType::f32, 2, 6, 10, 2, 1, 16);
        p.randomize(seed);
        p.options.softmax_scale = scale;
        const Outputs out = run(p, reference, cpu(algo), false);
        const Dense q = gather(p.q.t), k = gather(p.k.t);
        std::vector<double> want;
        for (std::int64_t b = 0; b < 2; ++b)
          for (std::int64_t h = 0; h < 2; ++h)
            for (std::int64_t i = 0; i < 6; ++i) {
              long double sum = 0;  // scale 40: logits up to ~640, exp fits in long double
              for (std::int64_t j = 0; j < 10; ++j) {
                double dot = 0;
                for (std::int64_t c = 0; c < 16; ++c) dot += q.at(b, i, h, c) * k.at(b, j, 0, c);
                sum += std::exp(static_cast<long double>(scale) * dot);
              }
              want.push_back(static_cast<double>(std::log(sum)));
            }
        // The oracle only rounds its LSE to float; float backends also round
        // every score, an error that grows with scale * head_dim.
        for (std::size_t i = 0; i < want.size(); ++i) {
          const double tol = reference ? 2e-7 * std::max(1.0, std::abs(want[i])) : 1e-6 * (1.0 + scale * 16);
          EXPECT_NEAR(out.lse[i], want[i], tol) << "row " << i;
        }
        for (double x : out.o) ASSERT_TRUE(std::isfinite(x));
      }
    }
  }
}

// f64 runs through the standard algorithm at full precision.
TEST(Dtypes, F64StandardIsFullPrecision) {
  FA_SEEDED(seed);
  Problem p(DType::f64, 1, 13, 17, 2, 1, 8);
  p.randomize(seed);
  const Outputs got = run(p, false, cpu(Algorithm::standard)), want = run(p, true);
  expect_outputs_near(got, want, {.o = 1e-13, .lse = std::nullopt, .grad = 1e-12});
}

// Rows past cu_seqlens[batch] belong to no sequence: left as they were.
TEST(Varlen, PaddingRowsAreNotTouched) {
  FA_SEEDED(seed);
  for (const Algorithm algo : kAlgorithms) {
    SCOPED_TRACE(name(algo));
    VarlenBuf vl = make_varlen({4, 6, 3}, {5, 2, 7});
    const std::int64_t extra_q = 3, extra_k = 2;
    Problem p(DType::f32, 1, vl.total_q + extra_q, vl.total_k + extra_k, 2, 1, 8);
    p.randomize(seed);
    p.options.varlen = vl.get();
    p.options.causal = true;
    const Outputs out = run(p, false, cpu(algo));
    auto rows_finite = [](const std::vector<double>& x, std::int64_t row_elems, std::int64_t valid_rows) {
      for (std::size_t i = 0; i < x.size(); ++i) {
        const bool valid = static_cast<std::int64_t>(i) / row_elems < valid_rows;
        if (valid != std::isfinite(x[i])) return false;
      }
      return true;
    };
    EXPECT_TRUE(rows_finite(out.o, 2 * 8, vl.total_q)) << "o";
    EXPECT_TRUE(rows_finite(out.dq, 2 * 8, vl.total_q)) << "dq";
    EXPECT_TRUE(rows_finite(out.dk, 8, vl.total_k)) << "dk";
    EXPECT_TRUE(rows_finite(out.dv, 8, vl.total_k)) << "dv";
    for (std::int64_t h = 0; h < 2; ++h)
      for (std::int64_t i = 0; i < p.sq; ++i)
        EXPECT_EQ(std::isnan(out.lse[h * p.sq + i]), i >= vl.total_q) << "lse head " << h << " row " << i;
    // And the valid rows are right.
    Problem ref(DType::f64, 1, p.sq, p.sk, 2, 1, 8);
    copy_inputs(p, ref);
    const Outputs want = run(ref, true);
    auto valid = [](std::vector<double> x, std::int64_t n) {
      x.resize(static_cast<std::size_t>(n));
      return x;
    };
    EXPECT_LT(rel_error(valid(out.o, vl.total_q * 16), valid(want.o, vl.total_q * 16)), 2e-5);
    EXPECT_LT(rel_error(valid(out.dk, vl.total_k * 8), valid(want.dk, vl.total_k * 8)), 1e-4);
  }
}

// No keys at all (seqlen_k = 0): every row is empty.
TEST(EdgeCases, NoKeys) {
  FA_SEEDED(seed);
  for (const Algorithm algo : kAlgorithms) {
    SCOPED_TRACE(name(algo));
    Problem p(DType::f32, 2, 5, 0, 2, 2, 8);
    p.randomize(seed);
    const Outputs out = run(p, false, cpu(algo));
    for (double x : out.o) EXPECT_EQ(x, 0.0);
    for (double x : out.dq) EXPECT_EQ(x, 0.0);
    for (double x : out.lse) EXPECT_TRUE(std::isinf(x) && x < 0);
  }
}

// A varlen call with no sequences is accepted and writes nothing.
TEST(EdgeCases, VarlenWithNoSequences) {
  FA_SEEDED(seed);
  for (const Algorithm algo : kAlgorithms) {
    SCOPED_TRACE(name(algo));
    VarlenBuf vl = make_varlen({}, {});
    Problem p(DType::f32, 1, 4, 4, 2, 2, 8);
    p.randomize(seed);
    p.options.varlen = vl.get();
    const Outputs out = run(p, false, cpu(algo));
    for (const auto* v : {&out.o, &out.lse, &out.dq, &out.dk, &out.dv})
      for (double x : *v) EXPECT_TRUE(std::isnan(x));
  }
}

// An empty batch is accepted and touches nothing.
TEST(EdgeCases, EmptyBatch) {
  for (const Algorithm algo : kAlgorithms) {
    SCOPED_TRACE(name(algo));
    flashattn::ForwardArgs a;
    a.q = Tensor::contiguous(nullptr, DType::f32, 0, 4, 2, 8);
    a.k = a.v = Tensor::contiguous(nullptr, DType::f32, 0, 4, 2, 8);
    a.o = a.q;
    EXPECT_NO_THROW(flashattn::forward(a, cpu(algo)));
  }
}

// Results do not depend on the thread count; backward with deterministic =
// true is bit-identical (as the API promises).
TEST(Threads, ResultsIndependentOfThreadCount) {
  FA_SEEDED(seed);
  for (const Algorithm algo : kAlgorithms) {
    SCOPED_TRACE(name(algo));
    Problem p(DType::f32, 2, 33, 41, 4, 1, 16);
    p.randomize(seed);
    Outputs runs[3];
    const int thread_counts[3] = {1, 2, 5};  // 5 oversubscribes the 2-core CI machine on purpose
    for (int t = 0; t < 3; ++t) {
      Context ctx = cpu(algo);
      ctx.num_threads = thread_counts[t];
      p.poison_outputs();
      flashattn::forward(p.forward_args(), ctx);
      auto ba = p.backward_args();
      ba.deterministic = true;
      flashattn::backward(ba, ctx);
      runs[t] = {p.o.values(), to_double(p.lse), p.dq.values(), p.dk.values(), p.dv.values()};
    }
    for (int t = 1; t < 3; ++t) {
      SCOPED_TRACE(::testing::Message() << thread_counts[t] << " threads vs 1");
      EXPECT_EQ(runs[0].o, runs[t].o);
      EXPECT_EQ(runs[0].lse, runs[t].lse);
      EXPECT_EQ(runs[0].dq, runs[t].dq);
      EXPECT_EQ(runs[0].dk, runs[t].dk);
      EXPECT_EQ(runs[0].dv, runs[t].dv);
    }
  }
}

// Calls from several application threads at once do not share scratch
// state: each gets what it gets when run alone.
TEST(Threads, ConcurrentCallsAreIndependent) {
  FA_SEEDED(seed);
  for (const Algorithm algo : kAlgorithms) {
    SCOPED_TRACE(name(algo));
    constexpr int kCallers = 3;
    std::vector<std::unique_ptr<Problem>> problems;
    std::vector<Outputs> alone(kCallers), together(kCallers);
    for (int c = 0; c < kCallers; ++c) {
      problems.push_back(std::make_unique<Problem>(DType::f32, 1, 70 + 30 * c, 90 - 10 * c, 2, 1, 16 * (c + 1)));
      problems[c]->randomize(seed + c);
      problems[c]->options.causal = c % 2 == 0;
      problems[c]->options.dropout_p = c == 1 ? 0.2f : 0.0f;
      Context ctx = cpu(algo);
      ctx.num_threads = 1;
      alone[c] = run(*problems[c], false, ctx);
    }
    for (int round = 0; round < 3; ++round) {
      std::vector<std::thread> callers;
      for (int c = 0; c < kCallers; ++c)
        callers.emplace_back([&, c] {
          Context ctx = cpu(algo);
          ctx.num_threads = 1;
          together[c] = run(*problems[c], false, ctx);
        });
      for (auto& t : callers) t.join();
      for (int c = 0; c < kCallers; ++c) {
        EXPECT_EQ(together[c].o, alone[c].o) << "caller " << c << " round " << round;
        EXPECT_EQ(together[c].dq, alone[c].dq) << "caller " << c << " round " << round;
        EXPECT_EQ(together[c].dk, alone[c].dk) << "caller " << c << " round " << round;
        EXPECT_EQ(together[c].dv, alone[c].dv) << "caller " << c << " round " << round;
      }
    }
  }
}

TEST(Helpers, SupportsAnswers) {
  using flashattn::supports;
  for (const Algorithm algo : kAlgorithms)
    for (const DType t : {DType::f32, DType::f16, DType::bf16}) {
      EXPECT_TRUE(supports(Device::cpu, algo, t, 64));
      EXPECT_TRUE(supports(Device::cpu, algo, t, 1));
      EXPECT_TRUE(supports(Device::cpu, algo, t, 256));
      EXPECT_FALSE(supports(Device::cpu, algo, t, 257));
      EXPECT_FALSE(supports(Device::cpu, algo, t, 0));
    }
  EXPECT_TRUE(supports(Device::cpu, Algorithm::standard, DType::f64, 64));
  EXPECT_FALSE(supports(Device::cpu, Algorithm::flash, DType::f64, 64));
  EXPECT_FALSE(supports(Device::cuda, Algorithm::flash, DType::f32, 64));
  EXPECT_FALSE(supports(Device::cuda, Algorithm::flash, DType::f64, 64));
  EXPECT_TRUE(supports(Device::cuda, Algorithm::flash, DType::f16, 128));
  EXPECT_TRUE(supports(Device::cuda, Algorithm::flash, DType::bf16, 64));
  EXPECT_FALSE(supports(Device::cuda, Algorithm::flash, DType::f16, 257));
  // Whatever supports() says about the CPU, a call agrees with it.
  for (const Algorithm algo : kAlgorithms)
    for (const DType t : {DType::f32, DType::f64})
      for (const std::int64_t d : {std::int64_t{3}, std::int64_t{256}, std::int64_t{257}}) {
        SCOPED_TRACE(::testing::Message() << name(algo) << " " << flashattn::to_string(t) << " d " << d);
        Problem p(t, 1, 2, 3, 1, 1, d);
        bool accepted = true;
        try {
          flashattn::forward(p.forward_args(), cpu(algo));
        } catch (const flashattn::Error&) {
          accepted = false;
        }
        EXPECT_EQ(accepted, supports(Device::cpu, algo, t, d));
      }
}

TEST(Helpers, SmallHelpers) {
  EXPECT_STREQ(flashattn::version(), "0.1.0");
  EXPECT_STREQ(flashattn::to_string(DType::bf16), "bf16");
  EXPECT_STREQ(flashattn::to_string(Device::cuda), "cuda");
  EXPECT_EQ(flashattn::dtype_size(DType::f16), 2u);
  EXPECT_EQ(flashattn::dtype_size(DType::f64), 8u);
  EXPECT_THROW(flashattn::dtype_size(static_cast<DType>(9)), flashattn::Error);
  const Tensor t = Tensor::contiguous(nullptr, DType::f32, 2, 3, 4, 5);
  EXPECT_EQ(t.stride_head, 5);
  EXPECT_EQ(t.stride_seq, 20);
  EXPECT_EQ(t.stride_batch, 60);
  EXPECT_EQ(t.numel(), 120);
}

TEST(Helpers, CpuNeedsNoWorkspaceAndAcceptsOne) {
  FA_SEEDED(seed);
  Problem p(DType::f32, 1, 8, 8, 2, 2, 16);
  p.randomize(seed);
  for (const Algorithm algo : kAlgorithms) {
    SCOPED_TRACE(name(algo));
    EXPECT_EQ(flashattn::forward_workspace_bytes(p.forward_args(), cpu(algo)), 0u);
    EXPECT_EQ(flashattn::backward_workspace_bytes(p.backward_args(), cpu(algo)), 0u);
    std::vector<unsigned char> ws(256);
    Context ctx = cpu(algo);
    ctx.workspace = ws.data();
    ctx.workspace_bytes = ws.size();
    const Outputs got = run(p, false, ctx), want = run(p, false, cpu(algo));
    EXPECT_EQ(got.o, want.o);
  }
}

}  // namespace
}  // namespace fa_test
