// Block-sparse attention: every backend equals dense attention with the
// equivalent element mask, computed in the test from the dense block-state
// matrix. Covers block sizes that do not divide the sequence, broadcast
// masks, causal / window rules on partial blocks, varlen, list order, and
// the degenerate all-full / all-partial layouts.
#include "test_util.h"

namespace fa_test {
namespace {

struct Backend {
  const char* name;
  bool reference;
  Algorithm algo;
};
const Backend kBackends[] = {{"reference", true, Algorithm::standard},
                             {"standard", false, Algorithm::standard},
                             {"flash", false, Algorithm::flash}};

struct SparseCase {
  const char* what;
  std::int64_t batch, sq, sk, hq, hk, d, block_q, block_k;
  std::int64_t mask_batch, mask_heads;  // 1 = broadcast
  bool causal;
  std::int64_t window_left;
  std::vector<std::int64_t> lens_q, lens_k;  // non-empty: varlen
  bool shuffle = false;
};

const std::vector<SparseCase>& sparse_cases() {
  static const std::vector<SparseCase> cases = {
      {"blocks not dividing seqlen", 2, 10, 13, 2, 1, 8, 3, 5, 2, 2, false, -1, {}, {}},
      {"causal on partial blocks", 2, 12, 12, 2, 2, 8, 4, 4, 2, 2, true, -1, {}, {}},
      {"causal, sq > sk, odd blocks", 1, 11, 7, 2, 1, 4, 3, 2, 1, 2, true, -1, {}, {}},
      {"window on partial blocks", 1, 9, 11, 3, 3, 8, 2, 3, 1, 3, false, 3, {}, {}},
      {"broadcast batch and heads", 3, 8, 9, 4, 2, 8, 4, 3, 1, 1, false, -1, {}, {}},
      {"broadcast heads only", 2, 8, 9, 2, 1, 8, 2, 2, 2, 1, true, -1, {}, {}},
      {"blocks larger than the sequence", 2, 5, 6, 2, 2, 8, 16, 4, 2, 2, false, -1, {}, {}},
      {"shuffled lists, long rows", 1, 6, 67, 2, 1, 16, 3, 8, 1, 2, false, -1, {}, {}, true},
      {"varlen", 1, 0, 0, 2, 1, 8, 3, 4, 2, 2, true, -1, {7, 4}, {5, 9}},
      // Several kernel tiles per block and several blocks per tile.
      {"FlexAttention-sized blocks, causal", 1, 300, 260, 2, 1, 32, 128, 64, 1, 2, true, -1, {}, {}},
      {"blocks straddling tiles", 1, 200, 230, 2, 2, 16, 48, 80, 1, 1, false, 100, {}, {}},
      {"varlen, multi-tile", 1, 0, 0, 2, 1, 16, 64, 32, 3, 1, true, -1, {150, 1, 70}, {140, 33, 200}},
  };
  return cases;
}

struct Built {
  VarlenBuf vl;
  BlockStates states;
  BlockMaskBuf mask;
};

// Sets p's options for case c; returns the buffers the options point to.
void configure(const SparseCase& c, std::uint64_t seed, Problem& p, Built& b) {
  const bool varlen = !c.lens_q.empty();
  const std::int64_t sq = varlen ? b.vl.vl.max_seqlen_q : c.sq, sk = varlen ? b.vl.vl.max_seqlen_k : c.sk;
  const std::int64_t nseq = varlen ? b.vl.vl.batch : c.batch;
  b.states = random_block_states(seed, c.mask_batch == 1 ? 1 : nseq, c.mask_heads == 1 ? 1 : c.hq, sq, sk, c.block_q,
                                 c.block_k);
  // Skip the block of one key that plain attention would see (row of
  // sequence 0, head 0, query block 0), so that the layout always matters.
  const std::int64_t sq0 = varlen ? c.lens_q[0] : sq, sk0 = varlen ? c.lens_k[0] : sk;
  const std::int64_t right = c.causal ? 0 : -1;
  for (std::int64_t i = 0; i < std::min(c.block_q, sq0); ++i) {
    std::int64_t j = 0;
    while (j < sk0 && !window_visible(i, j, sq0, sk0, c.window_left, right)) ++j;
    if (j < sk0) {
      b.states.s[j / c.block_k] = kSkip;
      break;
    }
  }
  b.mask = make_block_mask(b.states, true, c.shuffle ? seed | 1 : 0);
  p.options.block_mask = b.mask.get();
  p.options.causal = c.causal;
  p.options.window_left = c.window_left;
  if (varlen) p.options.varlen = b.vl.get();
}

void check_against_dense_mask(const Backend& be) {
  FA_SEEDED(seed);
  for (const SparseCase& c : sparse_cases()) {
    SCOPED_TRACE(c.what);
    const bool varlen = !c.lens_q.empty();
    Built built;
    if (varlen) built.vl = make_varlen(c.lens_q, c.lens_k);
    const std::int64_t sq = varlen ? built.vl.total_q : c.sq, sk = varlen ? built.vl.total_k : c.sk;
    Problem p(be.reference ? DType::f64 : DType::f32, c.batch, sq, sk, c.hq, c.hk, c.d);
    p.randomize(seed + c.sk * 131 + c.sq);
    configure(c, seed + c.sq, p, built);
    const Outputs out = run(p, be.reference, cpu(be.algo), /*with_backward=*/!be.reference);

    const ElementMask visible = block_sparse_mask(built.states, c.window_left, c.causal ? 0 : -1);
    const NaiveResult want = naive_attention(gather(p.q.t), gather(p.k.t), gather(p.v.t), p.scale(), visible, nullptr,
                                             varlen ? &built.vl.cu_q : nullptr, varlen ? &built.vl.cu_k : nullptr);
    const double tol = be.reference ? 1e-12 : 2e-5;
    EXPECT_LT(rel_error(out.o, want.o.x), tol);
    EXPECT_LT(max_abs_error(out.o, want.o.x), 10 * tol);
    EXPECT_LT(max_abs_error(out.lse, want.lse), 1e-5);
    // The layout matters for this case (the mask was not ignored).
    const NaiveResult dense = naive_attention(gather(p.q.t), gather(p.k.t), gather(p.v.t), p.scale(),
                                              window_mask(c.window_left, c.causal ? 0 : -1), nullptr,
                                              varlen ? &built.vl.cu_q : nullptr, varlen ? &built.vl.cu_k : nullptr);
    EXPECT_GT(max_abs_error(dense.o.x, want.o.x), 1e-3);

    if (!be.reference) {
      // Gradients against the oracle (whose block-sparse backward is checked
      // by finite differences in test_reference).
      Problem ref(DType::f64, c.batch, sq, sk, c.hq, c.hk, c.d);
      copy_inputs(p, ref);
      const Outputs r = run(ref, true);
      EXPECT_LT(rel_error(out.dq, r.dq), 1e-4);
      EXPECT_LT(rel_error(out.dk, r.dk), 1e-4);
      EXPECT_LT(rel_error(out.dv, r.dv), 1e-4);
    }
  }
}

TEST(BlockSparse, ReferenceEqualsDenseElementMask) { check_against_dense_mask(kBackends[0]); }
TEST(BlockSparse, StandardEqualsDenseElementMask) { check_against_dense_mask(kBackends[1]); }
TEST(BlockSparse, FlashEqualsDenseElementMask) { check_against_dense_mask(kBackends[2]); }

// All-full equals plain attention; all-partial equals plain attention with
// the same causal / window rule. Compared with the same backend's run
// without a mask, forward and backward.
TEST(BlockSparse, AllFullAndAllPartialEqualPlainAttention) {
  FA_SEEDED(seed);
  for (const Backend& be : kBackends) {
    for (const std::uint8_t state : {std::uint8_t{kFull}, std::uint8_t{kPartial}}) {
      for (const bool causal : {false, true}) {
        if (state == kFull && causal) continue;  // full blocks ignore the causal rule by definition
        SCOPED_TRACE(::testing::Message()
                     << be.name << (state == kFull ? " all-full" : " all-partial") << (causal ? " causal" : ""));
        Problem p(be.reference ? DType::f64 : DType::f32, 2, 11, 14, 2, 1, 8);
        p.randomize(seed + state * 2 + causal);
        p.options.causal = causal;
        const Outputs plain = run(p, be.reference, cpu(be.algo));
        BlockStates st = random_block_states(seed, 1, 1, 11, 14, 4, 3, 0.0, state == kPartial ? 1.0 : 0.0);
        BlockMaskBuf bm = make_block_mask(st, /*with_full=*/state == kFull);
        p.options.block_mask = bm.get();
        const Outputs masked = run(p, be.reference, cpu(be.algo));
        const double tol = be.reference ? 1e-13 : 1e-6;
        expect_outputs_near(masked, plain, {.o = tol, .lse = 1e-6, .grad = 10 * tol});
      }
    }
  }
}

// Full blocks skip the causal rule: with causal = true, a block layout that
// marks the upper triangle "full" attends to it.
TEST(BlockSparse, FullBlocksIgnoreTheElementMask) {
  FA_SEEDED(seed);
  for (const Backend& be : kBackends) {
    SCOPED_TRACE(be.name);
    Problem p(be.reference ? DType::f64 : DType::f32, 1, 8, 8, 1, 1, 8);
    p.randomize(seed);
    p.options.causal = true;
    BlockStates st = random_block_states(seed, 1, 1, 8, 8, 4, 4, 0.0, 0.0);  // all full
    BlockMaskBuf bm = make_block_mask(st);
    p.options.block_mask = bm.get();
    const Outputs out = run(p, be.reference, cpu(be.algo), false);
    const NaiveResult want =
        naive_attention(gather(p.q.t), gather(p.k.t), gather(p.v.t), p.scale(), window_mask(-1, -1));
    EXPECT_LT(rel_error(out.o, want.o.x), be.reference ? 1e-12 : 2e-5);
  }
}

// No queries (or no keys): the lists have no element, so their pointers may
// be null, as an empty tensor's are; every backend runs, gradients are zero.
TEST(BlockSparse, EmptyListsMayBeNull) {
  FA_SEEDED(seed);
  for (const Backend& be : kBackends) {
    for (const bool no_queries : {true, false}) {
      SCOPED_TRACE(::testing::Message() << be.name << (no_queries ? " no queries" : " no keys"));
      const std::int64_t sq = no_queries ? 0 : 9, sk = no_queries ? 13 : 0;
      Problem p(be.reference ? DType::f64 : DType::f32, 2, sq, sk, 2, 1, 8);
      p.randomize(seed);
      BlockStates st = random_block_states(seed, 1, 1, sq, sk, 4, 4);
      BlockMaskBuf bm = make_block_mask(st);
      const BlockMask* m = bm.get();
      BlockMask nulls = *m;
      if (no_queries) nulls.kv_count = nulls.full_kv_count = nullptr;
      nulls.kv_indices = nulls.full_kv_indices = nullptr;
      p.options.block_mask = &nulls;
      const Outputs out = run(p, be.reference, cpu(be.algo));
      for (double x : out.o) EXPECT_EQ(x, 0.0);
      for (double x : out.dk) EXPECT_EQ(x, 0.0);
      for (double x : out.dq) EXPECT_EQ(x, 0.0);
    }
  }
}

}  // namespace
}  // namespace fa_test
