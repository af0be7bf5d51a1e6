// The CPU tiled FlashAttention path (src/cpu/flash.cpp) against the float64
// reference, over shapes that straddle its tile sizes (128/256-row tall
// tiles, 64/128-column key tiles, 32-column padding), every option, and the
// determinism promise of its backward. Inputs are fresh random values per
// case and every output is NaN-poisoned before each run (test_util.h).
// FLASHATTN_CPU_ISA=avx2 or =generic runs the suite on the fallback kernels.
#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "test_util.h"

namespace fa_test {
namespace {

// ||out - ref|| / ||ref|| bounds per storage dtype: fp32 compute, so f32 is
// limited by summation order, f16/bf16 by the rounding of the outputs.
double tolerance(DType dt) {
  switch (dt) {
    case DType::f32: return 2e-5;
    case DType::f16: return 3e-3;
    case DType::bf16: return 2e-2;
    default: return 0;
  }
}

std::string describe(const Problem& p) {
  const auto& o = p.options;
  std::string s = std::string(flashattn::to_string(p.dtype)) + " b=" + std::to_string(p.batch) +
                  " sq=" + std::to_string(p.sq) + " sk=" + std::to_string(p.sk) + " hq=" + std::to_string(p.hq) +
                  " hk=" + std::to_string(p.hk) + " d=" + std::to_string(p.d);
  if (o.causal) s += " causal";
  if (o.window_left >= 0 || o.window_right >= 0)
    s += " window=(" + std::to_string(o.window_left) + "," + std::to_string(o.window_right) + ")";
  if (o.dropout_p > 0) s += " dropout=" + std::to_string(o.dropout_p);
  if (o.varlen) s += " varlen";
  if (o.block_mask)
    s += " block=" + std::to_string(o.block_mask->block_q) + "x" + std::to_string(o.block_mask->block_k);
  return s;
}

// Flash (given thread count) vs the reference on an f64 twin of p's inputs.
void expect_matches_reference(Problem& p, int threads = 0) {
  SCOPED_TRACE(describe(p));
  const Outputs want = run_reference_twin(p);
  Context ctx = cpu(Algorithm::flash);
  ctx.num_threads = threads;
  const Outputs got = run(p, /*reference=*/false, ctx);
  const double tol = tolerance(p.dtype);
  // LSE is fp32 for every dtype; -inf (empty rows) must match exactly.
  expect_outputs_near(got, want, {.o = tol, .lse = 1e-4, .grad = tol});
}

TEST(CpuFlash, ShapesAroundTileBoundaries) {
  const std::int64_t lens[] = {1, 2, 17, 127, 128, 129};
  const std::int64_t dims[] = {32, 40, 64, 1, 96, 7};
  int n = 0;
  for (std::int64_t sq : lens)
    for (std::int64_t sk : lens) {
      FA_SEEDED(seed);
      Problem p(DType::f32, 2, sq, sk, 2, 1, dims[n++ % 6]);
      p.options.causal = (n % 3) == 0;
      p.randomize(seed);
      expect_matches_reference(p);
    }
}

TEST(CpuFlash, SeqlensAroundTallTiles) {
  for (std::int64_t sq : {255, 257})
    for (std::int64_t sk : {256, 383}) {
      FA_SEEDED(seed);
      Problem p(DType::f32, 1, sq, sk, 2, 1, 64);
      p.options.causal = sk == 383;
      p.randomize(seed);
      expect_matches_reference(p);
    }
}

TEST(CpuFlash, HeadDimsUpTo256) {
  for (std::int64_t d : {3, 33, 80, 128, 160, 255, 256}) {
    FA_SEEDED(seed);
    Problem p(DType::f32, 1, 130, 200, 2, 2, d);
    p.randomize(seed);
    expect_matches_reference(p);
  }
}

TEST(CpuFlash, HalfPrecisionStorage) {
  for (DType dt : {DType::f16, DType::bf16}) {
    FA_SEEDED(seed);
    Problem p(dt, 2, 150, 97, 4, 2, 64);
    p.options.causal = true;
    p.randomize(seed);
    expect_matches_reference(p);
  }
}

TEST(CpuFlash, CausalAndWindowsWithUnequalLengths) {
  struct W {
    bool causal;
    std::int64_t left, right;
  };
  const W windows[] = {{true, -1, -1}, {false, 16, 0}, {false, 0, 0}, {false, 40, 3}, {false, -1, 20}, {true, 70, -1}};
  const std::pair<std::int64_t, std::int64_t> shapes[] = {{300, 129}, {129, 300}, {257, 257}, {5, 260}};
  for (const auto& [sq, sk] : shapes)
    for (const W& w : windows) {
      FA_SEEDED(seed);
      Problem p(DType::f32, 1, sq, sk, 2, 2, 48);
      p.options.causal = w.causal;
      p.options.window_left = w.left;
      p.options.window_right = w.right;
      p.randomize(seed);
      expect_matches_reference(p);
    }
}

TEST(CpuFlash, GroupedAndMultiQueryHeads) {
  for (std::int64_t hk : {1, 2, 3}) {
    FA_SEEDED(seed);
    Problem p(DType::f32, 2, 140, 190, 6, hk, 64);
    p.options.causal = hk == 2;
    p.randomize(seed);
    expect_matches_reference(p);
  }
}

TEST(CpuFlash, VarlenWithEmptyAndSingleTokenSequences) {
  const std::vector<std::int64_t> lq = {0, 1, 130, 5, 1, 200, 0}, lk = {3, 1, 70, 0, 1, 260, 0};
  for (int causal = 0; causal < 2; ++causal) {
    FA_SEEDED(seed);
    VarlenBuf vb = make_varlen(lq, lk);
    Problem p(DType::f32, 1, vb.total_q, vb.total_k, 4, 2, 40);
    p.options.varlen = vb.get();
    p.options.causal = causal != 0;
    p.randomize(seed);
    expect_matches_reference(p);
  }
}

// Rows past cu_seqlens[batch] belong to no sequence: left as they were.
TEST(CpuFlash, VarlenLeavesTrailingRowsUntouched) {
  FA_SEEDED(seed);
  VarlenBuf vb = make_varlen({40, 0, 129}, {7, 3, 130});
  Problem p(DType::f32, 1, vb.total_q + 5, vb.total_k + 9, 2, 1, 32);
  p.options.varlen = vb.get();
  p.randomize(seed);
  const Outputs got = run(p, false, cpu(Algorithm::flash));
  const std::int64_t row_q = p.hq * p.d, row_k = p.hk * p.d;
  for (std::int64_t i = vb.total_q * row_q; i < p.sq * row_q; ++i) {
    ASSERT_TRUE(std::isnan(got.o[i])) << "o element " << i;
    ASSERT_TRUE(std::isnan(got.dq[i])) << "dq element " << i;
  }
  for (std::int64_t i = vb.total_k * row_k; i < p.sk * row_k; ++i) {
    ASSERT_TRUE(std::isnan(got.dk[i])) << "dk element " << i;
    ASSERT_TRUE(std::isnan(got.dv[i])) << "dv element " << i;
  }
  for (std::int64_t i = 0; i < vb.total_q * row_q; ++i) ASSERT_FALSE(std::isnan(got.o[i])) << "o element " << i;
}

// The LSE output is optional in the forward.
TEST(CpuFlash, ForwardWithoutLse) {
  FA_SEEDED(seed);
  Problem p(DType::f32, 2, 70, 90, 2, 2, 40);
  p.options.causal = true;
  p.randomize(seed);
  const Outputs with_lse = run(p, false, cpu(Algorithm::flash), false);
  p.o.buf.poison();
  flashattn::ForwardArgs fa = p.forward_args();
  fa.lse = nullptr;
  flashattn::forward(fa, cpu(Algorithm::flash));
  EXPECT_TRUE(p.o.values() == with_lse.o);
}

TEST(CpuFlash, Dropout) {
  {
    FA_SEEDED(seed);
    Problem p(DType::f32, 2, 131, 150, 4, 2, 64);
    p.options.dropout_p = 0.2f;
    p.options.seed = seed;
    p.options.offset = seed >> 7;
    p.randomize(seed);
    expect_matches_reference(p);
  }
  {
    FA_SEEDED(seed);
    VarlenBuf vb = make_varlen({17, 0, 140}, {33, 5, 129});
    Problem p(DType::bf16, 1, vb.total_q, vb.total_k, 2, 1, 32);
    p.options.varlen = vb.get();
    p.options.causal = true;
    p.options.dropout_p = 0.5f;
    p.options.seed = seed;
    p.randomize(seed);
    expect_matches_reference(p);
  }
}

TEST(CpuFlash, BlockSparse) {
  struct B {
    std::int64_t bq, bk;
    bool with_full, causal;
  };
  // Blocks smaller than, equal to, larger than and misaligned with the tiles.
  const B blocks[] = {{128, 128, true, false}, {16, 48, true, true}, {1, 1, true, false},
                      {200, 64, false, true},  {37, 130, true, false}, {64, 32, true, true}};
  for (const B& bl : blocks) {
    FA_SEEDED(seed);
    Problem p(DType::f32, 2, 257, 300, 2, 1, 64);
    const BlockStates st = random_block_states(seed, 2, 2, p.sq, p.sk, bl.bq, bl.bk, 0.3, bl.with_full ? 0.35 : 0.7);
    BlockMaskBuf mb = make_block_mask(st, bl.with_full, seed);
    p.options.block_mask = mb.get();
    p.options.causal = bl.causal;
    p.randomize(seed);
    expect_matches_reference(p);
  }
}

TEST(CpuFlash, BlockSparseVarlenBroadcastHeads) {
  FA_SEEDED(seed);
  VarlenBuf vb = make_varlen({100, 0, 140}, {90, 20, 200});
  const BlockStates st = random_block_states(seed, 1, 1, vb.vl.max_seqlen_q, vb.vl.max_seqlen_k, 24, 40);
  BlockMaskBuf mb = make_block_mask(st, true, seed);
  Problem p(DType::f32, 1, vb.total_q, vb.total_k, 4, 2, 40);
  p.options.varlen = vb.get();
  p.options.block_mask = mb.get();
  p.options.window_left = 50;
  p.options.window_right = 10;
  p.options.dropout_p = 0.1f;
  p.options.seed = seed;
  p.randomize(seed);
  expect_matches_reference(p);
}

// Q, K, V packed in one (b, s, 3, h, d) buffer; O and dO contiguous.
TEST(CpuFlash, StridedLayouts) { expect_packed_qkv_flash_matches_reference(DType::f32, 64, 2e-5); }

// Bitwise equal outputs across repeated runs and across thread counts, for
// the backward with and without `deterministic` (the CPU path promises it
// either way) and for the forward.
TEST(CpuFlash, DeterministicAcrossRunsAndThreadCounts) {
  FA_SEEDED(seed);
  VarlenBuf vb = make_varlen({300, 7, 260}, {280, 1, 290});
  Problem p(DType::f32, 1, vb.total_q, vb.total_k, 4, 2, 64);
  p.options.varlen = vb.get();
  p.options.causal = true;
  p.options.dropout_p = 0.1f;
  p.options.seed = seed;
  p.randomize(seed);
  std::vector<Outputs> runs;
  for (int threads : {1, 2, 2, 3}) {
    Context ctx = cpu(Algorithm::flash);
    ctx.num_threads = threads;
    Outputs out = run(p, false, ctx, false);
    p.dq.buf.poison();
    p.dk.buf.poison();
    p.dv.buf.poison();
    flashattn::BackwardArgs ba = p.backward_args();
    ba.deterministic = threads != 3;
    flashattn::backward(ba, ctx);
    out.dq = p.dq.values();
    out.dk = p.dk.values();
    out.dv = p.dv.values();
    runs.push_back(std::move(out));
  }
  for (std::size_t r = 1; r < runs.size(); ++r) {
    SCOPED_TRACE("run " + std::to_string(r));
    // Exact equality (NaN != NaN, so poisoned leftovers fail too).
    EXPECT_TRUE(runs[r].o == runs[0].o);
    EXPECT_TRUE(runs[r].lse == runs[0].lse);
    EXPECT_TRUE(runs[r].dq == runs[0].dq);
    EXPECT_TRUE(runs[r].dk == runs[0].dk);
    EXPECT_TRUE(runs[r].dv == runs[0].dv);
  }
}

// With batch * heads_k >= 4 * processors the backward accumulates dQ in its
// dK/dV pass (flash.cpp, "Fused mode"); cover that path on any machine.
TEST(CpuFlash, FusedBackwardWithManyKvHeads) {
  FA_SEEDED(seed);
  const std::int64_t batch = 2 * omp_get_num_procs();
  Problem p(DType::f32, batch, 150, 140, 4, 2, 48);
  p.options.causal = true;
  p.options.dropout_p = 0.15f;
  p.options.seed = seed;
  p.randomize(seed);
  expect_matches_reference(p);
  Context one = cpu(Algorithm::flash), two = cpu(Algorithm::flash);
  one.num_threads = 1;
  two.num_threads = 2;
  const Outputs a = run(p, false, one), b = run(p, false, two);
  EXPECT_TRUE(a.dq == b.dq);
  EXPECT_TRUE(a.dk == b.dk);
  EXPECT_TRUE(a.dv == b.dv);
}

// Every row masked (block mask with no blocks, and queries past every key
// under causal alignment): O = 0, LSE = -inf, zero gradients, no NaN.
TEST(CpuFlash, FullyMaskedRowsGiveZeros) {
  FA_SEEDED(seed);
  Problem p(DType::f32, 1, 140, 130, 2, 2, 32);
  BlockStates st = random_block_states(seed, 1, 1, p.sq, p.sk, 64, 64, 1.0, 0.0);  // all skipped
  BlockMaskBuf mb = make_block_mask(st, true);
  p.options.block_mask = mb.get();
  p.randomize(seed);
  const Outputs got = run(p, false, cpu(Algorithm::flash));
  for (double x : got.o) ASSERT_EQ(x, 0.0);
  for (double x : got.lse) ASSERT_EQ(x, -std::numeric_limits<double>::infinity());
  for (const auto* g : {&got.dq, &got.dk, &got.dv})
    for (double x : *g) ASSERT_EQ(x, 0.0);
}

}  // namespace
}  // namespace fa_test
