// The bf16 path of the CPU flash backend: on CPUs with AMX-BF16 it runs on
// the tile unit with P and dS rounded to bf16 (src/cpu/flash_kernels_amx.cpp),
// otherwise (or with FLASHATTN_CPU_ISA=avx512) on the fp32 AVX-512 kernels.
// tests/CMakeLists.txt registers this file twice, once as is and once with
// FLASHATTN_CPU_ISA=avx512, so both bf16 paths stay covered on an AMX
// machine; the first test checks that each registration really ran the
// path it claims.
//
// Accuracy contract: error vs the float64 reference at most 2x (outputs)
// and 3x (gradients) that of standard attention in the same storage
// precision, plus a small floor.
#include <gtest/gtest.h>
#include <omp.h>

#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "cpu/flash_kernels.h"
#include "test_util.h"

namespace fa_test {
namespace {

// What the bf16 path should be here: AMX unless FLASHATTN_CPU_ISA caps it
// below amx or the CPU lacks AMX-BF16 / AMX-TILE / AVX512_BF16 (on Linux
// the kernel must also grant the tile-data permission: a refusal makes
// this test fail, so a lost AMX path never goes unnoticed on a machine
// that has it).
bool expect_amx() {
  const char* cap = std::getenv("FLASHATTN_CPU_ISA");
  if (cap && std::strcmp(cap, "amx") != 0) return false;
#if defined(__x86_64__) && defined(__linux__)
  __builtin_cpu_init();
  return __builtin_cpu_supports("amx-tile") && __builtin_cpu_supports("amx-bf16") &&
         __builtin_cpu_supports("avx512bf16") && __builtin_cpu_supports("avx512bw");
#else
  return false;
#endif
}

TEST(CpuBf16Path, KernelSelectionMatchesCpuAndCap) {
  const std::string isa = flashattn::detail::cpu_flash_kernel_isa(true);
  const char* cap = std::getenv("FLASHATTN_CPU_ISA");
  SCOPED_TRACE(std::string("FLASHATTN_CPU_ISA=") + (cap ? cap : "(unset)"));
  if (expect_amx())
    EXPECT_EQ(isa, "amx");
  else
    EXPECT_NE(isa, "amx");
  // f32 / f16 never take the bf16 tile path.
  EXPECT_NE(std::string(flashattn::detail::cpu_flash_kernel_isa(false)), "amx");
}

struct Errors {
  double o, dq, dk, dv;
};

Errors errors_of(Problem& p, const Outputs& want, Algorithm algo, int threads = 0) {
  Context ctx = cpu(algo);
  ctx.num_threads = threads;
  const Outputs got = run(p, false, ctx);
  return {rel_error(got.o, want.o), rel_error(got.dq, want.dq), rel_error(got.dk, want.dk),
          rel_error(got.dv, want.dv)};
}

// Flash bf16 vs standard attention in bf16, both against the float64
// reference on the same (bf16-rounded) inputs.
void expect_within_contract(Problem& p) {
  const Outputs want = run_reference_twin(p);
  const Errors fl = errors_of(p, want, Algorithm::flash), st = errors_of(p, want, Algorithm::standard);
  // The floor covers cases where standard attention is unusually lucky
  // (a bf16 ulp is 2^-8 relative; 1e-3 is a quarter of one).
  const double floor = 1e-3;
  EXPECT_LE(fl.o, 2 * st.o + floor) << "o: flash " << fl.o << " standard " << st.o;
  EXPECT_LE(fl.dq, 3 * st.dq + floor) << "dq: flash " << fl.dq << " standard " << st.dq;
  EXPECT_LE(fl.dk, 3 * st.dk + floor) << "dk: flash " << fl.dk << " standard " << st.dk;
  EXPECT_LE(fl.dv, 3 * st.dv + floor) << "dv: flash " << fl.dv << " standard " << st.dv;
  // And never worse than the suite-wide bf16 bound.
  for (double e : {fl.o, fl.dq, fl.dk, fl.dv}) EXPECT_LT(e, 2e-2);
}

TEST(CpuBf16Path, DenseShapesWithinContract) {
  // Lengths around the 16/32 tile padding and the 64/128/256/512 tiles;
  // head dims that need column padding (40, 7) and the large-head tiles.
  struct S {
    std::int64_t b, sq, sk, hq, hk, d;
  };
  const S shapes[] = {{1, 1, 1, 1, 1, 64},     {2, 17, 33, 2, 1, 40},  {1, 130, 97, 4, 2, 64},
                      {1, 600, 300, 2, 2, 64}, {1, 129, 257, 2, 1, 7}, {1, 70, 90, 2, 2, 160}};
  for (const S& s : shapes) {
    FA_SEEDED(seed);
    Problem p(DType::bf16, s.b, s.sq, s.sk, s.hq, s.hk, s.d);
    SCOPED_TRACE("sq=" + std::to_string(s.sq) + " sk=" + std::to_string(s.sk) + " d=" + std::to_string(s.d));
    p.randomize(seed);
    expect_within_contract(p);
  }
}

TEST(CpuBf16Path, MasksDropoutGqaWithinContract) {
  for (int variant = 0; variant < 6; ++variant) {
    FA_SEEDED(seed);
    SCOPED_TRACE("variant " + std::to_string(variant));
    Problem p(DType::bf16, 1, 300, 270, 6, 2, 64);
    if (variant == 0) p.options.causal = true;
    if (variant == 1) {
      p.options.window_left = 40;
      p.options.window_right = 3;
    }
    if (variant == 2) {
      p.options.causal = true;
      p.options.dropout_p = 0.2f;
      p.options.seed = seed;
    }
    if (variant == 3) p.options.softmax_scale = 0.5f;  // peaky softmax
    if (variant == 4) {  // a negative scale: the max of the scaled scores is the min of S
      p.options.softmax_scale = -0.3f;
      p.options.causal = true;
    }
    if (variant == 5) {  // scale 0: uniform weights over the visible keys
      p.options.softmax_scale = 0.0f;
      p.options.window_left = 20;
    }
    p.randomize(seed);
    // Dropout: standard attention draws the same Philox mask, so the
    // contract still compares like with like.
    expect_within_contract(p);
  }
}

// batch * heads_k >= 4 * processors: the backward's fused dQ (accumulated
// transposed on the AMX path); also a varlen batch with empty sequences.
TEST(CpuBf16Path, FusedBackwardAndVarlenWithinContract) {
  {
    FA_SEEDED(seed);
    Problem p(DType::bf16, 4 * omp_get_num_procs(), 150, 140, 2, 1, 64);
    p.options.causal = true;
    p.randomize(seed);
    expect_within_contract(p);
  }
  {
    FA_SEEDED(seed);
    VarlenBuf vb = make_varlen({0, 130, 5, 260}, {3, 70, 0, 300});
    Problem p(DType::bf16, 1, vb.total_q, vb.total_k, 2, 2, 64);
    p.options.varlen = vb.get();
    p.randomize(seed);
    expect_within_contract(p);
  }
}

// Q, K, V as strided views into one packed (b, s, 3, h, d) buffer: the
// tile loads follow stride_seq, not the contiguous row length.
TEST(CpuBf16Path, StridedLayouts) { expect_packed_qkv_flash_matches_reference(DType::bf16, 40, 1e-2); }

// Bitwise identical results for 1, 2 and 3 threads, fused and unfused.
TEST(CpuBf16Path, DeterministicAcrossThreadCounts) {
  for (std::int64_t batch : {std::int64_t{1}, std::int64_t{4} * omp_get_num_procs()}) {
    FA_SEEDED(seed);
    Problem p(DType::bf16, batch, 200, 300, 2, 1, 64);
    p.options.causal = true;
    p.options.dropout_p = 0.1f;
    p.options.seed = seed;
    p.randomize(seed);
    std::vector<Outputs> runs;
    for (int threads : {1, 2, 3}) {
      Context ctx = cpu(Algorithm::flash);
      ctx.num_threads = threads;
      runs.push_back(run(p, false, ctx));
    }
    for (std::size_t r = 1; r < runs.size(); ++r) {
      EXPECT_TRUE(runs[r].o == runs[0].o);
      EXPECT_TRUE(runs[r].lse == runs[0].lse);
      EXPECT_TRUE(runs[r].dq == runs[0].dq);
      EXPECT_TRUE(runs[r].dk == runs[0].dk);
      EXPECT_TRUE(runs[r].dv == runs[0].dv);
    }
  }
}

}  // namespace
}  // namespace fa_test
